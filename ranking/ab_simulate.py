"""``imagescore simulate-ab``: a simulated experiment to check ``ab-readout`` against a known truth.

Users arrive on web, iOS or Android and are randomised to variants by the
configured split. Each user has a purchase rate ``lambda ~ Gamma(shape,
base / shape)``; a share of purchases goes through search, and the boost
multiplies only those by the variant's true lift *on that platform* (the
paper saw gains on web and losses on mobile). Transactions are Poisson;
a conversion is at least one transaction. Pre-exposure columns
(``<metric>_pre``) come from the same rate before the experiment, for CUPED.
Some users come back on another platform (extra exposure rows); they count
where they were first exposed. ``--srm-loss`` loses that share of one
variant's users (a logging bug), which the SRM check must catch.
``truth.json`` holds the true ATPU ratios per platform.
"""
from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from ranking.ab import name_number_pairs

if TYPE_CHECKING:
    import pyarrow as pa

PLATFORMS = ("web", "ios", "android")


def _pairs(text: str, what: str) -> dict[str, float]:
    try:
        return name_number_pairs(text, f"--{what}", "treatment=0.02")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def simulate(users: int, split: dict[str, float], lifts: dict[str, dict[str, float]], *, seed: int = 0,
             platform_shares: dict[str, float] | None = None, base_rate: float = 0.3, shape: float = 0.5,
             search_share: float = 0.6, return_rate: float = 0.2, srm_loss: dict[str, float] | None = None) -> pa.Table:
    """Per-exposure rows in the ``ab-readout`` input format."""
    import pyarrow as pa  # imported when a command runs, not for --help
    rng = np.random.default_rng(seed)
    names = list(split)
    shares = np.array([split[n] for n in names], np.float64)
    variant = rng.choice(len(names), size=users, p=shares / shares.sum())
    pshares = platform_shares or {"web": 0.3, "ios": 0.35, "android": 0.35}
    plats = list(pshares)
    platform = rng.choice(len(plats), size=users, p=np.array(list(pshares.values())) / sum(pshares.values()))
    rate = rng.gamma(shape, base_rate / shape, users)
    lift = np.ones(users)
    for v, name in enumerate(names):
        for p, plat in enumerate(plats):
            lift[(variant == v) & (platform == p)] = lifts.get(name, {}).get(plat, 1.0)
    via = rng.poisson(rate * search_share * lift)
    other = rng.poisson(rate * (1 - search_share))
    via_pre = rng.poisson(rate * search_share)
    other_pre = rng.poisson(rate * (1 - search_share))
    keep = np.ones(users, bool)
    for name, loss in (srm_loss or {}).items():
        keep &= ~((variant == names.index(name)) & (rng.random(users) < loss))
    start = datetime(2024, 3, 1, tzinfo=UTC)
    exposed = rng.uniform(0, 14 * 86400, users)
    ids = np.array([f"u{i:08d}" for i in range(users)], dtype=object)
    base = {
        "user_id": ids, "variant": np.array(names, dtype=object)[variant],
        "platform": np.array(plats, dtype=object)[platform],
        "exposed_at": np.array([(start + timedelta(seconds=float(s))).isoformat() for s in exposed], dtype=object),
        "converted": ((via + other) > 0).astype(np.int64), "transactions": (via + other).astype(np.int64),
        "converted_via_search": (via > 0).astype(np.int64), "transactions_via_search": via.astype(np.int64),
        "converted_pre": ((via_pre + other_pre) > 0).astype(np.int64),
        "transactions_pre": (via_pre + other_pre).astype(np.int64),
        "converted_via_search_pre": (via_pre > 0).astype(np.int64),
        "transactions_via_search_pre": via_pre.astype(np.int64),
    }
    first = {k: v[keep] for k, v in base.items()}
    # Returning users: a later exposure on another platform with no new activity.
    back = keep & (rng.random(users) < return_rate)
    later = {k: v[back] for k, v in base.items()}
    later["platform"] = np.array(plats, dtype=object)[(platform[back] + 1) % len(plats)]
    later["exposed_at"] = np.array([(start + timedelta(seconds=float(s) + 3600)).isoformat()
                                    for s in exposed[back]], dtype=object)
    for k in later:
        if k.startswith(("converted", "transactions")):
            later[k] = np.zeros(int(back.sum()), np.int64)
    return pa.table({k: np.concatenate([first[k], later[k]]) for k in base})


def truth(split: dict[str, float], lifts: dict[str, dict[str, float]], search_share: float) -> dict:
    """True variant/control ATPU ratios per platform (expectations of the simulation)."""
    out = {}
    for name in split:
        for plat in PLATFORMS:
            lift = lifts.get(name, {}).get(plat, 1.0)
            out[f"{name}/{plat}"] = {"atpu_via_search": lift, "atpu": search_share * lift + 1 - search_share}
    return out


def write(table: pa.Table, path: str) -> None:
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq
        pq.write_table(table, path)
    elif lower.endswith(".csv"):
        import pyarrow.csv as pcsv
        pcsv.write_csv(table, path)
    elif lower.endswith(".jsonl"):
        with open(path, "w") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row) + "\n")
    else:
        raise UsageError(f"--output {path!r}: name it .parquet, .csv or .jsonl")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore simulate-ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="rows file: .parquet, .csv or .jsonl (truth.json beside it)")
    p.add_argument("--users", type=int, default=200_000, help="simulated users")
    p.add_argument("--split", default="control=50,treatment=50", help="variant=share pairs; the first is control")
    p.add_argument("--lift", default="web=1.04,ios=0.99,android=0.98",
                   help="true multiplicative lift of via-search transactions per platform, for every non-control "
                        "variant (VARIANT:platform=x to set one variant)")
    p.add_argument("--srm-loss", default="", help="lose this share of a variant's users, e.g. treatment=0.02")
    p.add_argument("--search-share", type=float, default=0.6, help="share of purchases that go through search")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    split = _pairs(args.split, "split")
    if len(split) < 2 or any(v <= 0 for v in split.values()) or args.users < 1:
        raise UsageError("--split needs at least two variants with positive shares, --users >= 1")
    control, *treated = split
    lifts: dict[str, dict[str, float]] = {v: {} for v in treated}
    for part in args.lift.split(","):
        key, _, value = part.partition("=")
        variant, _, plat = key.rpartition(":")
        if plat not in PLATFORMS or (variant and variant not in treated):
            raise UsageError(f"--lift {part!r}: expected [VARIANT:]PLATFORM=ratio with platform in {PLATFORMS}")
        for v in [variant] if variant else treated:
            lifts[v][plat] = float(value)
    loss = _pairs(args.srm_loss, "srm-loss") if args.srm_loss else {}
    if set(loss) - set(split):
        raise UsageError(f"--srm-loss names unknown variants {sorted(set(loss) - set(split))}")
    table = simulate(args.users, split, lifts, seed=args.seed, search_share=args.search_share, srm_loss=loss)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write(table, args.output)
    with open(os.path.join(os.path.dirname(os.path.abspath(args.output)), "truth.json"), "w") as fh:
        json.dump({"control": control, "ratios": truth(split, lifts, args.search_share), "split": split,
                   "srm_loss": loss}, fh, indent=1)
    print(json.dumps({"output": os.path.abspath(args.output), "rows": table.num_rows, "users": args.users}))
    return 0


if __name__ == "__main__":
    job_main("python -m ranking.ab_simulate", run)
