"""Benchmark: how long ``imagescore --help`` and every ``imagescore COMMAND --help`` take.

Help must answer without importing Beam, torch, transformers, elasticsearch or
matplotlib, which the commands need only when they run. Each help is timed in
a fresh subprocess (the console script when it is installed next to this
interpreter, else ``python imagescore.py``), best of ``--rounds``, and a
non-zero exit or empty output is a failure. Prints one line:

    RESULT bench=cli_help max_s=... slowest=... target_s=1.0 ok=true top_s=... demo_s=... backfill_s=... ...

The per-command fields are named after the command with ``-`` as ``_``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere

from imagescore import COMMANDS  # noqa: E402  (the command table: the console script imports nothing heavy)


def launcher() -> list[str]:
    """The ``imagescore`` console script beside this interpreter, or the module file run by it."""
    script = os.path.join(os.path.dirname(sys.executable), "imagescore")
    return [script] if os.path.exists(script) else [sys.executable, os.path.join(ROOT, "imagescore.py")]


def time_help(argv: list[str], rounds: int, env: dict[str, str]) -> float:
    """Best wall time of ``argv`` over ``rounds`` runs; raises when a run fails or prints nothing."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
        elapsed = time.perf_counter() - start
        if done.returncode != 0 or "usage:" not in done.stdout:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode} without a usage text:\n"
                               f"{done.stdout[-500:]}{done.stderr[-2000:]}")
        best = min(best, elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per command; the best one counts")
    parser.add_argument("--target", type=float, default=1.0, help="seconds every help must stay under")
    args = parser.parse_args(argv)

    # The checkout's modules, not whatever the installed console script would otherwise import.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    base = launcher()
    times = {"top": time_help([*base, "--help"], args.rounds, env)}
    for command in COMMANDS:
        times[command.replace("-", "_")] = time_help([*base, command, "--help"], args.rounds, env)
    slowest = max(times, key=times.__getitem__)
    ok = times[slowest] < args.target
    per_command = " ".join(f"{name}_s={seconds:.2f}" for name, seconds in times.items())
    print(f"RESULT bench=cli_help max_s={times[slowest]:.2f} slowest={slowest} target_s={args.target:g} "
          f"ok={str(ok).lower()} rounds={args.rounds} {per_command}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
