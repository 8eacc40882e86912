"""An offline marketplace: product photos of known quality, and search logs whose clicks may depend on it.

The paper's pipeline needs search logs and item photos that nobody here can
share, so the simulator makes a small world where the truth is known:

* **Items.** Each item is one of the product kinds that ``scoring.photos``
  draws (bag, shoe, bottle, box, shirt); the kind is its category. Its photo
  is drawn with a random framing (clutter, object scale, off-centre) and
  0-2 random distortions (blur, noise, jpeg, under/over-exposure, low
  resolution) at random levels. Its latent **quality** is

      quality = prod_k (1 - 0.7 * level_k)            # each distortion
                * (1 - 0.35 * clutter)                 # busy background
                * (1 - 0.30 * off_center)              # product drifting to an edge
                * (1 - 0.50 * (1 - object_scale))      # product too small in the frame

  so a clean, centred, frame-filling studio shot is 1.0 and every flaw
  multiplies it down. Each item also has a **relevance** in [0.2, 1] to its
  category's queries and a lognormal **price** around its category's base.
* **Searches.** Each SERP picks a platform, a category and one of its query
  strings, a target price (some listing's price) and ranks the category's
  items by ``relevance - 4 * |log(price / target)| + noise``: a relevance
  ranker that shows similar-price neighbourhoods, blind to image quality.
  Each shown item logs the engine's ``score`` (``exp`` of that ranking
  score, as float32: a text ``relevance_score`` ``exp(relevance + noise)``
  times a price-proximity factor ``exp(-4 |log(price / target)|)``), so
  ``rerank-eval`` can replay the SERP under a boosting formula.
* **Clicks.** An examination model: position ``p`` is looked at with
  probability ``1 / log2(1 + p)``; a looked-at item is clicked with
  probability ``sigmoid(intercept + relevance_effect * (2 r - 1) +
  quality_effect * (2 q - 1))``. ``--quality-effect 0`` is the null world
  (Hypothesis 1 false). Likes and purchases happen only after a click, with
  probabilities that rise with relevance and (scaled by the same
  quality effect) quality.

Timestamps are spread uniformly over ``--days`` from ``--start`` so a CTR
cutoff inside the period splits history from evaluation. The world is
deterministic for a seed: parameters come from one generator, each photo
from its own generator seeded by (seed, item index), so ``--no-images``
writes the very same logs without drawing a pixel.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from scoring.photos import DEGRADATIONS, PRODUCT_KINDS

# Query strings per category: several phrasings of one intent, as real logs have.
QUERY_TEMPLATES = ("{kind}", "{kind} used", "vintage {kind}", "{kind} brand new", "cheap {kind}")
BASE_PRICE = {"bag": 4000.0, "shoe": 3500.0, "bottle": 1200.0, "box": 800.0, "shirt": 2000.0}
PLATFORMS = ("web", "ios", "android")
PLATFORM_WEIGHTS = (0.3, 0.35, 0.35)


def item_quality(degradations: dict[str, float], clutter: float, off_center: float, object_scale: float) -> float:
    """The documented latent-quality formula (see the module docstring)."""
    q = 1.0
    for level in degradations.values():
        q *= 1.0 - 0.7 * level
    q *= 1.0 - 0.35 * clutter
    q *= 1.0 - 0.30 * off_center
    q *= 1.0 - 0.50 * (1.0 - object_scale)
    return float(min(1.0, max(0.0, q)))


def make_items(rng: np.random.Generator, n: int) -> list[dict]:
    """Latent item parameters (no pixels): category, photo recipe, quality, relevance, price."""
    items = []
    for i in range(n):
        kind = PRODUCT_KINDS[i % len(PRODUCT_KINDS)]  # balanced categories
        n_deg = int(rng.choice([0, 1, 2], p=[0.35, 0.45, 0.20]))
        kinds = rng.choice(len(DEGRADATIONS), size=n_deg, replace=False)
        degradations = {DEGRADATIONS[int(k)]: round(float(rng.uniform(0.2, 1.0)), 3) for k in sorted(kinds)}
        clutter = 0.0 if rng.random() < 0.6 else round(float(rng.uniform(0.2, 1.0)), 3)
        off_center = 0.0 if rng.random() < 0.6 else round(float(rng.uniform(0.2, 1.0)), 3)
        object_scale = round(float(rng.uniform(0.45, 1.0)), 3)
        price = float(max(300, round(BASE_PRICE[kind] * math.exp(rng.normal(0.0, 0.6)), -1)))
        items.append({
            "item_id": f"item-{i:06d}", "index": i, "category": kind,
            "degradations": degradations, "clutter": clutter, "off_center": off_center, "object_scale": object_scale,
            "quality": round(item_quality(degradations, clutter, off_center, object_scale), 4),
            "relevance": round(float(rng.uniform(0.2, 1.0)), 4),
            "price": price,
        })
    return items


def render_item(item: dict, seed: int, size: int):
    """The item's photo: drawn from its own generator, then degraded in a fixed order."""
    from scoring.photos import degrade, draw_product
    rng = np.random.default_rng([seed, item["index"]])
    img = draw_product(rng, size, kind=item["category"], clutter=item["clutter"],
                       object_scale=item["object_scale"], off_center=item["off_center"])
    for kind in DEGRADATIONS:
        if kind in item["degradations"]:
            img = degrade(img, kind, item["degradations"][kind], seed=seed * 1_000_003 + item["index"])
    return img


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_serps(rng: np.random.Generator, items: list[dict], urls: list[str], n_serps: int, *,
                   serp_size: int, start: datetime, days: float, quality_effect: float,
                   relevance_effect: float, intercept: float, rank_noise: float) -> Iterator[dict]:
    """Yield SERPs in time order (the search-log format of the contracts)."""
    by_kind = {kind: np.array([it["index"] for it in items if it["category"] == kind]) for kind in PRODUCT_KINDS}
    quality = np.array([it["quality"] for it in items])
    relevance = np.array([it["relevance"] for it in items])
    log_price = np.log(np.array([it["price"] for it in items]))
    prices = [it["price"] for it in items]
    offsets = np.sort(rng.uniform(0.0, days * 86400.0, size=n_serps))
    examine = 1.0 / np.log2(1.0 + np.arange(1, serp_size + 1))
    for j in range(n_serps):
        kind = PRODUCT_KINDS[int(rng.integers(len(PRODUCT_KINDS)))]
        pool = by_kind[kind]
        if len(pool) == 0:
            continue
        query = QUERY_TEMPLATES[int(rng.integers(len(QUERY_TEMPLATES)))].format(kind=kind)
        platform = PLATFORMS[int(rng.choice(len(PLATFORMS), p=PLATFORM_WEIGHTS))]
        target = log_price[pool[int(rng.integers(len(pool)))]]
        noise = rng.normal(0.0, rank_noise, len(pool))
        price_gap = np.abs(log_price[pool] - target)
        rank = relevance[pool] - 4.0 * price_gap + noise
        k = min(serp_size, len(pool))
        top = np.argsort(-rank, kind="stable")[:k]
        shown = pool[top]
        # What the engine logged: exp(rank) as Elasticsearch computes it, a float32 text-relevance score
        # times a double price-proximity factor (an outer function_score multiplying).
        relevance_score = np.exp(relevance[shown] + noise[top]).astype(np.float32)
        engine_score = (relevance_score.astype(np.float64) * np.exp(-4.0 * price_gap[top])).astype(np.float32)
        attract = _sigmoid(intercept + relevance_effect * (2 * relevance[shown] - 1)
                           + quality_effect * (2 * quality[shown] - 1))
        clicked = rng.random(k) < examine[:k] * attract
        q_term = quality_effect * (2 * quality[shown] - 1)
        liked = clicked & (rng.random(k) < _sigmoid(-1.0 + relevance[shown] + 0.5 * q_term))
        purchased = clicked & (rng.random(k) < _sigmoid(-2.5 + 1.5 * relevance[shown] + 0.5 * q_term))
        ts = start + timedelta(seconds=float(offsets[j]))
        yield {
            "serp_id": f"serp-{j:07d}", "query": query, "platform": platform,
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "items": [{"item_id": items[i]["item_id"], "position": p + 1, "price": prices[i], "image_url": urls[i],
                       "clicked": bool(clicked[p]), "liked": bool(liked[p]), "purchased": bool(purchased[p]),
                       "score": float(engine_score[p]), "relevance_score": float(relevance_score[p])}
                      for p, i in enumerate(shown.tolist())],
        }


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True,
                   help="directory for images/, logs.jsonl, quality.jsonl and items.jsonl (backfill's input)")
    p.add_argument("--serps", type=int, default=2000, help="number of searches (SERPs) to log")
    p.add_argument("--items", type=int, default=300, help="number of listings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serp-size", type=int, default=20, help="items shown per search")
    p.add_argument("--quality-effect", type=float, default=2.0,
                   help="how much image quality moves the click logit (0 = null world: quality does not matter)")
    p.add_argument("--relevance-effect", type=float, default=1.5, help="how much relevance moves the click logit")
    p.add_argument("--click-intercept", type=float, default=-2.0, help="click logit of an average item")
    p.add_argument("--rank-noise", type=float, default=0.3, help="noise in the ranker's score (more = more shuffling)")
    p.add_argument("--start", default="2024-01-01T00:00:00+00:00", help="ISO timestamp of the first search")
    p.add_argument("--days", type=float, default=28.0, help="searches are spread uniformly over this many days")
    p.add_argument("--image-size", type=int, default=256, help="photo side in pixels (small keeps CI fast)")
    p.add_argument("--no-images", action="store_true",
                   help="write logs and quality.jsonl only (same logs; image_url points where the photo would be)")
    return p


def simulate(args: argparse.Namespace) -> dict:
    """Write the world to ``args.output``; returns a small summary."""
    if args.items < len(PRODUCT_KINDS) or args.serps < 0 or args.serp_size < 1:
        raise UsageError(f"need --items >= {len(PRODUCT_KINDS)} (one per category), "
                         f"--serps >= 0 and --serp-size >= 1")
    start = datetime.fromisoformat(args.start)
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start
    out = os.path.abspath(args.output)
    image_dir = os.path.join(out, "images")
    os.makedirs(image_dir, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    items = make_items(rng, args.items)
    urls = ["file://" + os.path.join(image_dir, f"{it['item_id']}.jpg") for it in items]
    if not args.no_images:
        for it in items:
            render_item(it, args.seed, args.image_size).save(os.path.join(image_dir, f"{it['item_id']}.jpg"),
                                                             quality=92)
    with open(os.path.join(out, "quality.jsonl"), "w") as fh:
        for it, url in zip(items, urls):
            fh.write(json.dumps({"item_id": it["item_id"], "image_url": url, "quality": it["quality"],
                                 "degradations": it["degradations"], "clutter": it["clutter"],
                                 "off_center": it["off_center"], "object_scale": it["object_scale"],
                                 "category": it["category"], "relevance": it["relevance"],
                                 "price": it["price"]}) + "\n")
    # The listings as item records, the input of `imagescore backfill --source files`: listed when the log starts.
    with open(os.path.join(out, "items.jsonl"), "w") as fh:
        for it, url in zip(items, urls):
            fh.write(json.dumps({"id": it["item_id"], "image_urls": [url], "created_at": start.isoformat(),
                                 "price": it["price"], "title": it["category"]}) + "\n")
    n = clicks = 0
    with open(os.path.join(out, "logs.jsonl"), "w") as fh:
        for serp in generate_serps(rng, items, urls, args.serps, serp_size=args.serp_size, start=start,
                                   days=args.days, quality_effect=args.quality_effect,
                                   relevance_effect=args.relevance_effect, intercept=args.click_intercept,
                                   rank_noise=args.rank_noise):
            fh.write(json.dumps(serp, separators=(",", ":")) + "\n")
            n += 1
            clicks += sum(item["clicked"] for item in serp["items"])
    summary = {"output": out, "items": len(items), "serps": n, "clicks": clicks,
               "images": 0 if args.no_images else len(items), "seed": args.seed,
               "quality_effect": args.quality_effect, "start": start.isoformat(),
               "end": (start + timedelta(days=args.days)).isoformat(),
               "seconds": round(time.perf_counter() - t0, 2)}
    with open(os.path.join(out, "simulation.json"), "w") as fh:
        json.dump({**summary, "args": vars(args)}, fh, indent=2, sort_keys=True)
    return summary


def run(argv: list[str] | None = None) -> int:
    summary = simulate(_parser().parse_args(argv))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    job_main("python -m training.simulate", run)
