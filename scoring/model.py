"""The one model interface every serving path implements.

A score model takes a batch of uint8 images in NHWC layout, already decoded,
resized and centre-cropped to ``input_size``, and returns one float per image
in [0, 1]. Normalisation happens inside the model, so the local PyTorch path,
Triton and any exported artefact preprocess identically.
"""
from __future__ import annotations

import abc
import importlib
import itertools

import numpy as np
import torch

from scoring.specs import DEFAULT_MODEL, MODEL_KINDS, model_kind


class ImageModule(torch.nn.Module):
    """A frozen module that takes uint8 NHWC images: the shared part of score models and backbones."""

    @property
    def device(self) -> torch.device:
        """Where the module's tensors live; inputs are moved there before ``forward``."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def identifier(self) -> str:
        """The id written next to every output (``model_id`` or ``backbone_id``)."""
        raise AttributeError(f"{type(self).__name__} has no identifier")

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """``(float32 outputs, identifier)`` for a uint8 NHWC numpy batch: what RunInference calls.

        A method rather than attribute reads, because a model shared across
        processes (``--large-model``) is reached through a proxy that forwards
        method calls only.
        """
        batch = torch.from_numpy(images).to(self.device, non_blocking=True)
        with torch.inference_mode():
            return self(batch).float().cpu().numpy(), self.identifier


class ScoreModel(ImageModule, abc.ABC):
    """Base class: ``forward(uint8 [N, H, W, 3]) -> float32 [N]`` in [0, 1]."""

    #: identifier and version written to ``image_score_model``, e.g. ``handcrafted-v1``
    model_id: str = "unset"
    #: side of the square uint8 image the decoder must produce
    input_size: int = 224

    @property
    def identifier(self) -> str:
        return self.model_id

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Score a uint8 NHWC batch; see :func:`check_batch`."""


def check_batch(images: torch.Tensor, input_size: int) -> None:
    """Refuse a batch that breaks the interface, naming what is wrong."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"score models take uint8 NHWC images with 3 channels, got dtype={images.dtype} "
            f"shape={tuple(images.shape)}; decode with transforms.decode.decode_image first")
    if images.shape[1] != input_size or images.shape[2] != input_size:
        raise ValueError(f"expected {input_size}x{input_size} images, got {images.shape[1]}x{images.shape[2]}")



def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``auto``: CUDA when available, else the CPU. Asking for CUDA without a GPU is an error."""
    if device is None or device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but CUDA is not available; use auto or cpu")
    return device


def _resolve(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device | None = None) -> ScoreModel:
    """Load the model that ``--model`` names: ``handcrafted``, ``clip-iqa:BACKBONE`` or a training run directory.

    The device defaults to CUDA when it is available and the CPU otherwise. The
    model comes back in eval mode with gradients off.
    """
    device = resolve_device(device)
    model: ScoreModel = _resolve(MODEL_KINDS[model_kind(spec)][0])(spec, device)
    model.eval().requires_grad_(False)
    return model.to(device)


def model_info(spec: str = DEFAULT_MODEL) -> tuple[str, int]:
    """``(model_id, input_size)`` of a ``--model`` spec without loading a backbone's weights.

    The launcher needs both before the pipeline runs: the id to skip items
    already scored by this model, the size to decode images for it.
    """
    info = MODEL_KINDS[model_kind(spec)][1]
    if info is not None:
        return _resolve(info)(spec)
    model = load_model(spec, "cpu")
    return model.model_id, model.input_size
