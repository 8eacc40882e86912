"""Benchmark: rerank-eval on 100k logged SERPs x 8 sweep points: SERPs/s and peak RSS.

Simulates a search log (logs only, ``--no-images``) with engine scores, uses
the latent quality as image scores, then runs the replay sweep (8 weights of
the multiplicative formula: re-rank through the scoring mirror + per-SERP
metrics) and the SERP bootstrap as ``rerank-eval`` does. As the side-by-side
reference it replays the same formula with a plain per-SERP Python loop
(``sorted`` on the same float32 arithmetic) on a subset. Prints one line:

    RESULT bench=rerank serps=... points=... sweep_serps_per_s=... loop_serps_per_s=... speedup=... ...

Peak RSS is ``ru_maxrss`` of this process in MiB (the simulation runs in a child).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _loop_replay(logs, w: float, missing: float, n_serps: int) -> int:
    """The multiplicative replay one SERP at a time, in plain Python, for the reference rate."""
    starts = np.searchsorted(logs.serp, np.arange(n_serps + 1))
    scores, images, positions = logs.score.tolist(), logs.image_score.tolist(), logs.position.tolist()
    w32 = float(np.float32(w))
    changed = 0
    for s in range(n_serps):
        rows = range(starts[s], starts[s + 1])
        new = [(float(np.float32(scores[i] * (1.0 + (missing if images[i] != images[i] else images[i]) * w32))),
                positions[i], i) for i in rows]
        order = [i for _, _, i in sorted(new, key=lambda t: (-t[0], t[1]))]
        changed += order != list(rows)
    return changed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serps", type=int, default=100_000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--loop-serps", type=int, default=5000, help="SERPs replayed by the plain loop")
    args = p.parse_args()
    from ranking.replay import attach_scores, load_logs
    from ranking.rerank_eval import propensities, sweep
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "training.simulate", "--output", tmp, "--serps", str(args.serps),
                        "--items", str(args.items), "--no-images"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": ROOT})
        t0 = time.perf_counter()
        logs = load_logs(os.path.join(tmp, "logs.jsonl"))
        with open(os.path.join(tmp, "quality.jsonl")) as fh:
            quality = {r["item_id"]: r["quality"] for r in map(json.loads, fh)}
        attach_scores(logs, quality)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        theta, _ = propensities(logs, None)
        em_s = time.perf_counter() - t0
        ws = [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5]  # + 0 = 8 sweep points
        t0 = time.perf_counter()
        rows, ranks = sweep(logs, ["multiplicative"], ws, theta=theta, n_boot=args.bootstrap)
        sweep_s = time.perf_counter() - t0
        n_loop = min(args.loop_serps, logs.n_serps)
        t0 = time.perf_counter()
        for w in [0.0] + ws:
            _loop_replay(logs, w, 0.5, n_loop)
        loop_s = time.perf_counter() - t0
    points = len(ranks)
    sweep_rate = logs.n_serps * points / sweep_s
    loop_rate = n_loop * points / loop_s  # re-ranking only: no metrics, no bootstrap
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"RESULT bench=rerank serps={logs.n_serps} items={len(logs.serp)} points={points} "
          f"bootstrap={args.bootstrap} load_s={load_s:.1f} em_s={em_s:.1f} sweep_s={sweep_s:.1f} "
          f"sweep_serps_per_s={sweep_rate:.0f} loop_serps_per_s={loop_rate:.0f} speedup={sweep_rate / loop_rate:.1f} "
          f"peak_rss_mib={rss:.0f} rows={len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
