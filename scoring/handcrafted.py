"""A weight-free image-quality score from classic signal measures, in batched torch.

It is the baseline every learned model must beat, and the model the pipelines
run when no training run exists. It sees only the uint8 crop the decoder
makes (``input_size`` x ``input_size``), so every measure is relative to that
crop. All measures work on luma ``Y`` (BT.601, in [0, 1]) unless noted.

Features (``HandcraftedScorer.features``), one value per image:

``noise``
    Sensor-noise sigma (white-noise equivalent, luma units 0-1), measured
    the way Immerkaer and wavelet-MAD estimators do it: energy of the finest
    band (``Y - G(sigma=1)``) in 16x16 patches, 10th percentile over patches,
    so the flattest regions speak and edges and texture do not. Patches near
    clipping (blown/crushed 4x4 blocks, or pixels at 0/255 which cut noise
    off) are skipped; with too few usable patches the image counts as
    noise-free.
``effective_resolution``
    Detail in the finest octave relative to the octave two steps coarser,
    ``sqrt(E0 / E2)`` of a difference-of-Gaussians pyramid (bands at sigma 0-1,
    1-2, 2-4, 4-8 px). Each band's noise floor (its flat-patch energy) is
    subtracted first, and detail counts only away from clipped areas (blown
    areas hold none; their edges are artefacts). A photo upscaled from a lower
    resolution has (almost) no energy in the finest octave, however sharp it
    looked at its own size.
``sharpness``
    The same ratio one octave coarser, ``sqrt(E1 / E3)``: edge crispness at the
    scale a viewer sees. Noise-corrected too, so noise does not pass for
    sharpness (a plain Laplacian variance would reward it).
``blockiness``
    Periodic seams: each column's (row's) mean absolute step, with steps capped
    at 0.01 so faint seams in flat areas count as much as real edges, is
    profiled across the image and its spectrum searched for a peak at periods
    4-20 px (an 8x8 JPEG grid lands anywhere in there after the decoder's
    resize). The feature is that peak's energy above the spectrum's median, as
    a fraction of the profile's energy: ~0.01 for photos, 0.1-0.3 for heavy
    JPEG. Resampled heavy noise can also raise it, which only adds to the
    noise penalty.
``brightness``
    Mean luma of the 4x-pooled image (pooling denoises every tone measure).
``highlight``
    99th percentile of pooled luma: where the brightest tones sit. It falls
    when a photo is underexposed.
``shadow``
    1st percentile of pooled luma: it rises when a photo is overexposed or
    washed out.
``clipped``
    Fraction of pooled pixels with a channel at >= 0.98 (blown highlights).
``contrast``
    RMS contrast: standard deviation of pooled luma.
``colourfulness``
    Hasler & Suesstrunk's metric on the pooled RGB image (0-1 scale):
    ``sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``.

The score is a logistic of a weighted sum of these, with hand-set weights
(``WEIGHTS``) and knees (``KNEES``): the log of detail and sharpness raises
it; noise, blockiness, dim highlights, a dark image, lifted shadows, blown
highlights, low contrast and dull colour lower it. The tone terms are soft
one-sided hinges, so a term that penalises one exposure error never rewards
the opposite one, and a grey photo is not punished as much as a noisy one. See ``bench/bench_handcrafted_spearman.py`` for how it ranks
graded distortions of real photos.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scoring.model import ScoreModel, check_batch

_LUMA = (0.299, 0.587, 0.114)
_BAND_SIGMAS = (1.0, 2.0, 4.0, 8.0)
_PATCH = 16
_CLIP_HIGH = 0.98   # a 4x4 block this bright in some channel is blown
_CLIP_LOW = 0.03    # a 4x4 block with every channel this dark is crushed
_MIN_FLOOR_PATCHES = 24  # of 400 patches in a 384 crop
_FLOOR_QUANTILE = 0.10
# Measured on white noise: 10th-percentile patch energy / mean energy, per band (coarser bands
# have fewer independent samples per patch, so their floor sits lower), and the finest band's gain.
_FLOOR_BIAS = (0.88, 0.78, 0.63, 0.41)
_WHITE_NOISE_GAIN0 = 0.761
_BLOCK_PERIODS = (4.0, 20.0)   # px: an 8 px JPEG grid after a 0.5x-2.5x resize
_BLOCK_STEP_CAP = 0.01          # luma step above which an edge counts as content, not a block seam
_EPS = 1e-8
_RATIO_EPS = 1e-6
_DETAIL_FLOOR = 0.05  # detail ratios below this are all "none": keeps the log from amplifying estimator noise

# Hand-set weights of the quality logit (see _logit for the transform each one multiplies).
WEIGHTS = {
    "bias": 3.0,
    "effective_resolution": 2.4,   # x log(ratio)
    "sharpness": 1.2,              # x log(ratio)
    "noise": 0.6,                  # x -log(1 + (sigma / NOISE_REF)^2)
    "blockiness": 30.0,            # x -(periodic energy fraction)
    "highlight": 7.0,              # x -hinge(knee - p99): brightest tones too dark
    "dark": 5.5,                   # x -hinge(knee - mean): image too dark overall
    "shadow": 5.0,                 # x -hinge(p01 - knee): shadows lifted (washed out)
    "clipped": 2.0,                # x -hinge(clipped - knee): blown highlights
    "contrast": 2.0,               # x -hinge(log(knee / rms)): flat image
    "colourfulness": 1.25,         # x -hinge(knee - colourfulness): dull colours (grey photos lose little)
}
NOISE_REF = 4.0 / 255   # below this sigma noise is invisible and barely penalised
# Where each one-sided tone penalty starts (soft knees): values on the good side of a knee
# barely move the score, so a distortion in one direction is never rewarded by the other's term.
KNEES = {"highlight": 0.75, "dark": 0.25, "shadow": 0.05, "clipped": 0.05, "contrast": 0.15, "colourfulness": 0.15}


def _soft_hinge(x: torch.Tensor, width: float) -> torch.Tensor:
    """~max(x, 0) with a smooth knee ``width`` wide: strictly monotone, so no ties at the knee."""
    return width * F.softplus(x / width)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [N, 1, H, W] with reflected borders."""
    r = kernel.numel() // 2
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))


class HandcraftedScorer(ScoreModel):
    """Sharpness, effective resolution, noise, blockiness, exposure, contrast and colour in one score."""

    model_id = "handcrafted-v1"
    # 384: big enough that a sharp 600-1200 px listing photo keeps its finest
    # octave after the resize (what effective_resolution measures) and that an
    # 8x8 JPEG grid spans ~48 blocks per side (what blockiness needs), while
    # costing ~3x a 224 crop rather than ~5x a 512 one.
    input_size = 384

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = dict(WEIGHTS if weights is None else weights)
        for i, sigma in enumerate(_BAND_SIGMAS):
            self.register_buffer(f"gauss{i}", _gaussian_kernel(sigma), persistent=False)
        self.register_buffer("block_smooth", _gaussian_kernel(2.0), persistent=False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    def _bands(self, y: torch.Tensor) -> list[torch.Tensor]:
        blurred = [y] + [_blur(y, getattr(self, f"gauss{i}")) for i in range(len(_BAND_SIGMAS))]
        return [blurred[i] - blurred[i + 1] for i in range(len(_BAND_SIGMAS))]

    # ------------------------------------------------------------------ features

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image measures (see the module docstring) of a uint8 NHWC batch."""
        check_batch(images, self.input_size)
        rgb = images.permute(0, 3, 1, 2).float() / 255.0
        y = (rgb * self.luma).sum(dim=1, keepdim=True)
        n = y.shape[0]

        pooled = F.avg_pool2d(rgb, 4)
        usable = self._unclipped(pooled, y.shape[-1])                 # [N, 1, H, W] in {0, 1}
        margin = int(math.ceil(3 * _BAND_SIGMAS[-1]))  # reflected borders bias the coarse bands
        crop = (Ellipsis, slice(margin, -margin), slice(margin, -margin))
        weight = usable[crop]
        pixels = weight[0].numel()
        # Pixels at 0 or 255 have their noise cut off; the noise floor must not come from them.
        unsaturated = ((rgb.amax(dim=1, keepdim=True) < 254.5 / 255)
                       & (rgb.amin(dim=1, keepdim=True) > 0.5 / 255)).float()[crop]
        energies, detail, floors = [], [], []
        for band in self._bands(y):
            squared = band[crop] ** 2
            energies.append(squared.flatten(1).mean(1))
            # Detail counts only where nothing is clipped: blown areas hold none, and the
            # edge of a blown area is a clipping artefact, not detail.
            detail.append((squared * weight).flatten(1).sum(1) / pixels)
            floors.append(self._flat_floor(squared, weight, unsaturated))
        energy, floor = torch.stack(energies, 1), torch.stack(floors, 1)      # [N, 4]
        floor = floor / floor.new_tensor(_FLOOR_BIAS)
        usable_share = weight.flatten(1).mean(1)[:, None]
        clean = (torch.stack(detail, 1) - floor * usable_share).clamp_min(_EPS)
        noise = torch.sqrt(floor[:, 0] / _WHITE_NOISE_GAIN0)
        # A fully blown or black frame has no usable pixels: its ratios fall to ~0, not 0/0.
        effective_resolution = torch.sqrt(clean[:, 0] / (energy[:, 2] + _RATIO_EPS))
        sharpness = torch.sqrt(clean[:, 1] / (energy[:, 3] + _RATIO_EPS))

        py = (pooled * self.luma).sum(dim=1).flatten(1)
        q = torch.quantile(py, torch.tensor([0.01, 0.99], device=py.device), dim=1)
        r, g, b = pooled[:, 0].flatten(1), pooled[:, 1].flatten(1), pooled[:, 2].flatten(1)
        rg, yb = r - g, 0.5 * (r + g) - b
        colourfulness = (torch.sqrt(rg.var(1) + yb.var(1))
                         + 0.3 * torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2))
        return {
            "noise": noise,
            "effective_resolution": effective_resolution,
            "sharpness": sharpness,
            "blockiness": 0.5 * (self._blockiness(y, dim=3) + self._blockiness(y, dim=2)),
            "brightness": py.mean(1),
            "highlight": q[1],
            "shadow": q[0],
            "clipped": (pooled.amax(dim=1).flatten(1) >= _CLIP_HIGH).float().mean(1),
            "contrast": py.std(1),
            "colourfulness": colourfulness.view(n),
        }

    @staticmethod
    def _unclipped(pooled: torch.Tensor, size: int) -> torch.Tensor:
        """1 where no 4x4 block within 4 px of a pixel is blown or crushed, at full resolution.

        Judged on the 4x-pooled image, so heavy noise on a bright background (single
        pixels at 255) is not mistaken for clipping; a blown area is flat at 255 and stays.
        """
        top = pooled.amax(dim=1, keepdim=True)
        clipped = ((top >= _CLIP_HIGH) | (top <= _CLIP_LOW)).float()
        clipped = F.max_pool2d(clipped, 3, stride=1, padding=1)
        return 1.0 - F.interpolate(clipped, size=(size, size), mode="nearest")

    @staticmethod
    def _flat_floor(squared: torch.Tensor, weight: torch.Tensor, unsaturated: torch.Tensor) -> torch.Tensor:
        """Band energy of the flattest 16x16 patches (10th percentile): the noise floor.

        Patches must be unclipped; where enough of them also have no pixel at 0/255
        (which would cut the noise off), only those count.
        """
        energy = F.avg_pool2d(squared, _PATCH).flatten(1)
        unclipped = F.avg_pool2d(weight, _PATCH).flatten(1) > 0.99
        strict = unclipped & (F.avg_pool2d(unsaturated, _PATCH).flatten(1) > 0.98)
        nan = torch.full_like(energy, float("nan"))
        floor_strict = torch.nanquantile(torch.where(strict, energy, nan), _FLOOR_QUANTILE, dim=1)
        floor_loose = torch.nanquantile(torch.where(unclipped, energy, nan), _FLOOR_QUANTILE, dim=1)
        floor = torch.where(strict.sum(1) >= _MIN_FLOOR_PATCHES, floor_strict, floor_loose)
        # Too few unclipped patches for a percentile to mean anything: call it noise-free.
        return torch.where(unclipped.sum(1) >= _MIN_FLOOR_PATCHES, torch.nan_to_num(floor, nan=0.0),
                           torch.zeros_like(floor))

    def _blockiness(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        """Fraction of the edge profile's energy in one periodic peak (a block grid) along ``dim``."""
        # Smooth along the edges being profiled (it keeps block edges, halves noise) and cap each
        # step, so a few strong natural edges cannot outweigh many faint block edges in flat areas.
        kernel = self.block_smooth
        r = kernel.numel() // 2
        if dim == 3:
            smooth = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))
        else:
            smooth = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        length = y.shape[dim] - 1
        step = (smooth.narrow(dim, 1, length) - smooth.narrow(dim, 0, length)).abs().clamp_max(_BLOCK_STEP_CAP)
        profile = step.mean(dim=2 if dim == 3 else 3).flatten(1)            # [N, L]
        profile = profile - profile.mean(dim=1, keepdim=True)
        power = torch.fft.rfft(profile, dim=1).abs() ** 2
        freqs = torch.fft.rfftfreq(length, device=y.device)
        excess = (power - power[:, 1:].median(dim=1).values[:, None]).clamp_min(0.0)
        band = ((freqs >= 1.0 / _BLOCK_PERIODS[1]) & (freqs <= 1.0 / _BLOCK_PERIODS[0]))[None, :]
        peak = torch.where(band, excess, torch.zeros_like(excess)).amax(dim=1)
        return peak / (power[:, 1:].sum(dim=1) + _EPS)

    # ------------------------------------------------------------------ score

    def _logit(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        w, k = self.weights, KNEES
        return (w["bias"]
                + w["effective_resolution"] * torch.log(f["effective_resolution"] + _DETAIL_FLOOR)
                + w["sharpness"] * torch.log(f["sharpness"] + _DETAIL_FLOOR)
                - w["noise"] * torch.log1p((f["noise"] / NOISE_REF) ** 2)
                - w["blockiness"] * f["blockiness"]
                - w["highlight"] * _soft_hinge(k["highlight"] - f["highlight"], 0.05)
                - w["dark"] * _soft_hinge(k["dark"] - f["brightness"], 0.05)
                - w["shadow"] * _soft_hinge(f["shadow"] - k["shadow"], 0.05)
                - w["clipped"] * _soft_hinge(f["clipped"] - k["clipped"], 0.02)
                - w["contrast"] * _soft_hinge(torch.log(k["contrast"] / (f["contrast"] + 1e-4)), 0.2)
                - w["colourfulness"] * _soft_hinge(k["colourfulness"] - f["colourfulness"], 0.03))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._logit(self.features(images))).float()
