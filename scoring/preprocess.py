"""Image preprocessing for CLIP backbones, in torch, inside the model.

Every serving path (Beam's local PyTorch handler, the Triton export, the
embeddings job) feeds the model uint8 NHWC pixels, so resizing and
normalisation must live in the model itself. This module reproduces what each
backbone's reference pipeline does to an image:

* Hugging Face ``CLIPImageProcessor``: resize the shortest side (bicubic,
  antialiased), centre-crop with ``floor((H - h) / 2)`` offsets, rescale to
  [0, 1], normalise with the processor's mean/std;
* open_clip (torchvision ``Resize`` + ``CenterCrop``): the same, but the crop
  offset is ``round((H - h) / 2)``;
* rinna's japanese-clip: torchvision with *bilinear* resizing.

The resized image is rounded back to uint8 before normalising, as both the PIL
and the torchvision paths of those libraries do, so the only difference left
is the resampler's arithmetic (tested against ``CLIPImageProcessor``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling codes as stored in Hugging Face preprocessor configs.
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}

Interpolation = Literal["bicubic", "bilinear"]


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How a backbone turns pixels into its input tensor.

    ``resize`` is the shortest side after resizing (``None``: no resize),
    ``crop`` the side of the centre crop, which is also the model's input size.
    """

    crop: int
    resize: int | None = None
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: Interpolation = "bicubic"
    crop_offset: Literal["floor", "round"] = "floor"

    def __post_init__(self):
        if self.crop <= 0:
            raise ValueError(f"crop size must be positive, got {self.crop}")
        if self.resize is not None and self.resize < self.crop:
            raise ValueError(f"resize ({self.resize}) must be at least the crop size ({self.crop}): "
                             "padding small images is not supported")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, got {self.interpolation!r}")

    @classmethod
    def from_hf_dict(cls, config: dict[str, Any], default_size: int) -> PreprocessConfig:
        """Read a Hugging Face ``preprocessor_config.json`` (old int sizes and new dict sizes)."""
        crop = _side(config.get("crop_size"), default_size) if config.get("do_center_crop", True) else None
        resize = _side(config.get("size"), default_size) if config.get("do_resize", True) else None
        if crop is None:
            crop = resize or default_size
        resample = config.get("resample", 3)
        interpolation = _PIL_RESAMPLE.get(resample)
        if interpolation is None:
            raise ValueError(f"preprocessor config asks for PIL resample={resample!r}; "
                             "only bilinear (2) and bicubic (3) are supported")
        mean = tuple(config.get("image_mean") or OPENAI_CLIP_MEAN)
        std = tuple(config.get("image_std") or OPENAI_CLIP_STD)
        return cls(crop=crop, resize=resize, mean=mean, std=std, interpolation=interpolation, crop_offset="floor")

    @classmethod
    def from_hf_dir(cls, directory: str, default_size: int) -> PreprocessConfig:
        """The directory's ``preprocessor_config.json``, or OpenAI CLIP's defaults at ``default_size``."""
        path = os.path.join(directory, "preprocessor_config.json")
        if not os.path.exists(path):
            return cls(crop=default_size, resize=default_size)
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f), default_size)


def _side(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ValueError(f"only square crops/resizes are supported, got {value}")
            return int(value["height"])
    raise ValueError(f"cannot read an image size from {value!r}")


def resized_shape(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Output (height, width) of a shortest-side resize, truncating the long side like torchvision and HF."""
    if height <= width:
        return shortest, int(shortest * width / height)
    return int(shortest * height / width), shortest


def _resize_two_pass(x: torch.Tensor, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize done like PIL: width first, rounding to uint8 between and after the passes.

    PIL (behind HF's processors and torchvision's PIL path) stores the
    horizontal pass as 8-bit pixels before the vertical pass; skipping that
    rounding and clipping costs up to ~10 grey levels on sharp edges.
    """
    if shape[1] != x.shape[3]:
        x = F.interpolate(x, size=(x.shape[2], shape[1]), mode=mode, antialias=True, align_corners=False)
        x = x.round_().clamp_(0.0, 255.0)
    if shape[0] != x.shape[2]:
        x = F.interpolate(x, size=shape, mode=mode, antialias=True, align_corners=False)
        x = x.round_().clamp_(0.0, 255.0)
    return x


class Preprocess(torch.nn.Module):
    """uint8 NHWC [N, H, W, 3] -> normalised float NCHW [N, 3, crop, crop]."""

    def __init__(self, config: PreprocessConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"preprocessing takes uint8 NHWC images with 3 channels, got dtype={images.dtype} "
                             f"shape={tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        cfg = self.config
        if cfg.resize is not None:
            shape = resized_shape(x.shape[2], x.shape[3], cfg.resize)
            if shape != tuple(x.shape[2:]):
                x = _resize_two_pass(x, shape, cfg.interpolation)
        x = self._center_crop(x, cfg.crop)
        # (x/255 - mean) / std, with the 255 folded into the buffers
        return (x - self.mean) / self.std

    def _center_crop(self, x: torch.Tensor, size: int) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        if height < size or width < size:
            raise ValueError(f"image {height}x{width} is smaller than the {size}x{size} crop; "
                             "decode images at the backbone's input_size first")
        if self.config.crop_offset == "floor":
            top, left = (height - size) // 2, (width - size) // 2
        else:  # torchvision CenterCrop
            top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        return x[:, :, top:top + size, left:left + size]
