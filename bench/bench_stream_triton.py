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
import sys
import time

import numpy as np
from triton_setup import MODEL_NAME as NAME
from triton_setup import photo_batches, served_handcrafted
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput

from scoring.export_triton import INPUT_NAME, OUTPUT_NAME
from transforms.triton_handler import TritonModelHandler

TARGET = 0.8


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

    batches = photo_batches(args.images, args.batch_size)
    with served_handcrafted() as grpc_url:
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
    handler_rate, bare_rate = (float(np.median(rates[k])) for k in ("handler", "bare"))
    ratio = handler_rate / bare_rate
    print(f"RESULT bench=stream_triton images={args.images} batch={args.batch_size} "
          f"handler_img_per_s={handler_rate:.1f} bare_img_per_s={bare_rate:.1f} ratio={ratio:.2f} "
          f"target={TARGET} ok={str(ratio >= TARGET).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
