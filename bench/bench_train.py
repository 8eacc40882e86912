"""Training throughput: score each image once per batch (ours) vs. the head on both sides of every pair (naive).

Same synthetic data (SERP windows of 8 images, pairs from ``make_pairs``,
512-d embeddings like CLIP ViT-B/16), same window-grouped batches of 128
pairs, same head, loss and AdamW step; only the scoring differs. Rounds
alternate between the two so machine load hits both alike; the median
round counts. One torch thread by default (``--threads``). Prints one RESULT line.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from scoring.head import HeadConfig, ScoreHead  # noqa: E402
from training.losses import pairwise_focal_loss  # noqa: E402
from training.pairs import make_pairs  # noqa: E402
from training.train import make_optimizer, score_pairs, score_pairs_naive, window_batches  # noqa: E402


def synthetic_pairs(windows: int, images: int, rng: np.random.Generator):
    winners, losers, groups = [], [], []
    for g in range(windows):
        rows = np.arange(g * images, (g + 1) * images)
        labels = {int(r): float(v) for r, v in zip(rows, rng.integers(0, 11, images) / 10)}
        clicked = int(max(rows, key=lambda r: labels[int(r)] + rng.normal(0, 0.3)))
        for w, l in make_pairs(labels, clicked):
            winners.append(w)
            losers.append(l)
            groups.append(g)
    return np.array(winners), np.array(losers), np.array(groups)


def epoch(scorer, head, optimizer, X, W, L, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        index = torch.as_tensor(batch)
        s_w, s_l = scorer(head, X, W[index], L[index])
        loss = pairwise_focal_loss(s_w, s_l)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=300)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--target", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 keeps timings steady on a shared machine (same for both sides)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    W, L, groups = synthetic_pairs(args.windows, 8, rng)
    X = torch.nn.functional.normalize(torch.randn(args.windows * 8, args.dim), dim=-1)
    W, L = torch.as_tensor(W), torch.as_tensor(L)
    batches = window_batches(groups, 128, rng)
    pairs = len(W)
    rows_ours = sum(len(torch.unique(torch.cat([W[torch.as_tensor(b)], L[torch.as_tensor(b)]]))) for b in batches)
    runs = {}
    for name, scorer in (("ours", score_pairs), ("naive", score_pairs_naive)):
        head = ScoreHead(HeadConfig(input_dim=args.dim))
        runs[name] = (scorer, head, make_optimizer(head, 1e-3, 0.01), [])
        epoch(scorer, head, runs[name][2], X, W, L, batches[:3])  # warm-up
    for _ in range(args.rounds):
        for scorer, head, optimizer, times in runs.values():
            times.append(epoch(scorer, head, optimizer, X, W, L, batches))
    ours = pairs / statistics.median(runs["ours"][3])
    naive = pairs / statistics.median(runs["naive"][3])
    ratio = ours / naive
    print(f"# {pairs} pairs in {len(batches)} batches; head rows per epoch: ours {rows_ours}, naive {2 * pairs}; "
          f"dim {args.dim}, torch threads {torch.get_num_threads()}", file=sys.stderr)
    print(f"RESULT bench=train ours_pairs_per_s={ours:.0f} naive_pairs_per_s={naive:.0f} ratio={ratio:.2f} "
          f"target={args.target} ok={'true' if ratio >= args.target else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
