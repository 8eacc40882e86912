"""Benchmark: ``imagescore monitor`` offline on 10M scores, and the requests an index run sends.

1. Writes ``--scores`` JSONL score records (4 models x 3 platforms, beta-distributed scores),
   then runs ``monitor --input`` on them in a child process, so that peak RSS is the monitor's
   alone: wall time, scores/s and peak RSS.
2. Indexes 100 groups (10 models x 10 platforms) into the ES test double twice, at two sizes
   (``--docs`` and 4x that), runs ``monitor --es-url`` on each and counts the ``_search``
   requests the double saw: the count must not grow with the number of documents.

Prints one line:

    RESULT bench=monitor scores=... seconds=... scores_per_s=... peak_rss_mib=... requests_small=... requests_large=...
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ENV = {**os.environ, "PYTHONPATH": ROOT}
MODELS = ["m1", "m2", "m3", "m4"]
PLATFORMS = ["web", "ios", "android"]


def write_scores(path: str, n: int, seed: int = 0, chunk: int = 1_000_000) -> None:
    """``n`` score records, written a chunk at a time."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            scores = rng.beta(2, 5, size)
            models = np.array(MODELS)[rng.integers(0, len(MODELS), size)]
            platforms = np.array(PLATFORMS)[rng.integers(0, len(PLATFORMS), size)]
            tail = '","image_scored_at":"2025-02-28T00:00:00Z","updated_at":"2025-02-27T00:00:00.000000Z"}'
            fh.write("\n".join(f'{{"id":"{start + i}","image_score":{s:.6f},"image_score_model":"{m}","platform":"{p}{tail}'
                               for i, (s, m, p) in enumerate(zip(scores.tolist(), models.tolist(),
                                                                 platforms.tolist()))))
            fh.write("\n")


def offline(path: str, out: str) -> dict:
    code = f"""
import json, resource, time, contextlib, io
from ranking import monitor
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    monitor.run(["--input", {path!r}, "--by", "image_score_model,platform", "--output", {out!r}])
print(json.dumps({{"seconds": time.perf_counter() - t0,
                   "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=ENV, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def index_requests(docs: int, out: str) -> int:
    """``_search`` requests one monitor run sends for ``docs`` documents in 100 groups."""
    from elasticsearch import Elasticsearch, helpers

    from es.mapping import document_properties
    from ranking import monitor
    from tests.fixtures.es import start_double
    double = start_double()
    try:
        client = Elasticsearch(double.url)
        client.indices.create(index="bench", mappings={"properties": {**document_properties(),
                                                                      "platform": {"type": "keyword"}}})
        rng = np.random.default_rng(docs)
        helpers.bulk(client, ({"_index": "bench", "_id": str(i), "_source": {
            "image_score": float(rng.beta(2, 5)), "image_score_model": f"model-{i % 10}",
            "platform": f"platform-{(i // 10) % 10}", "image_scored_at": "2025-02-28T00:00:00Z"}}
            for i in range(docs)), refresh=True)
        double.requests.clear()
        with contextlib.redirect_stdout(io.StringIO()):
            monitor.run(["--es-url", double.url, "--es-index", "bench", "--by", "image_score_model,platform",
                         "--output", out])
        groups = len(json.load(open(os.path.join(out, "monitor.json")))["groups"])
        assert groups == 100, groups
        return sum(r.path.endswith("/_search") for r in double.requests)
    finally:
        double.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", type=int, default=10_000_000)
    parser.add_argument("--docs", type=int, default=1_000, help="documents of the smaller index run (x4 for the larger)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scores.jsonl")
        t0 = time.perf_counter()
        write_scores(path, args.scores)
        write_s = time.perf_counter() - t0
        run = offline(path, os.path.join(tmp, "offline"))
        small = index_requests(args.docs, os.path.join(tmp, "small"))
        large = index_requests(4 * args.docs, os.path.join(tmp, "large"))
    print(f"RESULT bench=monitor scores={args.scores} seconds={run['seconds']:.1f} "
          f"scores_per_s={args.scores / run['seconds']:.0f} peak_rss_mib={run['rss_mib']:.0f} "
          f"write_s={write_s:.1f} requests_small={small} requests_large={large} docs_small={args.docs} "
          f"docs_large={4 * args.docs}")


if __name__ == "__main__":
    main()
