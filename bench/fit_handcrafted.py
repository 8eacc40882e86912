"""Fit the handcrafted scorer's weights and its calibration on the tuning split; print the constants.

Everything here uses only the tuning images: the tuning photos
(:func:`scoring.photos.tune_photos`: scikit-image's photos and listing shots of
three tuning objects) at graded distortions, drawn products clean vs degraded,
and the listing pairs of the tuning objects and textures
(:data:`scoring.photos.TUNE_OBJECTS`, :data:`~scoring.photos.TUNE_TEXTURES`).
The held-out split, photos from scikit-learn, matplotlib and PyWavelets plus
two objects and three textures never used to fit, is what
``bench/bench_listing.py`` and ``bench/bench_handcrafted_spearman.py --split
heldout`` report. The earlier held-out split had been looked at while
designing features, so it was retired into the tuning split.

1. Weights: the logit is linear in the weights given the terms
   (:func:`scoring.handcrafted.terms`), so ordering every pair right is a
   pairwise logistic regression on term differences, with every weight >= 0
   (each term is signed so that larger is better) and an L2 pull toward the
   previous hand-set weights, so a term keeps its meaning.
2. Calibration: knots of a monotone piecewise-linear map of the fitted logit,
   placing the tuning images' logit quantiles at evenly spaced scores in
   [0.03, 0.97].

It prints ``WEIGHTS`` and ``CALIBRATION``; ``--write`` also puts them into
scoring/handcrafted.py (bump ``model_id`` when the scores change).

    .venv/bin/python bench/fit_handcrafted.py [--cache /tmp/hc_features.npz] [--write]
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_handcrafted_spearman import DISTORTIONS, LEVELS, distorted, png_bytes  # noqa: E402
from bench_listing import jpeg_crop  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from scoring.handcrafted import HandcraftedScorer, terms  # noqa: E402
from scoring.photos import TUNE_OBJECTS, TUNE_TEXTURES, degrade, draw_product, listing_pairs, tune_photos  # noqa: E402
from transforms.decode import decode_image  # noqa: E402

#: how much the listing pairs count against the distortion pairs
LISTING_SHARE = 0.35
PRIOR = 0.1            # L2 pull toward the hand-set starting weights (PRIOR_WEIGHTS)
#: hand-set starting point: v1's weights for its terms, a judgement for the new ones (and for v4's log blockiness)
PRIOR_WEIGHTS = {
    "bias": 3.0, "effective_resolution": 2.4, "sharpness": 1.2, "noise": 0.6, "blockiness": 1.0, "highlight": 7.0,
    "dark": 5.5, "shadow": 5.0, "clipped": 2.0, "contrast": 2.0, "colourfulness": 1.25,
    "background_clutter": 2.0, "background_spread": 2.0, "subject_extent": 2.0, "subject_offset": 5.0,
    "subject_dark": 5.0, "subject_washed": 5.0, "subject_clipped": 3.0, "background_dim": 10.0,
    "subject_small": 8.0,
}
KNOTS = 9


def feature_matrix(model, images: list) -> tuple[np.ndarray, list[str]]:
    """Features of every tuning image (cached: the fit itself only recomputes the cheap terms)."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            batch = torch.from_numpy(np.stack([
                jpeg_crop(img, model.input_size) if fmt == "jpeg" else decode_image(png_bytes(img), model.input_size)
                for img, fmt in images[start:start + 16]]))
            f = model.features(batch)
            rows.append(np.stack([f[name].numpy() for name in sorted(f)], axis=1))
    return np.concatenate(rows), sorted(f)


def term_matrix(features: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    t = terms({name: torch.from_numpy(features[:, i]) for i, name in enumerate(names)})
    return np.stack([t[name].double().numpy() for name in sorted(t)], axis=1), sorted(t)


def tuning_set() -> tuple[list, list[tuple[int, int, str]]]:
    """``(image, encoding)`` and (better index, worse index, group) pairs of the tuning split.

    Encoded as the benchmarks do: distortions as PNG, listing shots as JPEG.
    """
    images, pairs = [], []

    def add(img, fmt: str = "png") -> int:
        images.append((img, fmt))
        return len(images) - 1

    for _name, photo in tune_photos():
        for kind in DISTORTIONS:
            idx = [add(distorted(photo, kind, level)) for level in LEVELS]
            pairs += [(idx[i], idx[j], "distortion") for i in range(len(idx)) for j in range(i + 1, len(idx))]
    for seed in range(6):
        clean = draw_product(np.random.default_rng(seed), 512)
        c = add(clean)
        pairs += [(c, add(degrade(clean, kind, 1.0, seed=seed)), "distortion") for kind in DISTORTIONS[:6]]
    for _kind, better, worse, _what in listing_pairs(TUNE_OBJECTS, TUNE_TEXTURES):
        pairs.append((add(better, "jpeg"), add(worse, "jpeg"), "listing"))
    return images, pairs


def fit_weights(matrix: np.ndarray, names: list[str], pairs) -> dict[str, float]:
    diff = np.stack([matrix[b] - matrix[w] for b, w, _ in pairs])
    share = np.array([LISTING_SHARE if g == "listing" else 1 - LISTING_SHARE for _, _, g in pairs])
    counts = {g: sum(1 for *_, h in pairs if h == g) for g in ("listing", "distortion")}
    sample_weight = share / np.array([counts[g] for *_, g in pairs])
    prior = np.array([PRIOR_WEIGHTS[name] for name in names])
    scale = np.abs(diff).mean(0) + 1e-6          # the prior pull per term, in units of that term's typical gap

    def loss(w):
        margin = diff @ w
        value = float(sample_weight @ np.logaddexp(0.0, -margin)) + PRIOR * float((((w - prior) * scale) ** 2).sum())
        grad = -(sample_weight / (1 + np.exp(np.clip(margin, -50, 50)))) @ diff + 2 * PRIOR * (w - prior) * scale ** 2
        return value, grad

    result = minimize(loss, prior, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * len(names))
    return dict(zip(names, result.x.tolist()))


def fit_calibration(logits: np.ndarray) -> list[tuple[float, float]]:
    qs = np.linspace(0.0, 1.0, KNOTS)
    xs = np.quantile(logits, qs)
    ys = np.log((0.03 + 0.94 * qs) / (1 - (0.03 + 0.94 * qs)))
    knots, last = [], -np.inf
    for x, y in zip(xs, ys):
        if x > last + 1e-3:   # strictly increasing knots
            knots.append((round(float(x), 4), round(float(y), 4)))
            last = x
    return knots


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="npz file to keep the feature matrix in between runs")
    parser.add_argument("--write", action="store_true", help="write the constants into scoring/handcrafted.py")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    images, pairs = tuning_set()
    if args.cache and os.path.exists(args.cache):
        saved = np.load(args.cache)
        features, names = saved["features"], [str(n) for n in saved["names"]]
    else:
        features, names = feature_matrix(HandcraftedScorer().eval(), images)
        if args.cache:
            np.savez(args.cache, features=features, names=np.array(names))
    matrix, names = term_matrix(features, names)
    names_all = names
    weights = fit_weights(matrix, names_all, pairs)
    w = np.array([weights[n] for n in names_all])
    right = {g: np.mean([matrix[b] @ w > matrix[l] @ w for b, l, h in pairs if h == g]) for g in ("listing", "distortion")}
    bias = PRIOR_WEIGHTS["bias"]
    logits = bias + matrix @ w
    calibration = fit_calibration(logits)
    print(f"# tuning pairs right: listing {right['listing']:.3f}, distortion {right['distortion']:.3f} "
          f"({len(images)} images, {len(pairs)} pairs)")
    block = "WEIGHTS = {\n" + f'    "bias": {bias},\n' + "".join(
        f'    "{name}": {weights[name]:.4g},\n' for name in names_all) + "}"
    line = f"CALIBRATION = {tuple(calibration)}"
    print(block)
    print(line)
    if args.write:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scoring", "handcrafted.py")
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        source = re.sub(r"^WEIGHTS = \{\n.*?^\}", lambda _: block, source, count=1, flags=re.M | re.S)
        source = re.sub(r"^CALIBRATION = .*$", lambda _: line, source, count=1, flags=re.M)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(source)
        print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
