"""Export a score model as a Triton model repository.

Layout written (``NAME`` defaults to ``image_score``)::

    REPO/NAME/config.pbtxt     input ``images`` UINT8 [S, S, 3], output ``scores`` FP32 [1],
                               dynamic batching, model id and input size in ``parameters``
    REPO/NAME/VERSION/model.pt TorchScript of the whole model (normalisation inside)
    REPO/NAME/VERSION/model.py (python backend only) loads model.pt with torch.jit.load

``pytorch`` is for the NGC Triton container (libtorch backend, GPU); ``python``
serves the very same ``model.pt`` through Triton's Python backend, which is
what the ``tritonserver`` in the ``nvidia-pytriton`` wheel ships and what the
tests run. The model takes uint8 images in both, so the client sends exactly
what the local path feeds ``ScoreModel.forward``.

Run it as ``imagescore export-triton --model SPEC --repository DIR``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from scoring.specs import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from scoring.model import ScoreModel

# torch, the models and their photos are imported inside the functions that export: the names above are
# what the Triton handler and --help need, without torch.

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "scores"
#: config.pbtxt parameter keys the client reads (``transforms.triton_handler``)
MODEL_ID_PARAMETER = "image_score_model"
INPUT_SIZE_PARAMETER = "image_score_input_size"
DEVICE_PARAMETER = "image_score_device"
TORCHSCRIPT_FILE = "model.pt"
BACKENDS = ("python", "pytorch")
#: largest |traced - eager| score accepted; both run the same float32 kernels, so anything above
#: rounding noise means the trace recorded something that depends on the data or the batch size
PARITY_TOLERANCE = 1e-5
#: (batch size, kind) checked after tracing at the first size: fresh images, other batch sizes
_PARITY_BATCHES = ((2, "photo"), (2, "photo"), (1, "noise"), (3, "photo"))


def trace_model(model: ScoreModel, device: str = "cpu", seed: int = 0) -> torch.jit.ScriptModule:
    """TorchScript of ``model`` on ``device``, checked against the eager model; raises ``ValueError`` when they differ.

    Tracing records one run's operations. A model with Python control flow
    that depends on the data (or a batch size baked into a ``view``) traces
    without error and then scores wrong, so the trace is run on fresh random
    images at several batch sizes and compared before anything is written.
    Tracing also bakes in the device of tensors the model creates on the fly
    (``torch.tensor(..., device=x.device)``), so a trace only runs on the kind
    of device it was made on: trace on ``cuda`` to serve on a GPU.
    """
    import torch

    from scoring.photos import draw_product

    class TritonOutput(torch.nn.Module):
        """``ScoreModel`` with its scores as ``[N, 1]``: Triton's batched output ``scores`` with dims ``[1]``."""

        def __init__(self, model: ScoreModel):
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images).float().reshape(-1, 1)

    device = _export_device(device)
    model = model.to(device).eval().requires_grad_(False)
    rng = np.random.default_rng(seed)
    size = int(model.input_size)

    def images(n: int, kind: str) -> torch.Tensor:
        # Product photos give mid-range scores, where a wrong trace shows; noise covers the extremes.
        if kind == "noise":
            batch = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        else:
            batch = np.stack([np.asarray(draw_product(rng, size).convert("RGB")) for _ in range(n)])
        return torch.from_numpy(batch).to(device)

    wrapper = TritonOutput(model).eval()
    with torch.inference_mode(False), torch.no_grad():
        with warnings.catch_warnings():
            # Every Python-level check in forward (check_batch, shape ifs) warns here; the
            # comparison below is what decides whether the trace is faithful.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapper, images(_PARITY_BATCHES[0][0], "photo"), check_trace=False)
        worst = 0.0
        for n, kind in _PARITY_BATCHES:
            batch = images(n, kind)
            expected = model(batch).float()
            got = traced(batch)
            if tuple(got.shape) != (n, 1):
                raise ValueError(f"traced {model.model_id} returned shape {tuple(got.shape)} for a batch of {n}, "
                                 f"expected ({n}, 1); refusing to export a model whose trace fixed the batch size")
            difference = float((got[:, 0] - expected).abs().max())
            if not difference <= PARITY_TOLERANCE:
                raise ValueError(f"traced {model.model_id} differs from the eager model by {difference:.3g} "
                                 f"(> {PARITY_TOLERANCE:g}) on a batch of {n} {kind} images; refusing to export a "
                                 "model that would score differently through Triton than locally")
            worst = max(worst, difference)
    log.info("traced %s: max |traced - eager| = %.3g over %s", model.model_id, worst, _PARITY_BATCHES)
    return traced


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(*, name: str, backend: str, input_size: int, model_id: str, max_batch_size: int,
                  device: str = "cpu") -> str:
    """The ``config.pbtxt`` text (protobuf text format) for one exported model.

    The instance kind follows the device the model was traced on (see
    :func:`trace_model`): KIND_GPU for ``cuda``, KIND_CPU for ``cpu``. KIND_AUTO
    would put a CPU trace on a GPU when Triton has one, where it fails.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    import torch
    head = 'backend: "python"' if backend == "python" else 'platform: "pytorch_libtorch"'
    kind = "KIND_GPU" if torch.device(device).type == "cuda" else "KIND_CPU"
    preferred = sorted({b for b in (8, 16, 32, max_batch_size) if b <= max_batch_size})
    parameters = {MODEL_ID_PARAMETER: model_id, INPUT_SIZE_PARAMETER: str(input_size),
                  DEVICE_PARAMETER: torch.device(device).type}
    return f"""name: {_quote(name)}
{head}
max_batch_size: {max_batch_size}
input [
  {{
    name: {_quote(INPUT_NAME)}
    data_type: TYPE_UINT8
    dims: [ {input_size}, {input_size}, 3 ]
  }}
]
output [
  {{
    name: {_quote(OUTPUT_NAME)}
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in preferred)} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
""" + "".join(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}\n"
              for key, value in parameters.items())


#: ``model.py`` of the Python backend. Kept free of imagescore imports: the
#: TorchScript file carries the whole model, so Triton needs only torch and numpy.
PYTHON_BACKEND_MODEL = '''"""Triton Python backend for an imagescore model: runs the TorchScript model.pt beside it.

Written by scoring/export_triton.py; the model takes uint8 NHWC images and
returns float32 scores in [0, 1] as [N, 1], normalisation inside.
"""
import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        device = "cpu"
        if parameters.get("%(device)s") == "cuda":
            if not torch.cuda.is_available():
                raise pb_utils.TritonModelException(
                    "this model was traced on a GPU but the Python backend sees no CUDA device; "
                    "re-export it with --device cpu to serve it on a CPU")
            device = "cuda:%%s" %% args.get("model_instance_device_id", 0)
        self.device = torch.device(device)
        path = os.path.join(args["model_repository"], args["model_version"], "%(file)s")
        self.model = torch.jit.load(path, map_location=self.device).eval()

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: one forward pass for all of them.
        arrays = [pb_utils.get_input_tensor_by_name(request, "%(input)s").as_numpy() for request in requests]
        sizes = [len(array) for array in arrays]
        # An exception here comes back to every request of the batch as an error (status INTERNAL).
        batch = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays))).to(self.device)
        with torch.inference_mode():
            scores = self.model(batch).float().cpu().numpy().reshape(-1, 1)
        responses, start = [], 0
        for size in sizes:
            output = pb_utils.Tensor("%(output)s", scores[start:start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start += size
        return responses

    def finalize(self):
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
''' % {"device": DEVICE_PARAMETER, "file": TORCHSCRIPT_FILE, "input": INPUT_NAME, "output": OUTPUT_NAME}  # noqa: UP031 (braces stay literal)


def export_triton(model: ScoreModel | str, repository: str, name: str = "image_score", version: int = 1,
                  backend: str = "python", max_batch_size: int = 64, device: str = "cpu",
                  overwrite: bool = False) -> str:
    """Write ``repository/name/`` for Triton and return that directory.

    ``model`` is a loaded :class:`ScoreModel` or a ``--model`` spec. ``device``
    is where the model is traced and served (``cpu`` or ``cuda``; see
    :func:`trace_model`). An existing version directory is replaced only with
    ``overwrite``. Raises ``ValueError`` when the trace does not reproduce the
    eager model's scores.
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if version < 1:
        raise ValueError(f"--version must be >= 1 (Triton ignores version 0), got {version}")
    if max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be >= 1 (the served model batches), got {max_batch_size}")
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise ValueError(f"--name {name!r} is not a usable directory name for a Triton model")
    _export_device(device)
    import torch

    from scoring.model import load_model
    if isinstance(model, str):
        # Loaded where it will be traced, so a GPU export keeps the GPU path's precision (fp16 backbones).
        model = load_model(model, device)
    model_dir = os.path.join(repository, name)
    version_dir = os.path.join(model_dir, str(version))
    if os.path.exists(version_dir) and not overwrite:
        raise FileExistsError(f"{version_dir} already exists; pass --overwrite or another --version")

    traced = trace_model(model, device)
    config = render_config(name=name, backend=backend, input_size=int(model.input_size), model_id=model.model_id,
                           max_batch_size=max_batch_size, device=device)
    os.makedirs(model_dir, exist_ok=True)
    # Build the version in a hidden sibling and rename it in, so a Triton polling the
    # repository never loads half a model.
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in PyTorch, but it is what Triton's libtorch backend loads.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, os.path.join(staging, TORCHSCRIPT_FILE))
        if backend == "python":
            with open(os.path.join(staging, "model.py"), "w", encoding="utf-8") as handle:
                handle.write(PYTHON_BACKEND_MODEL)
        if os.path.exists(version_dir):
            shutil.rmtree(version_dir)
        os.replace(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with open(os.path.join(model_dir, "config.pbtxt"), "w", encoding="utf-8") as handle:
        handle.write(config)
    log.info("exported %s (%s backend, %s, input %dx%d) to %s", model.model_id, backend, device,
             model.input_size, model.input_size, version_dir)
    return model_dir


def _export_device(device: str | torch.device) -> torch.device:
    """``--device`` of the export (``cpu`` or ``cuda``): there is no ``auto``, a trace runs only where it was made."""
    import torch
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available here; export with --device cpu, "
                         "or trace a GPU model on a GPU (the serving machine or the NGC PyTorch container)")
    return device


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="imagescore export-triton",
                                     description="Export a score model as a Triton model repository.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="handcrafted (default), clip-iqa:BACKBONE or a training run directory")
    parser.add_argument("--repository", required=True, help="Triton model repository directory to write into")
    parser.add_argument("--name", default="image_score", help="model name in the repository (default image_score)")
    parser.add_argument("--version", type=int, default=1, help="model version directory (default 1)")
    parser.add_argument("--backend", choices=BACKENDS, default="python",
                        help="python: Triton's Python backend runs model.pt (the nvidia-pytriton wheel's "
                             "tritonserver has only this one); pytorch: libtorch backend (NGC Triton container)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="trace and serve on this device (a trace runs only on the kind it was made on); "
                             "cuda needs a GPU at export time and gives instance_group KIND_GPU")
    parser.add_argument("--max-batch-size", dest="max_batch_size", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version directory")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    log.setLevel(logging.INFO)  # its trace-parity and export lines show without -v; the libraries' INFO does not
    try:
        model_dir = export_triton(args.model, args.repository, name=args.name, version=args.version,
                                  backend=args.backend, max_batch_size=args.max_batch_size, device=args.device,
                                  overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError, ImportError) as error:
        raise UsageError(str(error)) from None
    print(model_dir)
    return 0


if __name__ == "__main__":
    job_main("python -m scoring.export_triton", run)
