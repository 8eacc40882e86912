"""What a SIGKILL loses on the local streaming runner, which acknowledges each pull as soon as it returns.

Real services on 127.0.0.1: Google's Pub/Sub emulator, the Elasticsearch double, an image
server. A backlog of ``--messages`` updates (one per item, all valid) is published; then
``python -m pipelines.streaming`` starts with the CLI's defaults and
``--local-max-messages N``; once its progress line shows ``--kill-at-written`` documents
written it gets SIGKILL. Afterwards: ``left`` is what is still on the subscription
(pulled here and counted), ``indexed`` what is in the index, and
``lost = published - indexed - left``: messages the job had acknowledged and not written.
A restarted job cannot get those back. One line per ``--max-messages`` value::

    RESULT bench=stream_sigkill max_messages=20 published=300 killed_at_written=100 pulled=... indexed=... lost=...
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from PIL import Image  # noqa: E402

from es.mapping import document_properties  # noqa: E402
from pipelines.pubsub_emulator import PubSubEmulator, subscriber_client  # noqa: E402
from tests.fixtures.es import start_double  # noqa: E402
from tests.fixtures.image_server import ImageServer  # noqa: E402

PROGRESS = re.compile(r"^read (\d+)  scored \d+  reused \d+  written (\d+)")


def _jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (96, 96), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def _drain_subscription(subscription: str) -> int:
    """Pull and acknowledge everything left; returns how many."""
    client = subscriber_client()
    left, empty = 0, 0
    try:
        while empty < 3:
            response = client.pull(subscription=subscription, max_messages=500, timeout=5)
            if not response.received_messages:
                empty += 1
                continue
            empty = 0
            left += len(response.received_messages)
            client.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    finally:
        client.close()
    return left


def _one(emulator, double, images, urls, max_messages: int, args) -> str:
    from google.cloud import pubsub_v1

    suffix = uuid.uuid4().hex[:6]
    index = f"kill-{suffix}"
    double.create_index(index, {**document_properties(), "created_at": {"type": "date"}})
    topic, (subscription,) = emulator.create(f"kill-{suffix}", f"kill-job-{suffix}")
    dead, _ = emulator.create(f"kill-dead-{suffix}")
    publisher = pubsub_v1.PublisherClient()
    for future in [publisher.publish(topic, json.dumps(
            {"id": f"item-{n:04d}", "image_urls": [urls[n % len(urls)]], "created_at": "2026-01-01T00:00:00Z",
             "updated_at": "2026-01-02T00:00:00.000000Z", "price": n}).encode()) for n in range(args.messages)]:
        future.result(timeout=60)
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.streaming", "--input-subscription", subscription, "--deadletter-topic",
         dead, "--es-url", double.url, "--es-index", index, "--allow-image-hosts", images.host_port,
         "--local-max-messages", str(max_messages)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last: list[tuple[int, int]] = []
    killed = threading.Event()

    def watch() -> None:
        for line in process.stdout:
            found = PROGRESS.match(line)
            if found:
                last.append((int(found[1]), int(found[2])))
                if int(found[2]) >= args.kill_at_written and not killed.is_set():
                    process.send_signal(signal.SIGKILL)
                    killed.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        if not killed.wait(args.timeout):
            raise RuntimeError(f"the job did not write {args.kill_at_written} documents within {args.timeout:g}s")
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(10)
    left = _drain_subscription(subscription)
    from es.client import EsConfig, make_client

    client = make_client(EsConfig.from_env(url=double.url))
    try:
        client.indices.refresh(index=index)
        indexed = client.count(index=index)["count"]
    finally:
        client.close()
    read_at_kill, written_at_kill = last[-1]
    pulled = args.messages - left
    return (f"RESULT bench=stream_sigkill max_messages={max_messages} published={args.messages} "
            f"killed_at_written={written_at_kill} read_at_kill={read_at_kill} pulled={pulled} indexed={indexed} "
            f"left={left} lost={args.messages - indexed - left}")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="the backlog")
    parser.add_argument("--kill-at-written", type=int, default=100, help="SIGKILL once this many are written")
    parser.add_argument("--max-messages", type=int, nargs="+", default=[20, 100],
                        help="--local-max-messages values to compare (100 was the old per-pull cap)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    emulator = PubSubEmulator.start()
    emulator.environ()
    double = start_double()
    images = ImageServer().start()
    try:
        urls = [images.route(f"/{i}.jpg", body=_jpeg(i), content_type="image/jpeg") for i in range(20)]
        for max_messages in args.max_messages:
            print(_one(emulator, double, images, urls, max_messages, args), flush=True)
    finally:
        images.close()
        double.stop()
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
