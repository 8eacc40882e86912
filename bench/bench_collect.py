"""Benchmark: collect throughput (SERPs/s) and peak RSS on the local runner, per --direct_running_mode.

Generates a simulated search log (logs only, ``--no-images``), then runs
``imagescore collect`` on it once per running mode, each in its own
process so peak RSS is that run's alone, plus the same per-SERP code as a
plain Python loop (no Beam) as the floor the runner overhead is measured
against. Prints one line:

    RESULT bench=collect serps=... best_mode=... beam_serps_per_s=... plain_serps_per_s=... ...

Peak RSS is ``ru_maxrss`` of the run's process plus the largest of its
children (the multi_processing workers), in MiB.
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
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = {
    "in_memory": ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
    "multi_threading": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
    "multi_processing": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}
CUTOFF = "2024-01-15T00:00:00Z"


def _peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0  # Linux reports KiB


def _child_beam(mode: str, logs: str, out: str) -> dict:
    import contextlib
    import io

    from pipelines import collect
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = collect.run(["--logs", logs, "--output", out, "--ctr-cutoff", CUTOFF, *MODES[mode]])
    seconds = time.perf_counter() - start
    summary = json.loads(Path(out, "summary.json").read_text())
    return {"rc": rc, "seconds": seconds, "windows": summary["counts"].get("windows", 0),
            "lines": summary["lines_in"], "rss_mib": _peak_rss_mib()}


def _child_plain(logs: str, out: str) -> dict:
    """The same per-SERP work without Beam: parse, window, split, CTR in a dict, JSON out."""
    from pipelines.collect import assign_split, make_window, parse_serp, parse_ts
    from transforms.deadletter import Rejected
    cutoff = parse_ts(CUTOFF)
    ctr: dict[str, list[int]] = {}
    windows = lines = 0
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    with open(logs) as fh, open(os.path.join(out, "windows.jsonl"), "w") as sink:
        for line in fh:
            lines += 1
            try:
                serp = parse_serp(line)
            except Rejected:
                continue
            window, _ = make_window(serp, 0.2, 5, 2, 2)
            if window is not None:
                window["split"] = assign_split(window["serp_id"])
                sink.write(json.dumps(window, sort_keys=True) + "\n")
                windows += 1
            if parse_ts(serp["ts"]) < cutoff:
                for item in serp["items"]:
                    acc = ctr.setdefault(item["item_id"], [0, 0])
                    acc[0] += 1
                    acc[1] += item["clicked"]
    with open(os.path.join(out, "ctr.jsonl"), "w") as sink:
        sink.writelines(json.dumps({"item_id": item_id, "impressions": shown, "clicks": clicks,
                                   "ctr": clicks / shown}) + "\n" for item_id, (shown, clicks) in ctr.items())
    return {"rc": 0, "seconds": time.perf_counter() - start, "windows": windows, "lines": lines,
            "rss_mib": _peak_rss_mib()}


def _spawn(kind: str, logs: str, out: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, "--logs", logs, "--out", out],
                          check=False, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench_collect: the {kind} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serps", type=int, default=100_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated --direct_running_mode values to measure")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--logs", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = _child_plain(args.logs, args.out) if args.child == "plain" else _child_beam(args.child, args.logs,
                                                                                           args.out)
        print(json.dumps(result))
        return 0

    from training import simulate
    with tempfile.TemporaryDirectory(prefix="bench_collect_") as tmp:
        world = os.path.join(tmp, "world")
        start = time.perf_counter()
        simulate.simulate(simulate._parser().parse_args(
            ["--output", world, "--serps", str(args.serps), "--items", str(args.items), "--no-images"]))
        gen_seconds = time.perf_counter() - start
        logs = os.path.join(world, "logs.jsonl")
        size_mib = os.path.getsize(logs) / 2 ** 20
        results = {"plain": _spawn("plain", logs, os.path.join(tmp, "plain"))}
        for mode in args.modes.split(","):
            results[mode] = _spawn(mode, logs, os.path.join(tmp, mode))
            print(f"# {mode}: {results[mode]['seconds']:.1f}s, {args.serps / results[mode]['seconds']:.0f} SERPs/s, "
                  f"peak RSS {results[mode]['rss_mib']:.0f} MiB", file=sys.stderr)
        windows = {r["windows"] for r in results.values()}
        if len(windows) != 1:
            raise SystemExit(f"bench_collect: runs disagree on the number of windows: "
                             f"{ {k: r['windows'] for k, r in results.items()} }")
        beam_modes = [m for m in results if m != "plain"]
        best = min(beam_modes, key=lambda m: results[m]["seconds"])
        fields = {
            "bench": "collect", "serps": args.serps, "log_mib": round(size_mib, 1), "windows": windows.pop(),
            "generate_s": round(gen_seconds, 1), "best_mode": best,
            "beam_serps_per_s": round(args.serps / results[best]["seconds"]),
            "plain_serps_per_s": round(args.serps / results["plain"]["seconds"]),
        }
        for mode in beam_modes:
            fields[f"{mode}_serps_per_s"] = round(args.serps / results[mode]["seconds"])
            fields[f"{mode}_peak_rss_mib"] = round(results[mode]["rss_mib"])
        fields["beam_vs_plain"] = round(fields["beam_serps_per_s"] / fields["plain_serps_per_s"], 2)
        fields["ok"] = "true"
        print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
