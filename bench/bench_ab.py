"""Benchmark: ab-readout on 2M simulated users (Parquet): wall time, users/s and peak RSS.

Simulates the experiment (``simulate-ab``, two variants, three platforms, 20%
returning users) in a child process, then runs the readout in another child
so that peak RSS is the readout's alone, with and without CUPED. As the
side-by-side reference it times reading the same Parquet file and grouping it
by user (the floor any per-user readout pays). Prints one line:

    RESULT bench=ab users=... rows=... readout_s=... cuped_s=... read_group_s=... users_per_s=... peak_rss_mib=...
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=ENV, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _readout(path: str, out: str, cuped: bool) -> dict:
    return _child(f"""
import json, resource, time, contextlib, io
from ranking import ab
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    ab.run(["--input", {path!r}, "--control", "control", "--output", {out!r}] + (["--cuped"] if {cuped} else []))
print(json.dumps({{"seconds": time.perf_counter() - t0,
                   "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
""")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = os.path.join(tmp, "rows.parquet")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ranking.ab_simulate", "--output", rows, "--users", str(args.users)],
                       check=True, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)
        simulate_s = time.perf_counter() - t0
        plain = _readout(rows, os.path.join(tmp, "plain"), False)
        cuped = _readout(rows, os.path.join(tmp, "cuped"), True)
        floor = _child(f"""
import json, time, pyarrow.parquet as pq
t0 = time.perf_counter()
t = pq.read_table({rows!r})
g = t.group_by("user_id").aggregate([("transactions", "sum")])
print(json.dumps({{"seconds": time.perf_counter() - t0, "rows": t.num_rows}}))
""")
        result = json.loads(open(os.path.join(tmp, "plain", "readout.json")).read())
    rss = max(plain["rss_mib"], cuped["rss_mib"])
    print(f"RESULT bench=ab users={args.users} rows={floor['rows']} simulate_s={simulate_s:.1f} "
          f"readout_s={plain['seconds']:.1f} cuped_s={cuped['seconds']:.1f} read_group_s={floor['seconds']:.1f} "
          f"readout_over_read_group={plain['seconds'] / floor['seconds']:.1f} "
          f"users_per_s={args.users / plain['seconds']:.0f} peak_rss_mib={rss:.0f} "
          f"srm_flag={result['srm']['flag']} own_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
