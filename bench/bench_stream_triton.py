"""The Triton handler as streaming configures it vs. a bare ``tritonclient`` loop, same server, same batches.

The handler (``TritonModelHandler`` with ``--model-unavailable-seconds``: time-bounded
retries, throttling, result wrapping) must keep at least 0.8x the throughput of the
plainest client: ``InferInput`` + ``infer`` per batch. Both sides run against one real
``tritonserver`` (nvidia-pytriton wheel, CPU, handcrafted model), in alternating
passes; the median of each side is reported. Prints one line::

    RESULT bench=stream_triton handler_img_per_s=... bare_img_per_s=... ratio=... target=0.8 ok=...
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput  # noqa: E402

from scoring.export_triton import INPUT_NAME, OUTPUT_NAME, export_triton  # noqa: E402
from scoring.model import load_model  # noqa: E402
from scoring.photos import draw_product  # noqa: E402
from scoring.triton_server import start_triton, stop_triton  # noqa: E402
from transforms.triton_handler import TritonModelHandler  # noqa: E402

TARGET = 0.8
NAME = "image_score"


def _bare(client: InferenceServerClient, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        images = np.ascontiguousarray(np.stack(batch))
        tensor = InferInput(INPUT_NAME, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        client.infer(NAME, [tensor], outputs=[InferRequestedOutput(OUTPUT_NAME)]).as_numpy(OUTPUT_NAME)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def _handler(handler, model, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        list(handler.run_inference(batch, model))
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    model = load_model("handcrafted", "cpu")
    rng = np.random.default_rng(0)
    images = [np.asarray(draw_product(rng, model.input_size, clutter=rng.uniform(0, 1)).convert("RGB"))
              for _ in range(args.images)]
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    with tempfile.TemporaryDirectory() as workdir:
        repository = f"{workdir}/models"
        export_triton(model, repository, name=NAME, backend="python")
        process, grpc_url, _, _ = start_triton(repository, workdir, (NAME,))
        try:
            handler = TritonModelHandler(f"triton://{grpc_url}/{NAME}", unavailable_s=300.0)
            loaded = handler.create_client()
            bare = InferenceServerClient(grpc_url)
            _handler(handler, loaded, batches[:1])   # warm-up: channels, first-call allocations
            _bare(bare, batches[:1])
            rates = {"handler": [], "bare": []}
            for _ in range(args.rounds):
                rates["handler"].append(_handler(handler, loaded, batches))
                rates["bare"].append(_bare(bare, batches))
            loaded.client.close()
            bare.close()
        finally:
            stop_triton(process)
    handler_rate, bare_rate = (float(np.median(rates[k])) for k in ("handler", "bare"))
    ratio = handler_rate / bare_rate
    print(f"RESULT bench=stream_triton images={args.images} batch={args.batch_size} "
          f"handler_img_per_s={handler_rate:.1f} bare_img_per_s={bare_rate:.1f} ratio={ratio:.2f} "
          f"target={TARGET} ok={str(ratio >= TARGET).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
