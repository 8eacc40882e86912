"""Benchmark: the backfill end to end on the demo catalog with the default model.

It builds the demo catalog, serves it from 127.0.0.1, runs the backfill on
the local runner (in-process FnApiRunner) into files, and reports items/s, peak RSS and the share of wall
time spent outside the model (fetch, decode, Beam overhead, writing), from
RunInference's own batch-latency metric measured in the same run. Prints:

    RESULT bench=backfill items=... items_per_s=... model_s=... wall_s=... outside_model_share=... peak_rss_mib=...
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from apache_beam.metrics.metric import MetricsFilter  # noqa: E402

from pipelines import backfill  # noqa: E402
from pipelines.catalog import ImageServer, build_catalog, write_catalog  # noqa: E402
from pipelines.report import counters  # noqa: E402


def model_seconds(result) -> float:
    """Sum of RunInference's per-batch inference latency (the model's own time)."""
    query = result.metrics().query(MetricsFilter().with_name("inference_batch_latency_micro_secs"))
    return sum((d.committed or d.attempted).sum for d in query["distributions"]) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=160, help="drawn product photos in the catalog")
    parser.add_argument("--mode", default="in_memory", choices=("in_memory", "multi_threading", "multi_processing"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "catalog", Path(tmp) / "out"
        root.mkdir()
        now = datetime.now(UTC)
        with ImageServer(root) as server:
            entries = build_catalog(root, server.url, products=args.products, now=now)
            write_catalog(entries, root / "items.jsonl")
            start = time.perf_counter()
            result = backfill.run([
                "--source", "files", "--input", str(root / "items.jsonl"), "--output", str(out),
                "--allow-image-hosts", server.host_port, "--now", now.isoformat(),
                f"--direct_running_mode={args.mode}", f"--direct_num_workers={args.workers}"])
            wall = time.perf_counter() - start
    c = counters(result)
    model_s = model_seconds(result)
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"RESULT bench=backfill mode={args.mode} items={c['items_read']} scored={c.get('scored', 0)} "
          f"items_per_s={c['items_read'] / wall:.1f} wall_s={wall:.2f} model_s={model_s:.2f} "
          f"outside_model_share={1 - model_s / wall:.2f} peak_rss_mib={rss / 1024:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
