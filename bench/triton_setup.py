"""What the Triton benchmarks share: product photos in batches, and the handcrafted model served by tritonserver."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from scoring.export_triton import export_triton  # noqa: E402
from scoring.model import load_model  # noqa: E402
from scoring.photos import draw_product  # noqa: E402
from scoring.triton_server import start_triton, stop_triton  # noqa: E402

MODEL_NAME = "image_score"


def photo_batches(images: int, batch_size: int) -> list[list[np.ndarray]]:
    """``images`` drawn product photos (uint8 HWC at the handcrafted model's size), in batches."""
    size = load_model("handcrafted", "cpu").input_size
    rng = np.random.default_rng(0)
    photos = [np.asarray(draw_product(rng, size, clutter=rng.uniform(0, 1)).convert("RGB")) for _ in range(images)]
    return [photos[i:i + batch_size] for i in range(0, len(photos), batch_size)]


@contextlib.contextmanager
def served_handcrafted() -> Iterator[str]:
    """The handcrafted model exported (Python backend) and served by the real tritonserver; yields its gRPC URL."""
    with tempfile.TemporaryDirectory() as workdir:
        repository = f"{workdir}/models"
        export_triton(load_model("handcrafted", "cpu"), repository, name=MODEL_NAME, backend="python")
        process, grpc_url, _, _ = start_triton(repository, workdir, (MODEL_NAME,))
        try:
            yield grpc_url
        finally:
            stop_triton(process)
