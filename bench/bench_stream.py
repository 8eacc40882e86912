"""The streaming job end to end through the Pub/Sub emulator: throughput, latency, feeder batching, score reuse.

Real services on 127.0.0.1: Google's Pub/Sub emulator, the Elasticsearch double, an
image server; the job runs on the local streaming runner with the handcrafted model.
The index starts as a backfill leaves it: ``--items`` items, each with a score from
this model for its current thumbnail. Then:

* **backlog**: one update per item is published at once, ``--edit-share`` (80 %) of
  them price-only edits and the rest image changes. Measured: messages/s until all are
  accounted for (or ``--seconds``), the share of fetches saved by ``score_reused`` (ok when
  every price-only edit drawn reused its score: the target is the share drawn, near
  ``--edit-share``), and the feeder's mean documents per bulk request against what could reach
  one request: ``--es-max-docs``, or fewer when documents reach the feeder slower than
  ``--es-max-docs`` per ``--es-max-buffer-seconds`` (on a 2-core machine fetch and scoring
  hold the job to a few messages/s, so a batch closes on time, not on size); ok at 0.8 of it.
* **paced**: a fresh job gets ``--rate`` messages/s (price edits and image changes in
  the same mix) for ``--paced-seconds``; measured: p50/p99 publish-to-write latency.
* **outage**: a fresh job writes through a loopback TCP forwarder in front of the
  double and gets ``--outage-rate`` messages/s. After ``--before-seconds`` the forwarder
  refuses connections for ``--outage-seconds`` (Elasticsearch down), then forwards again
  and publishing stops. Measured: outcomes/s before, during and after the outage, the
  time from recovery until every published message is accounted for (an empty
  backlog), and what was dead-lettered or lost. ``--outage-seconds 0`` skips it.

Peak RSS is this process's (the job, the ES double and the image server; the emulator
is a separate JVM). Prints four lines::

    RESULT bench=stream_backlog messages=... msgs_per_s=... fetches_saved_share=... target_saved=... ok=...
    RESULT bench=stream_feeder mean_docs_per_bulk=... es_max_docs=... share_of_max=... reachable=... fill=... ok=...
    RESULT bench=stream_latency rate=... p50_ms=... p99_ms=... peak_rss_mib=...
    RESULT bench=stream_outage outage_s=... before_msgs_per_s=... during_msgs_per_s=... after_msgs_per_s=... \
        recovery_to_empty_s=... lost=...
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from es.mapping import document_properties  # noqa: E402
from pipelines import streaming  # noqa: E402
from pipelines.local_runner import LocalRun, accounted, latency_ms  # noqa: E402
from pipelines.pubsub_emulator import PubSubEmulator  # noqa: E402
from scoring.model import model_info  # noqa: E402
from tests.fixtures.es import start_double  # noqa: E402
from tests.fixtures.forwarder import TcpForwarder  # noqa: E402
from tests.fixtures.image_server import ImageServer  # noqa: E402

INDEX = "items"
VERSION = "2026-01-01T00:00:00.000000Z"

BUFFER_S = 1.0  # --es-max-buffer-seconds of every job here


def _jpeg(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(40):
        x, y = rng.randrange(size), rng.randrange(size)
        image.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def _update(item_id: str, url: str, version: str, price: int) -> bytes:
    return json.dumps({"id": item_id, "image_urls": [url], "created_at": "2025-12-01T00:00:00Z",
                       "updated_at": version, "price": price}).encode()


def _version(n: int) -> str:
    return f"2026-01-{1 + n // 86400:02d}T{(n // 3600) % 24:02d}:{(n // 60) % 60:02d}:{n % 60:02d}.000000Z"


def _job(emulator, es_url, images, args, subscription: str, dead_topic: str, *extra: str) -> LocalRun:
    _, job = streaming.launch([
        "--input-subscription", subscription, "--deadletter-topic", dead_topic, "--es-url", es_url,
        "--es-index", INDEX, "--allow-image-hosts", images.host_port, "--aggregate-seconds", "1",
        "--es-max-docs", str(args.es_max_docs), "--es-max-buffer-seconds", str(BUFFER_S), *extra])
    return job


def _subscribe(emulator, topic: str, name: str) -> str:
    """A subscription made now: it sees only what is published from now on."""
    from google.cloud import pubsub_v1
    subscription = emulator.subscription(name)
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    subscriber.close()
    return subscription


class _Publisher(threading.Thread):
    """Publishes ``make(n)`` at ``rate`` messages/s until stopped; ``count`` is what the emulator has taken."""

    def __init__(self, publisher, topic: str, make, rate: float):
        super().__init__(daemon=True)
        self._publisher, self._topic, self._make, self._rate = publisher, topic, make, rate
        self._halt = threading.Event()
        self.count = 0

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.is_set():
            self._publisher.publish(self._topic, self._make(self.count)).result(timeout=30)
            self.count += 1
            self._halt.wait(max(0.0, start + self.count / self._rate - time.monotonic()))

    def finish(self) -> int:
        self._halt.set()
        self.join(60)
        return self.count


def _outage(emulator, double, images, args, publisher, topic: str, dead_topic: str, make_update, ids, suffix: str):
    """The outage phase: throughput before, during and after, and the time from recovery to an empty backlog."""
    forwarder = TcpForwarder(double.url.removeprefix("http://")).start()
    subscription = _subscribe(emulator, topic, f"outage-{suffix}")
    extra = ["--es-unavailable-seconds", str(args.es_unavailable_seconds)] if args.es_unavailable_seconds else []
    job = _job(emulator, f"http://{forwarder.url}", images, args, subscription, dead_topic, *extra)
    rng = random.Random(1)
    try:
        warm_up = 5  # the job is running once these are accounted for
        for n in range(warm_up):
            publisher.publish(topic, make_update(rng.choice(ids), 200_000 + n)).result(timeout=30)
        job.wait(stop=lambda t: accounted(t) >= warm_up, max_seconds=120, every=0.5)
        feed = _Publisher(publisher, topic, lambda n: make_update(rng.choice(ids), 300_000 + n), args.outage_rate)
        done = lambda: accounted(job.totals()) - warm_up  # noqa: E731
        t0, d0 = time.monotonic(), done()
        feed.start()
        time.sleep(args.before_seconds)
        t_down, d_down = time.monotonic(), done()
        forwarder.stop()
        time.sleep(args.outage_seconds)
        t_up, d_up = time.monotonic(), done()
        forwarder.start()
        published = feed.finish()
        totals = job.wait(stop=lambda t: accounted(t) - warm_up >= published, max_seconds=args.seconds * 5,
                          every=0.5)
        t_empty, d_empty = time.monotonic(), accounted(totals) - warm_up
        totals = job.cancel()
    finally:
        forwarder.stop()
    drained = d_empty >= published
    dead = totals.get("deadlettered", 0)
    print(f"RESULT bench=stream_outage outage_s={args.outage_seconds:g} rate={args.outage_rate:g} "
          f"published={published} before_msgs_per_s={(d_down - d0) / (t_down - t0):.1f} "
          f"during_msgs_per_s={(d_up - d_down) / (t_up - t_down):.1f} "
          f"after_msgs_per_s={(d_empty - d_up) / max(1e-9, t_empty - t_up):.1f} "
          f"recovery_to_empty_s={(t_empty - t_up) if drained else float('nan'):.1f} "
          f"backlog_at_recovery={published - d_up} written={totals.get('written', 0)} deadlettered={dead} "
          f"es_unavailable={totals.get('deadletter_feeder_es_unavailable', 0)} "
          f"es_retried_requests={totals.get('es_retried_requests', 0)} lost={max(0, published - d_empty)} "
          f"ok={str(drained and dead == 0).lower()}", flush=True)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--images", type=int, default=40, help="distinct thumbnails")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--edit-share", type=float, default=0.8, help="updates that do not touch the image")
    parser.add_argument("--seconds", type=float, default=60.0, help="the backlog phase's time limit")
    parser.add_argument("--es-max-docs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s of the paced phase")
    parser.add_argument("--paced-seconds", type=float, default=30.0)
    parser.add_argument("--outage-seconds", type=float, default=30.0,
                        help="how long Elasticsearch is down in the outage phase (0: skip the phase)")
    parser.add_argument("--outage-rate", type=float, default=20.0, help="messages/s of the outage phase")
    parser.add_argument("--before-seconds", type=float, default=20.0, help="the outage phase's run before the outage")
    parser.add_argument("--es-unavailable-seconds", type=float, default=None,
                        help="the job's outage budget (default: the job's own)")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    model_id, _ = model_info("handcrafted")
    emulator = PubSubEmulator.start()
    emulator.environ()
    double = start_double()
    images = ImageServer().start()
    try:
        from google.cloud import pubsub_v1
        urls = [images.route(f"/{i}.jpg", body=_jpeg(i, args.image_size), content_type="image/jpeg")
                for i in range(args.images)]
        current = {f"item-{n:05d}": urls[n % len(urls)] for n in range(args.items)}
        double.create_index(INDEX, {**document_properties(), "created_at": {"type": "date"}})
        double.seed(INDEX, {item_id: {
            "created_at": "2025-12-01T00:00:00Z", "updated_at": VERSION, "price": 100, "image_urls": [url],
            "image_score": 0.5, "image_score_model": model_id, "image_scored_at": VERSION,
            "image_score_image_url": url, "image_score_version": VERSION, "image_score_rank": 0.5}
            for item_id, url in current.items()})
        suffix = uuid.uuid4().hex[:6]
        topic, (backlog_sub,) = emulator.create(f"updates-{suffix}", f"backlog-{suffix}")
        dead_topic, _ = emulator.create(f"dead-{suffix}")
        publisher = pubsub_v1.PublisherClient()

        price_edits = []

        def make_update(item_id: str, n: int) -> bytes:
            url = current[item_id]
            if rng.random() >= args.edit_share:
                url = current[item_id] = rng.choice([u for u in urls if u != url])
            else:
                price_edits.append(item_id)
            return _update(item_id, url, _version(3600 + n), 100 + n)

        # -- backlog
        backlog = [make_update(item_id, n) for n, item_id in enumerate(current)]
        target_saved = len(price_edits) / len(backlog)   # the share drawn, near --edit-share
        for future in [publisher.publish(topic, data) for data in backlog]:
            future.result(timeout=120)
        job = _job(emulator, double.url, images, args, backlog_sub, dead_topic)
        started = time.monotonic()
        totals = job.wait(stop=lambda t: accounted(t) >= len(backlog), max_seconds=args.seconds, every=1)
        elapsed = time.monotonic() - started
        totals = job.cancel()
        done = accounted(totals)
        looked_up = totals.get("score_reused", 0) + totals.get("analyzer_fetched", 0) + sum(
            v for k, v in totals.items() if k.startswith("deadletter_analyzer_"))
        saved = totals.get("score_reused", 0) / max(1, looked_up)
        sent = sum(totals.get(f"es_{k}", 0) for k in ("written", "deleted", "stale", "missing", "failed"))
        per_bulk = sent / max(1, totals.get("es_bulk_requests", 0))
        print(f"RESULT bench=stream_backlog messages={done} of={len(backlog)} seconds={elapsed:.1f} "
              f"msgs_per_s={done / elapsed:.1f} score_reused={totals.get('score_reused', 0)} "
              f"fetched={totals.get('analyzer_fetched', 0)} fetches_saved_share={saved:.3f} "
              f"edit_share={args.edit_share} target_saved={target_saved:.3f} "
              f"ok={str(totals.get('score_reused', 0) == len(price_edits) and done == len(backlog)).lower()}",
              flush=True)
        # A batch closes at --es-max-docs or after BUFFER_S: it can hold at most what reaches the feeder
        # in BUFFER_S. Flushing per bundle (apache/beam#19444) would send 1-2 documents per request.
        reachable = max(1.0, min(args.es_max_docs, sent / elapsed * BUFFER_S))
        print(f"RESULT bench=stream_feeder mean_docs_per_bulk={per_bulk:.1f} es_max_docs={args.es_max_docs} "
              f"bulk_requests={totals.get('es_bulk_requests', 0)} share_of_max={per_bulk / args.es_max_docs:.2f} "
              f"reachable={reachable:.1f} fill={per_bulk / reachable:.2f} target=0.8 "
              f"ok={str(per_bulk >= 0.8 * reachable).lower()}", flush=True)

        # -- paced
        paced_sub = _subscribe(emulator, topic, f"paced-{suffix}")
        job = _job(emulator, double.url, images, args, paced_sub, dead_topic)
        paced = 0
        start = time.monotonic()
        ids = list(current)
        while time.monotonic() - start < args.paced_seconds:
            publisher.publish(topic, make_update(rng.choice(ids), 100_000 + paced)).result(timeout=30)
            paced += 1
            time.sleep(max(0.0, start + paced / args.rate - time.monotonic()))
        job.wait(stop=lambda t: accounted(t) >= paced, max_seconds=60, every=1)
        p50, p99 = latency_ms(job.result)
        job.cancel()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"RESULT bench=stream_latency rate={args.rate} messages={paced} p50_ms={p50:.0f} p99_ms={p99:.0f} "
              f"peak_rss_mib={peak:.0f}", flush=True)

        if args.outage_seconds > 0:
            _outage(emulator, double, images, args, publisher, topic, dead_topic, make_update, ids, suffix)
    finally:
        images.close()
        double.stop()
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
