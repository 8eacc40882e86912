"""The default scorer's throughput beside decoding and a numpy anchor, on the demo photos, in one run.

Writes the demo catalog's photos (:func:`pipelines.catalog.build_catalog`),
decodes each with the production decoder (``transforms.decode.decode_image``,
to the model's 384 px crop), then scores the crops with the default model
(``handcrafted``) at batch 1, 8 and 64. Beside them, on the same crops, an
anchor: a plain numpy Laplacian variance plus mean brightness, the cheapest
sharpness-and-exposure score there is. One torch thread.

Throughput is images per CPU-second of this process (user + system time, so
page faults count): one thread's work per core, which the load of a shared
machine moves far less than wall time. Rounds alternate between the timed
paths and each path keeps its best round, so all of them see the same
machine. Peak memory is the process's resident high-water mark while one
batch size is scored (reset before each where Linux allows it).

    .venv/bin/python bench/bench_scorer.py [--images 96] [--rounds 3] [--model handcrafted]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.catalog import build_catalog  # noqa: E402
from scoring.model import load_model  # noqa: E402
from transforms.decode import decode_image  # noqa: E402

BATCHES = (1, 8, 64)
TARGET_IMG_PER_S = 100.0   # per core, at batch 8 and 64
TARGET_RATIO = 2.5         # decode throughput / scorer throughput, at batch 8 and 64


def demo_photos(count: int) -> list[bytes]:
    """The encoded photos of the demo catalog's scored items (products, sample photos, listing shots)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entries = build_catalog(root, "http://127.0.0.1:9")   # URLs are only written into records
        blobs = []
        for entry in entries:
            if entry.expect == "scored":
                url = json.loads(entry.record)["image_urls"][0]
                blobs.append((root / "images" / url.rsplit("/", 1)[1]).read_bytes())
    # Spread the pick over the catalog's kinds rather than taking only its first products.
    picks = np.linspace(0, len(blobs) - 1, min(count, len(blobs))).round().astype(int)
    return [blobs[i] for i in picks]


def anchor(crop: np.ndarray) -> float:
    """Laplacian variance plus brightness of a uint8 HWC crop: the numpy baseline a scorer is compared with."""
    y = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(np.log(lap.var() + 1e-6) + y.mean())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """VmHWM from ``/proc/self/status``; ``ru_maxrss`` where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], int]) -> float:
    """Images per CPU-second of one call of ``fn`` (which returns how many images it handled)."""
    start = cpu_seconds()
    images = fn()
    return images / max(cpu_seconds() - start, 1e-9)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="demo photos to time (spread over the catalog)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each path keeps its best")
    parser.add_argument("--model", default="handcrafted", help="model spec (scoring.model.load_model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    blobs = demo_photos(args.images)
    model = load_model(args.model, "cpu")
    size = int(model.input_size)
    crops = np.stack([decode_image(blob, size) for blob in blobs])
    batch = torch.from_numpy(crops)

    def decode() -> int:
        for blob in blobs:
            decode_image(blob, size)
        return len(blobs)

    def numpy_anchor() -> int:
        for crop in crops:
            anchor(crop)
        return len(crops)

    def scorer(batch_size: int) -> Callable[[], int]:
        def run() -> int:
            with torch.inference_mode():
                for start in range(0, len(batch), batch_size):
                    model(batch[start:start + batch_size])
            return len(batch)
        return run

    with torch.inference_mode():
        model(batch[:8])   # first-call set-up (allocator, BLAS) is not throughput
    best: dict[str, float] = {}
    peaks: dict[int, float] = {}
    for _ in range(args.rounds):
        for name, fn in (("decode", decode), ("anchor", numpy_anchor),
                         *((f"b{b}", scorer(b)) for b in BATCHES)):
            reset = name.startswith("b") and reset_peak_rss()
            best[name] = max(best.get(name, 0.0), timed(fn))
            if reset:
                peaks[int(name[1:])] = max(peaks.get(int(name[1:]), 0.0), peak_rss_mib())

    ratios = {b: best["decode"] / best[f"b{b}"] for b in BATCHES}
    ok = all(best[f"b{b}"] >= TARGET_IMG_PER_S and ratios[b] <= TARGET_RATIO for b in (8, 64))
    peak = " ".join(f"peak_rss_mib_b{b}={peaks[b]:.0f}" for b in BATCHES if b in peaks)
    print(f"RESULT bench=scorer model={model.model_id} size={size} images={len(blobs)} threads=1 "
          f"decode_img_per_s={best['decode']:.1f} anchor_img_per_s={best['anchor']:.1f} "
          + " ".join(f"scorer_b{b}_img_per_s={best[f'b{b}']:.1f}" for b in BATCHES) + " "
          + " ".join(f"decode_over_scorer_b{b}={ratios[b]:.2f}" for b in BATCHES) + " "
          + f"anchor_over_scorer_b8={best['anchor'] / best['b8']:.1f} {peak} "
          f"target_img_per_s={TARGET_IMG_PER_S:g} target_ratio={TARGET_RATIO:g} ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
