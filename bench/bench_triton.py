"""Throughput of the local PyTorch path vs the Triton path (CPU, handcrafted model), side by side.

Both handlers score the same product photos in the same batches, in
alternating passes (the median of each side is reported); the Triton side
runs the real tritonserver from the nvidia-pytriton wheel on 127.0.0.1,
started the way the tests start it. Prints one line::

    RESULT bench=triton local_img_per_s=... triton_img_per_s=... ratio=... max_abs_diff=... target=0.5 ok=true

``ratio`` is Triton over local; ``ok`` needs the ratio at or above the target
(gRPC and the Python backend may cost at most half the throughput on one
machine) and the two paths' scores within 1e-5.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from triton_setup import MODEL_NAME, photo_batches, served_handcrafted

from transforms.inference import ScoreModelHandler
from transforms.triton_handler import TritonModelHandler

TARGET = 0.5
TOLERANCE = 1e-5


def _pass(handler, model, batches) -> tuple[float, np.ndarray]:
    """Images per second of one pass over ``batches``, and the scores."""
    started = time.perf_counter()
    scores = [result.inference for batch in batches for result in handler.run_inference(batch, model)]
    return sum(len(b) for b in batches) / (time.perf_counter() - started), np.array(scores)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating local/Triton passes; the median of each side is reported "
                             "(the machines these run on are shared, so single passes are noisy)")
    args = parser.parse_args(argv)

    batches = photo_batches(args.images, args.batch_size)
    with served_handcrafted() as grpc_url:
        local = ScoreModelHandler("handcrafted", "cpu")
        remote = TritonModelHandler(f"triton://{grpc_url}/{MODEL_NAME}", num_retries=0)
        sides = {"local": (local, local.load_model()), "triton": (remote, remote.create_client())}
        for handler, loaded in sides.values():   # warm-up: first-call allocations, gRPC channel
            handler.run_inference(batches[0], loaded)
        rates = {name: [] for name in sides}
        scores = {}
        for _ in range(args.rounds):
            for name, (handler, loaded) in sides.items():
                rate, scores[name] = _pass(handler, loaded, batches)
                rates[name].append(rate)
        sides["triton"][1].client.close()

    local_rate, triton_rate = (float(np.median(rates[name])) for name in ("local", "triton"))
    ratio = triton_rate / local_rate
    diff = float(np.abs(scores["local"] - scores["triton"]).max())
    ok = ratio >= TARGET and diff <= TOLERANCE
    print(f"RESULT bench=triton images={args.images} batch={args.batch_size} rounds={args.rounds} "
          f"local_img_per_s={local_rate:.2f} triton_img_per_s={triton_rate:.2f} ratio={ratio:.3f} "
          f"max_abs_diff={diff:.3g} target={TARGET} ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
