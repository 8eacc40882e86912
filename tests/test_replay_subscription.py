"""``imagescore replay`` from a dead-letter subscription, on the Pub/Sub emulator: what it republishes and what it
leaves there."""
from __future__ import annotations

from pipelines.replay import replay_subscription
from tests.fixtures.pubsub import pull_all, unique
from transforms.deadletter_topic import TRUNCATED, to_message


def test_a_truncated_letter_is_named_and_left_on_the_subscription(pubsub, capsys):
    from google.cloud import pubsub_v1

    raw_topic, (raw_sub,) = pubsub.create(unique("raw"), unique("job"))
    dlq_topic, (replay_sub,) = pubsub.create(unique("dlq"), unique("replay"))
    whole = to_message({"id": "a", "stage": "analyzer", "reason": "http_404", "error": "e", "message_id": "7",
                        "publish_time": "2026-01-01T00:00:00.000000Z", "payload": '{"id": "a"}'})
    cut = to_message({"id": "b", "stage": "aggregator", "reason": "message_too_large", "error": "e",
                      "payload": '{"id": "b", "title": "xxxx'})
    cut.attributes[TRUNCATED] = "9999000"   # as to_message marks a payload too large for a publish request
    pubsub.environ()
    publisher = pubsub_v1.PublisherClient()
    for message in (whole, cut):
        publisher.publish(dlq_topic, message.data, **message.attributes).result(timeout=30)

    totals = replay_subscription(replay_sub, raw_topic, reasons=[], stages=[], limit=None, dry_run=False,
                                 idle_seconds=3)

    assert totals == {"replayed": 1, "skipped": 1, "failed": 0}
    assert "holds only the first 26 of its 9999000 bytes" in capsys.readouterr().err
    (replayed,) = pull_all(pubsub, raw_sub, 1, timeout_s=20)
    assert replayed.data == b'{"id": "a"}' and replayed.attributes["imagescore_message_id"] == "7"
    (left,) = pull_all(pubsub, replay_sub, 1, timeout_s=20)   # the cut letter is still there, for a person
    assert left.attributes[TRUNCATED] == "9999000" and left.attributes["item_id"] == "b"
