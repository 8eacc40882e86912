"""Decode + preprocess throughput: the production path against a naive full decode and resize.

Generates 1024-px JPEG listing photos (4:3 and 3:4, quality 90), then times
``transforms.decode.decode_image`` (JPEG draft mode, resampling only the
central square) against the obvious code: ``Image.open(...).convert("RGB")``
at full size, resize the short side, crop. Both produce the same
``size x size`` uint8 crop. Prints one RESULT line.

    .venv/bin/python bench/bench_decode.py [--size 384] [--images 40] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from scoring.photos import draw_product  # noqa: E402
from transforms.decode import decode_image  # noqa: E402

TARGET_RATIO = 2.0


def make_jpegs(count: int) -> list[bytes]:
    blobs = []
    for i in range(count):
        img = draw_product(np.random.default_rng(i), 1024, clutter=0.5 * (i % 2))
        img = img.crop((0, 128, 1024, 896)) if i % 2 else img.crop((128, 0, 896, 1024))  # 1024x768 / 768x1024
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


def naive(data: bytes, size: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                     Image.Resampling.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def throughput(fn, blobs: list[bytes], size: int, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for data in blobs:
            fn(data, size)
        best = max(best, len(blobs) / (time.perf_counter() - start))
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="model input side (handcrafted-v4: 384)")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    blobs = make_jpegs(args.images)
    ours_out, naive_out = decode_image(blobs[0], args.size), naive(blobs[0], args.size)
    diff = float(np.abs(ours_out.astype(np.float32) - naive_out).mean())
    ours = throughput(decode_image, blobs, args.size, args.rounds)
    base = throughput(naive, blobs, args.size, args.rounds)
    ratio = ours / base
    ok = ratio >= TARGET_RATIO
    print(f"RESULT bench=decode size={args.size} images={len(blobs)} ours_img_per_s={ours:.1f} "
          f"naive_img_per_s={base:.1f} ratio={ratio:.2f} mean_abs_diff={diff:.2f} "
          f"target={TARGET_RATIO} ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
