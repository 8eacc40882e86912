"""``imagescore stream-demo``: the streaming job end to end on this machine, then a check of the index.

It starts Google's Pub/Sub emulator, the Elasticsearch test double (or uses
``$ES_URL``) and, with ``--triton``, a local Triton server on an exported model;
serves the demo catalog's images from 127.0.0.1; runs the streaming job on the
local runner; publishes the catalog as an update stream (bursts, out-of-order
versions, re-sends, deletes, image changes, malformed and hostile messages) with a
live progress line; prints the accounting; checks that the index holds the newest
version of every item; and stops everything it started.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from cli_common import ArgumentParser, UsageError, job_main
from pipelines.catalog import ImageServer, build_catalog
from pipelines.pubsub_emulator import PubSubEmulator
from pipelines.update_stream import UpdateStream, build_update_stream

if TYPE_CHECKING:
    pass

ROOT = Path(__file__).resolve().parents[1]
INDEX = "items"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="imagescore stream-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton", action="store_true",
                        help="score on a local tritonserver (nvidia-pytriton wheel) serving the exported model")
    parser.add_argument("--products", type=int, default=40, help="product photos in the catalog")
    parser.add_argument("--aggregate-seconds", type=float, default=2.0, help="the aggregator's window")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a round after this many seconds")
    parser.add_argument("--workdir", help="keep the catalog and logs here (default: a temporary directory)")
    return parser


class _EsDouble:
    """The Elasticsearch double as a child process (``python -m tests.es_double``), from a source checkout."""

    def __init__(self) -> None:
        if not (ROOT / "tests" / "es_double" / "__main__.py").is_file():
            raise UsageError("no $ES_URL and no tests/es_double/ here (it runs from a source "
                             "checkout); set ES_URL to a cluster")
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "tests.es_double", "--port", str(port)], cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise UsageError(f"the Elasticsearch double did not start on {self.url}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _start_triton(workdir: Path):
    from scoring.export_triton import export_triton
    from scoring.triton_server import start_triton

    repository = workdir / "triton-models"
    export_triton("handcrafted", str(repository), name="image_score", backend="python", overwrite=True)
    process, grpc_url, _, log_path = start_triton(str(repository), str(workdir), ("image_score",))
    print(f"stream-demo: Triton serving triton://{grpc_url}/image_score (log {log_path})")
    return process, f"triton://{grpc_url}/image_score"


def services_line(emulator_host: str, es_url: str, model: str) -> str:
    """What the demo runs against; an ``ES_URL`` with credentials in it is shown without them."""
    from es.secrets import scrub
    return f"stream-demo: Pub/Sub emulator {emulator_host}, Elasticsearch {scrub(es_url)}, model {model}"


def check_index(es_url: str, index: str, stream: UpdateStream) -> list[str]:
    """Problems with the index against the stream's expected newest state (empty: all good)."""
    from es.client import EsConfig, make_client

    client = make_client(EsConfig.from_env(url=es_url))
    try:
        client.indices.refresh(index=index)
        ids = [i for i, e in stream.expected.items() if e.indexed]
        found = {}
        for start in range(0, len(ids), 500):
            response = client.mget(index=index, ids=ids[start:start + 500])
            found.update({d["_id"]: d["_source"] for d in response["docs"] if d.get("found")})
    finally:
        client.close()
    problems = []
    for item_id in ids:
        want, doc = stream.expected[item_id], found.get(item_id)
        if doc is None:
            problems.append(f"{item_id}: not in the index")
        elif want.unscored:
            scored = sorted(name for name in doc if name.startswith("image_score"))
            if doc.get("deleted") is True or scored:
                problems.append(f"{item_id}: its image failed, so it must be live without score fields; "
                                f"it holds deleted={doc.get('deleted')} {scored}")
        elif doc.get("updated_at") != want.version:
            problems.append(f"{item_id}: indexed version {doc.get('updated_at')}, newest is {want.version}")
        elif want.deleted and doc.get("deleted") is not True:
            problems.append(f"{item_id}: deleted, but the index holds no tombstone")
        elif not want.deleted and doc.get("image_score_image_url") != want.image_url:
            problems.append(f"{item_id}: score of {doc.get('image_score_image_url')}, newest image is {want.image_url}")
        elif not want.deleted and doc.get("image_score") is None:
            problems.append(f"{item_id}: no image_score")
    return problems


def _pull_dead_letters(emulator: PubSubEmulator, subscription: str, expected: int) -> list:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    received = []
    deadline = time.monotonic() + 30
    try:
        while len(received) < expected and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=500, timeout=2)
            if response.received_messages:
                subscriber.acknowledge(subscription=subscription,
                                       ack_ids=[m.ack_id for m in response.received_messages])
            received += [m.message for m in response.received_messages]
    finally:
        subscriber.close()
    return received


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pipelines import streaming  # Beam: imported once the flags are read, so --help answers at once
    from pipelines.local_runner import accounted, print_progress, print_summary
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imagescore-stream-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started: list = []
    try:
        with ImageServer(workdir) as images:
            entries = build_catalog(workdir, images.url, products=args.products)
            stream = build_update_stream(entries)
            emulator = PubSubEmulator.start()
            started.append(emulator.stop)
            emulator.environ()
            suffix = uuid.uuid4().hex[:6]
            topic, (subscription,) = emulator.create(f"item-updates-{suffix}", f"stream-job-{suffix}")
            dead_topic, (dead_subscription,) = emulator.create(f"dead-letters-{suffix}", f"dead-check-{suffix}")
            es_url = os.environ.get("ES_URL")
            if not es_url:
                double = _EsDouble()
                started.append(double.stop)
                es_url = double.url
            model = "handcrafted"
            if args.triton:
                process, model = _start_triton(workdir)
                from scoring.triton_server import stop_triton
                started.append(lambda: stop_triton(process))
            print(services_line(emulator.host, es_url, model))
            print(f"stream-demo: {stream.total} messages in {len(stream.rounds)} rounds: "
                  + ", ".join(f"{n} {kind}" for kind, n in sorted(stream.kinds.items())))
            result, job = streaming.launch([
                "--input-subscription", subscription, "--deadletter-topic", dead_topic, "--es-url", es_url,
                "--es-index", INDEX, "--allow-image-hosts", images.host_port, "--model", model,
                "--aggregate-seconds", str(args.aggregate_seconds)])
            started.append(job.cancel)
            from google.cloud import pubsub_v1
            publisher = pubsub_v1.PublisherClient()
            published = 0
            for number, batch in enumerate(stream.rounds, 1):
                futures = [publisher.publish(topic, payload) for payload in batch]
                for future in futures:
                    future.result(timeout=60)
                published += len(batch)
                print(f"\nstream-demo: round {number}: published {len(batch)} messages")
                totals = job.wait(stop=lambda t, n=published: accounted(t) >= n,
                                  max_seconds=args.timeout, progress=lambda t: print_progress(job, t))
                if accounted(totals) < published:
                    print(f"\nstream-demo: round {number} not accounted for within {args.timeout:g}s",
                          file=sys.stderr)
                    break
            # The job publishes dead letters as it goes: read them while it still runs.
            now = job.totals()
            letters = _pull_dead_letters(emulator, dead_subscription,
                                         now.get("deadlettered", 0) + now.get("image_deadlettered", 0))
            totals = job.cancel()
            started.remove(job.cancel)
            print_summary(totals, result)
            reasons = Counter(f"{m.attributes.get('stage')}/{m.attributes.get('reason')}" for m in letters)
            print("stream-demo: dead letters on the topic: "
                  + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())))
            problems = check_index(es_url, INDEX, stream)
            balanced = totals.get("messages_read", 0) == accounted(totals) == published
            print(f"stream-demo: accounting {'holds' if balanced else 'DOES NOT hold'}: "
                  f"{published} published = {totals.get('messages_read', 0)} read = "
                  f"{accounted(totals)} superseded + written + stale + deleted + missing + dead-lettered")
            if problems:
                print(f"stream-demo: {len(problems)} item(s) differ from their newest version:\n  "
                      + "\n  ".join(problems[:20]))
            else:
                unscored = sum(1 for e in stream.expected.values() if e.unscored)
                print(f"stream-demo: the index holds the newest version of all "
                      f"{sum(1 for e in stream.expected.values() if e.indexed)} items "
                      f"({unscored} of them without a score: their image failed)")
            return 0 if balanced and not problems else 1
    finally:
        for stop in reversed(started):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 -- keep stopping the rest
                print(f"stream-demo: while stopping: {exc}", file=sys.stderr)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    job_main("python -m pipelines.stream_demo", run)
