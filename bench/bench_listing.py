"""How the handcrafted score orders listing-style photo pairs of real objects, as a buyer would.

Objects cut out of real photos bundled in installed wheels are composited on
a plain studio sweep or on busy real textures, at different sizes, exposures,
focus and placement (:func:`scoring.photos.listing_pairs`). Each pair is
JPEG-encoded (quality 92, as listings arrive), decoded by the production
decoder and scored; a pair counts as right only when the better shot scores
strictly higher. The scorer was tuned on the ``tune`` split (scikit-image's
seven objects and six textures); the ``heldout`` split (two objects and three
textures from scikit-learn, matplotlib and scikit-image photos, never used
while designing or fitting) is what the README reports. Prints one RESULT
line per split and kind, and one per split overall.

    .venv/bin/python bench/bench_listing.py [--split tune|heldout|both] [--show-wrong]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scoring.handcrafted import HandcraftedScorer  # noqa: E402
from scoring.photos import (  # noqa: E402
    HELDOUT_OBJECTS,
    HELDOUT_TEXTURES,
    LISTING_PAIR_KINDS,
    TUNE_OBJECTS,
    TUNE_TEXTURES,
    listing_pairs,
)
from transforms.decode import decode_image  # noqa: E402

SPLITS = {"tune": (TUNE_OBJECTS, TUNE_TEXTURES), "heldout": (HELDOUT_OBJECTS, HELDOUT_TEXTURES)}
TARGET_OVERALL, TARGET_KIND = 0.90, 0.80
TARGET_KINDS = ("clutter", "size", "dim", "bright", "blur")  # the done-when; placement is reported too


def jpeg_crop(img, size: int, quality: int = 92) -> np.ndarray:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return decode_image(buffer.getvalue(), size)


def pair_scores(model, split: str) -> list[tuple[str, float, float, str]]:
    """``(kind, better score, worse score, what)`` for every pair of one split."""
    objects, textures = SPLITS[split]
    rows = []
    with torch.no_grad():
        for kind, better, worse, what in listing_pairs(objects, textures):
            batch = torch.from_numpy(np.stack([jpeg_crop(better, model.input_size), jpeg_crop(worse, model.input_size)]))
            hi, lo = model(batch).tolist()
            rows.append((kind, hi, lo, what))
    return rows


def report(split: str, rows, show_wrong: bool) -> bool:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, hi, lo, what in rows:
        by_kind[kind].append(hi > lo)
        if show_wrong and not hi > lo:
            print(f"# wrong {split} {kind:9s} {what}: better={hi:.3f} worse={lo:.3f}")
    ok = True
    for kind in LISTING_PAIR_KINDS:
        acc = float(np.mean(by_kind[kind]))
        target = kind in TARGET_KINDS
        ok &= (acc >= TARGET_KIND) or not target
        print(f"RESULT bench=listing split={split} kind={kind} pairs={len(by_kind[kind])} accuracy={acc:.3f} "
              f"target={TARGET_KIND if target else 'none'}")
    counted = [right for kind in TARGET_KINDS for right in by_kind[kind]]
    overall = float(np.mean(counted))
    ok &= overall >= TARGET_OVERALL
    print(f"RESULT bench=listing split={split} kind=all pairs={len(counted)} accuracy={overall:.3f} "
          f"target={TARGET_OVERALL} ok={str(ok).lower()}")
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("tune", "heldout", "both"), default="both")
    parser.add_argument("--show-wrong", action="store_true", help="print every pair ordered the wrong way")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model = HandcraftedScorer().eval()
    splits = ("tune", "heldout") if args.split == "both" else (args.split,)
    ok = all([report(split, pair_scores(model, split), args.show_wrong) for split in splits])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
