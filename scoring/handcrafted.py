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
    off) are skipped. A patch counts on its unclipped pixels if at least half
    of it is unclipped, so scattered blown highlights (sunlit gravel) do not
    leave a frame without a floor; only a frame with no such patch at all
    counts as noise-free.
``effective_resolution``
    Detail in the finest octave relative to the octave two steps coarser,
    ``sqrt(E0 / E2)`` of a difference-of-Gaussians pyramid (bands at sigma 0-1,
    1-2, 2-4, 4-8 px). Each band's noise floor (its flat-patch energy) is
    subtracted first, and both octaves are measured only away from clipped areas
    (blown areas hold no detail at any scale, and their edges are artefacts, so a
    white print at 255 does not lower the ratio). A photo upscaled from a
    lower resolution has (almost) no energy in the finest octave, however sharp
    it looked at its own size.
``sharpness``
    The same ratio one octave coarser, ``sqrt(E1 / E3)``: edge crispness at the
    scale a viewer sees. Noise-corrected too, so noise does not pass for
    sharpness (a plain Laplacian variance would reward it).
``blockiness``
    Periodic seams: each column's (row's) mean absolute step over the subject
    and a margin around it, with steps capped at 0.01 so faint seams in flat
    areas count as much as real edges, is profiled across the image and its
    spectrum searched for a comb at periods 2.7-12 px: an 8x8 JPEG grid lands
    there after the decoder's resize, from ~3 px (a photo upscaled 2-2.5x before
    it was compressed, as apps re-save phone photos) to 12 px (a 256 px photo).
    The feature is the largest sum of a peak's and its second harmonic's energy
    above the spectrum's median, as a fraction of the profile's energy. Looking
    only near the subject and for a comb keeps two look-alikes out: the 8-bit
    banding of a smooth studio sweep and the single long-period peaks of an
    object's own outline (both showed up at 15-24 px).
``brightness``
    Mean luma of the 4x-pooled image (pooling denoises every tone measure).
``highlight``
    99th percentile of pooled luma: where the brightest tones sit. It falls
    when a photo is underexposed.
``shadow``
    1st percentile of pooled luma: it rises when a photo is overexposed or
    washed out.
``clipped``
    Fraction of pooled pixels with a channel at >= 0.97 (blown highlights;
    heavy JPEG quantises a blown block down to ~248, which must still count).
``contrast``
    RMS contrast: standard deviation of pooled luma.
``colourfulness``
    Hasler & Suesstrunk's metric on the pooled RGB image (0-1 scale):
    ``sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``.

Layout features, on the 4x-pooled image (96 x 96), for what a buyer rewards in
a listing photo (a plain background, a product that fills the frame, centred):

``background_clutter``
    Median local detail (3x3 mean of absolute RGB steps) of what the fitted
    background plane does not explain, over the frame's outer ring (6 of 96
    px), where the background shows: ~0.003 on a studio sweep (its 8-bit
    steps) however it was encoded, 0.1-0.4 on a busy texture or a room.
    Blown ring pixels are left out unless most of the ring is blown (a white
    backdrop).
``background_spread`` / ``background_luma``
    How far the ring is from one smooth colour plane fitted to it, and the
    ring's median luma under that plane (a white sweep ~0.93).
``subject_fill`` / ``subject_extent`` / ``subject_offset``
    The subject is what differs from the background plane by more than 0.15
    (soft mask). Fill is its share of the frame; extent the longer of its
    5-95 % widths across and down (how much of the frame the product spans,
    as marketplaces measure it; the mask's faint tail over the backdrop is
    left out, or it would stretch a small product's extent to the frame);
    offset the distance of its centre of mass from the frame's centre (0.5 =
    at the edge). The logit rewards extent (log) and penalises a product
    spanning under half the frame (``subject_small``).
``subject_shadow`` / ``subject_highlight`` / ``subject_clipped``
    The subject's 5th and 95th luma percentiles and its share of blown
    pixels: exposure judged on the product, not on a white backdrop.

The score is ``sigmoid(calibrate(logit))``. The logit is ``bias + sum(WEIGHTS
x terms)`` (:func:`terms`): each term is a signed transform of a feature (log
of detail and of blockiness, soft one-sided hinges at ``KNEES`` for tones), so
a term that penalises one exposure error never rewards the opposite one, and
exposure is penalised both ways: dim (highlights, a light backdrop gone grey,
the subject's highlights) and bright (blown pixels, lifted shadows of the
subject). On a plain backdrop the global lifted-shadow term is off: there the
darkest pixels are the product's, and a light product is not an overexposed
one. The weights are fitted on a tuning split by ``bench/fit_handcrafted.py``
(pairwise logistic regression, every weight >= 0, pulled toward hand-set
values), and :func:`calibrate` is a monotone piecewise-linear map fitted by the
same script so the tuning images' scores spread over [0.03, 0.97] instead of
piling up at 0 and 1. ``bench/bench_listing.py`` and
``bench/bench_handcrafted_spearman.py`` report the held-out split.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scoring.model import ScoreModel, check_batch

_LUMA = (0.299, 0.587, 0.114)
_BAND_SIGMAS = (1.0, 2.0, 4.0, 8.0)
_PATCH = 16
_TILE = 32          # output rows per banded-matrix product of a blur (:func:`_blur_rows`); 16-48 measure alike
_CHUNK = 8          # images measured at a time: larger batches only spill each plane out of the caches
_CLIP_HIGH = 0.98   # a 4x4 block this bright in some channel holds no detail: left out of detail, noise, clutter
# A pooled pixel this bright in some channel counts as blown for the `clipped` penalties: JPEG at quality <= ~10
# quantises a block at 255 down to ~248 (its DC step is ~160), and must not earn the blown highlights back.
# (0.97 for the masks above too measured worse on the tuning split.)
_BLOWN = 0.97
_CLIP_LOW = 0.03    # a 4x4 block with every channel this dark is crushed
_MIN_FLOOR_PATCHES = 24  # of 400 patches in a 384 crop
_FLOOR_QUANTILE = 0.10
# Measured on white noise: 10th-percentile patch energy / mean energy, per band (coarser bands
# have fewer independent samples per patch, so their floor sits lower), and the finest band's gain.
_FLOOR_BIAS = (0.88, 0.78, 0.63, 0.41)
_WHITE_NOISE_GAIN0 = 0.761
# px: an 8 px JPEG grid after the decoder's resize, from a photo 2.7x larger (upscaled before it was
# compressed, as apps re-save phone photos: 8 px -> 3 px) to a 256 px one (8 px -> 12 px). Longer periods
# are left out: there an object's own outline and a sweep's banding peak too, and lowres judges such photos.
_BLOCK_PERIODS = (2.7, 12.0)
_BLOCK_SIGMA = 2.0              # px: blockiness smooths along the edges it profiles with the sigma-2 band's blur
_BLOCK_STEP_CAP = 0.01          # luma step above which an edge counts as content, not a block seam
_EPS = 1e-8
_RING = 6                  # pooled px (of 96): the frame's outer ring, where the background shows
_SUBJECT_DISTANCE = 0.15   # RGB distance from the background colour beyond which a pixel is subject
_SUBJECT_SOFTNESS = 0.03
_RATIO_EPS = 1e-6
_DETAIL_FLOOR = 0.05  # detail ratios below this are all "none": keeps the log from amplifying estimator noise

# Weights of the quality logit, one per term of :func:`terms` (each term is signed so that a larger
# value is better; every weight is >= 0). Fitted on the tuning split by bench/fit_handcrafted.py.
WEIGHTS = {
    "bias": 3.0,
    "background_clutter": 2.043,
    "background_dim": 12.45,
    "background_spread": 1.386,
    "blockiness": 1.216,
    "clipped": 4.904,
    "colourfulness": 0,
    "contrast": 2.416,
    "dark": 1.09,
    "effective_resolution": 2.6,
    "highlight": 8.157,
    "noise": 0.706,
    "shadow": 15.01,
    "sharpness": 1.269,
    "subject_clipped": 1.696,
    "subject_dark": 9.508,
    "subject_extent": 0.6737,
    "subject_offset": 9.877,
    "subject_small": 16.13,
    "subject_washed": 20.18,
}
NOISE_REF = 4.0 / 255   # below this sigma noise is invisible and barely penalised
BLOCK_FLOOR = 0.002     # blockiness of a clean photo is 0.001-0.03; below this its changes are estimator noise
CLUTTER_REF = 0.02      # relative ring detail of a plain sweep is ~0.002; a busy texture's 0.3-1
# Where each one-sided penalty starts (soft knees): values on the good side of a knee barely move
# the score, so a distortion in one direction is never rewarded by the other's term.
KNEES = {"highlight": 0.75, "dark": 0.25, "shadow": 0.15, "clipped": 0.05, "contrast": 0.15, "colourfulness": 0.15,
         "background_spread": 0.02, "subject_offset": 0.05, "subject_dark": 0.55, "subject_washed": 0.6,
         "subject_clipped": 0.05, "background_dim": 0.8, "subject_small": 0.5}
# Monotone calibration of the logit: piecewise linear through these (logit, calibrated logit) knots,
# extended linearly past both ends, then a sigmoid. Fitted by bench/fit_handcrafted.py so the tuning
# images' scores spread evenly over [0.03, 0.97] instead of piling up near 0 and 1.
CALIBRATION = ((-18.63, -3.4761), (-6.2342, -1.7543), (-3.4381, -1.0201), (-1.5489, -0.479), (0.0432, 0.0), (1.194, 0.479), (2.7149, 1.0201), (4.5565, 1.7543), (8.3676, 3.4761))


def _soft_hinge(x: torch.Tensor, width: float) -> torch.Tensor:
    """~max(x, 0) with a smooth knee ``width`` wide: strictly monotone, so no ties at the knee."""
    return width * F.softplus(x / width)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """``[size, size]`` matrix ``M`` with ``M @ x`` = ``kernel`` convolved along ``x``'s first axis, reflected borders.

    Row ``i`` holds the kernel centred on ``i``; taps that fall off an end are
    folded onto the pixel they reflect to (``-1 -> 1``, as ``F.pad(mode="reflect")``).
    """
    r = kernel.numel() // 2   # < size: the model's crop is far wider than its widest kernel
    rows = torch.arange(size).repeat_interleave(2 * r + 1)
    cols = (torch.arange(size)[:, None] + torch.arange(-r, r + 1)[None, :]).abs()
    cols = torch.where(cols > size - 1, 2 * (size - 1) - cols, cols).flatten()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows, cols), kernel.double().repeat(size), accumulate=True)
    return matrix.float()


def _tiles(size: int, radius: int, start: int = 0, stop: int | None = None) -> list[tuple[int, int, int, int]]:
    """``(a, b, lo, hi)``: outputs ``start + a`` to ``start + b`` of a banded blur read only inputs ``lo:hi``.

    A blur's outputs are computed :data:`_TILE` at a time, and only from ``start`` to ``stop``.
    """
    stop = size if stop is None else stop
    return [(a - start, min(a + _TILE, stop) - start, max(0, a - radius), min(size, a + _TILE + radius, stop + radius))
            for a in range(start, stop, _TILE)]


def _dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """``F.max_pool2d(mask, size, stride=1, padding=size // 2)`` of a mask >= 0, to the bit, as shifted maxima.

    The same maxima, an order of magnitude faster than the pooling kernel on one channel.
    """
    r = size // 2
    h, w = mask.shape[-2:]
    padded = F.pad(mask, (r, r, r, r))   # zeros never win a maximum of values >= 0 that includes the centre
    rows = padded[..., :, 0:w]
    for i in range(1, size):
        rows = torch.maximum(rows, padded[..., :, i:i + w])
    out = rows[..., 0:h, :]
    for i in range(1, size):
        out = torch.maximum(out, rows[..., i:i + h, :])
    return out


def _cell_means(x: torch.Tensor) -> torch.Tensor:
    """Means of the 4x4 cells of ``x`` ``[N, H, W]``: ``F.avg_pool2d(x, 4)`` in half its time (down, then across)."""
    h, w = x.shape[-2:]
    return x.view(-1, h // 4, 4, w).sum(2).view(-1, h // 4, w // 4, 4).sum(3) / 16


def _quantiles(sorted_values: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """``[len(qs), N]``: ``torch.quantile``'s linear interpolation, to the bit, of rows already sorted.

    One sort then serves every quantile of the same values.
    """
    q = torch.tensor(qs, dtype=sorted_values.dtype, device=sorted_values.device)
    ranks = q * (sorted_values.shape[-1] - 1)
    below, above = ranks.long(), ranks.ceil().long()
    return sorted_values[..., below].lerp(sorted_values[..., above], ranks - below).movedim(-1, 0)


def _blur_rows(x: torch.Tensor, matrix: torch.Tensor, tiles: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``x`` ``[N, H, W]`` blurred along W by the banded ``matrix`` (rows of :func:`_blur_matrix`), tile by tile.

    oneDNN runs a one-channel convolution an order of magnitude slower than BLAS
    runs the same arithmetic as a matrix product, and a dense product would
    spend most of its work on zeros: each tile of outputs multiplies only the
    inputs the kernel reaches (:func:`_tiles`). The sums run in another order
    than ``F.conv2d``'s, so results differ from it by float32 rounding only (~1e-7).
    """
    out = torch.empty_like(x.narrow(-1, 0, matrix.shape[0]))
    flat, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
    for a, b, lo, hi in tiles:
        torch.mm(flat[:, lo:hi], matrix[a:b, lo:hi].t(), out=flat_out[:, a:b])
    return out


def _blur_columns(x: torch.Tensor, matrix: torch.Tensor, tiles: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``x`` ``[N, H, W]`` blurred along H, as :func:`_blur_rows`."""
    out = torch.empty_like(x.narrow(-2, 0, matrix.shape[0]))
    for a, b, lo, hi in tiles:
        torch.matmul(matrix[a:b, lo:hi], x[:, lo:hi], out=out[:, a:b])
    return out


def _background_plane(pooled: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """The background as a colour plane ``a + b*x + c*y`` fitted to the frame's outer ring, per channel.

    A studio sweep is a smooth gradient, not one colour. Two weighted least-squares
    passes: ring pixels near the ring's median colour, then those near the first
    plane, so a subject that touches the ring does not tilt the fit.
    """
    n, c, h, w = pooled.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=pooled.device, dtype=pooled.dtype),
                            torch.linspace(-1, 1, w, device=pooled.device, dtype=pooled.dtype), indexing="ij")
    design = torch.stack([torch.ones_like(xs), xs, ys], dim=-1)                      # [H, W, 3]
    x = design[ring]                                                                 # [R, 3]
    values = pooled[:, :, ring]                                                      # [N, C, R]
    fitted = values.median(dim=2, keepdim=True).values.expand_as(values)
    for _ in range(2):
        weight = ((values - fitted).norm(dim=1) < _SUBJECT_DISTANCE).to(pooled.dtype) + 1e-3   # [N, R]
        gram = torch.einsum("nr,ri,rj->nij", weight, x, x)
        rhs = torch.einsum("nr,ri,ncr->nci", weight, x, values)
        beta = torch.linalg.solve(gram[:, None], rhs[..., None])[..., 0]             # [N, C, 3]
        fitted = torch.einsum("nci,ri->ncr", beta, x)
    return torch.einsum("nci,hwi->nchw", beta, design)


class HandcraftedScorer(ScoreModel):
    """Sharpness, resolution, noise, blockiness, exposure, colour, background and subject framing in one score."""

    model_id = "handcrafted-v4"
    # 384: big enough that a sharp 600-1200 px listing photo keeps its finest
    # octave after the resize (what effective_resolution measures) and that an
    # 8x8 JPEG grid spans ~48 blocks per side (what blockiness needs), while
    # costing ~3x a 224 crop rather than ~5x a 512 one.
    input_size = 384

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = dict(WEIGHTS if weights is None else weights)
        # Detail is measured inside a margin (reflected borders bias the coarse bands): the blurs compute
        # only the pixels inside it, except the one whose rows blockiness reuses over the whole frame.
        size, self._margin = self.input_size, int(math.ceil(3 * _BAND_SIGMAS[-1]))
        self._tiles, self._inner_tiles = [], []
        for i, sigma in enumerate(_BAND_SIGMAS):
            kernel = _gaussian_kernel(sigma)
            self.register_buffer(f"blur{i}", _blur_matrix(kernel, size), persistent=False)
            self._tiles.append(_tiles(size, kernel.numel() // 2))
            self._inner_tiles.append(_tiles(size, kernel.numel() // 2, self._margin, size - self._margin))
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ features

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image measures (see the module docstring) of a uint8 NHWC batch.

        Measured :data:`_CHUNK` images at a time: each image's measures depend on
        that image alone, and a chunk's full-resolution planes stay in the caches.
        On the CPU it runs on one intra-op thread (restored afterwards): its work
        is hundreds of small matrix products and plane-sized steps, where fanning
        each out to more threads costs more than it gains (two threads on a
        shared 2-core machine measured 5x slower than one). The pipelines run one
        model per worker process and get their parallelism from Beam.
        """
        check_batch(images, self.input_size)
        if torch.jit.is_tracing():
            return self._measure(images)  # a trace must not bake the batch size into slices
        threads = torch.get_num_threads()
        single = images.device.type == "cpu" and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            parts = [self._measure(images[start:start + _CHUNK])
                     for start in range(0, max(images.shape[0], 1), _CHUNK)]
        finally:
            if single:
                torch.set_num_threads(threads)
        return parts[0] if len(parts) == 1 else {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def _measure(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = images.permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.matmul(rgb.permute(0, 2, 3, 1), self.luma.view(3))  # [N, H, W]
        n, size = y.shape[0], y.shape[-1]
        pooled = F.avg_pool2d(rgb, 4)
        del rgb
        # Every measure of detail works inside the margin, on 16x16 patches. The margin and the patches
        # are whole 4x4 cells of the pooled grid, so the clipping mask (constant on each cell) weighs
        # each cell's mean band energy.
        margin = self._margin
        crop = (Ellipsis, slice(margin, -margin), slice(margin, -margin))
        usable = self._unclipped(pooled)[:, margin // 4:-(margin // 4), margin // 4:-(margin // 4)]   # [N, h, w]
        cells_per_patch = _PATCH // 4
        share = F.avg_pool2d(usable, cells_per_patch).flatten(1)      # usable share of each patch
        # Pixels at 0 or 255 have their noise cut off; the noise floor must not come from them. In uint8,
        # k - 1 wraps 0 to 255 and takes 255 to 254, so a pixel is unsaturated where no channel's exceeds 253.
        shifted = images[:, margin:-margin, margin:-margin] - 1
        unsaturated = torch.maximum(torch.maximum(shifted[..., 0], shifted[..., 1]), shifted[..., 2]) <= 253
        unsaturated = F.avg_pool2d(unsaturated.float(), _PATCH).flatten(1)
        detail, energies = [], []
        blurred = y[crop]
        inner = slice(margin, size - margin)
        for i in range(len(_BAND_SIGMAS)):
            matrix = getattr(self, f"blur{i}")
            if _BAND_SIGMAS[i] == _BLOCK_SIGMA:
                smooth_rows = _blur_rows(y, matrix, self._tiles[i])   # blockiness smooths along rows alike
                rows = smooth_rows[..., inner]
            else:
                rows = _blur_rows(y, matrix[inner], self._inner_tiles[i])
            coarser = _blur_columns(rows, matrix[inner], self._inner_tiles[i])
            del rows
            squared = torch.sub(blurred, coarser).square_()
            blurred = coarser
            cell_energy = _cell_means(squared) * usable                # [N, h, w]
            del squared
            # Detail counts only where nothing is clipped: blown areas hold none, and the
            # edge of a blown area is a clipping artefact, not detail.
            detail.append(cell_energy.flatten(1).mean(1))
            energies.append(F.avg_pool2d(cell_energy, cells_per_patch).flatten(1) / share.clamp_min(_EPS))
        del blurred, coarser
        detail = torch.stack(detail, 1)                                # [N, 4]
        floor = self._flat_floor(torch.stack(energies, 1), share, unsaturated)
        floor = floor / floor.new_tensor(_FLOOR_BIAS)
        usable_share = usable.flatten(1).mean(1)[:, None]
        clean = (detail - floor * usable_share).clamp_min(_EPS)
        noise = torch.sqrt(floor[:, 0] / _WHITE_NOISE_GAIN0)
        # A fully blown or black frame has no usable pixels: its ratios fall to ~0, not 0/0.
        # Both octaves of a ratio are measured on the same unclipped pixels: a white print or a white
        # backdrop at 255 holds no detail at any scale, so it must not lower the ratio either.
        effective_resolution = torch.sqrt(clean[:, 0] / (detail[:, 2] + _RATIO_EPS))
        sharpness = torch.sqrt(clean[:, 1] / (detail[:, 3] + _RATIO_EPS))

        py = (pooled * self.luma).sum(dim=1)                          # [N, h, w]
        tones = _quantiles(py.flatten(1).sort(dim=1).values, (0.01, 0.05, 0.95, 0.99))
        py = py.flatten(1)
        r, g, b = pooled[:, 0].flatten(1), pooled[:, 1].flatten(1), pooled[:, 2].flatten(1)
        rg, yb = r - g, 0.5 * (r + g) - b
        colourfulness = (torch.sqrt(rg.var(1) + yb.var(1))
                         + 0.3 * torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2))
        layout, subject = self._layout(pooled, self.luma, py.view_as(pooled[:, 0]), tones[1], tones[2])
        # Blocks are looked for where the subject is: a smooth sweep's 8-bit banding is periodic too.
        near_subject = F.interpolate(_dilate((subject[:, None] > 0.5).float(), 5),
                                     size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        block = self._tiles[_BAND_SIGMAS.index(_BLOCK_SIGMA)]
        smooth_columns = _blur_columns(y, getattr(self, f"blur{_BAND_SIGMAS.index(_BLOCK_SIGMA)}"), block)
        return {
            "noise": noise,
            "effective_resolution": effective_resolution,
            "sharpness": sharpness,
            "blockiness": 0.5 * (self._blockiness(smooth_columns, near_subject, dim=2)
                                 + self._blockiness(smooth_rows, near_subject, dim=1)),
            "brightness": py.mean(1),
            "highlight": tones[3],
            "shadow": tones[0],
            "clipped": (pooled.amax(dim=1).flatten(1) >= _BLOWN).float().mean(1),
            "contrast": py.std(1),
            "colourfulness": colourfulness.view(n),
            **layout,
        }

    @staticmethod
    def _layout(pooled: torch.Tensor, luma: torch.Tensor, y: torch.Tensor, low: torch.Tensor,
                high: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Background and subject measures of the 4x-pooled RGB image (see the module docstring).

        ``y`` is the pooled luma, ``low`` and ``high`` its 5th and 95th percentiles:
        the subject's tones when no subject stands out. The background is what the
        frame's outer ring shows (its median colour); the subject is what differs
        from that colour. Soft masks and smooth interval widths keep every measure
        continuous, so near-identical shots do not tie.
        """
        n, _, h, w = pooled.shape
        ring = torch.ones(h, w, dtype=torch.bool, device=pooled.device)
        ring[_RING:h - _RING, _RING:w - _RING] = False
        background = _background_plane(pooled, ring)                                 # [N, 3, H, W]
        distance = (pooled - background).norm(dim=1)                                 # [N, H, W]
        # Local detail: absolute differences to the right and below, all channels, over 3x3, of what the
        # smooth sweep does not explain (a gradient backdrop is plain, however it was encoded).
        residual = pooled - background
        dx = (residual[..., :, 1:] - residual[..., :, :-1]).abs().sum(1)
        dy = (residual[..., 1:, :] - residual[..., :-1, :]).abs().sum(1)
        detail = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))
        detail = F.avg_pool2d(detail[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
        # Blown ring pixels say nothing about clutter (an overexposed room is not a plain backdrop); a
        # ring blown all round is a white backdrop, and plain.
        ring_detail = detail[:, ring]
        blown = pooled.amax(dim=1)[:, ring] >= _CLIP_HIGH
        seen = torch.nanmedian(torch.where(blown, torch.full_like(ring_detail, float("nan")), ring_detail), dim=1).values
        clutter = torch.where((~blown).float().mean(1) >= 0.25, seen, ring_detail.median(dim=1).values)
        spread = distance[:, ring].median(dim=1).values   # how far the ring is from one smooth sweep
        subject = torch.sigmoid((distance - _SUBJECT_DISTANCE) / _SUBJECT_SOFTNESS)   # [N, H, W]
        # The soft mask's tail (~0.007 a pixel) over a whole plain backdrop outweighs a small product's
        # mass and would stretch its extent to the frame; below 0.05 is no subject.
        solid = ((subject - 0.05) / 0.95).clamp_min(0.0)
        mass = solid.flatten(1).sum(1) + _EPS
        extents, centre = [], []
        for axis, length in ((1, h), (2, w)):
            profile = solid.sum(dim=2) if axis == 1 else solid.sum(dim=1)
            cdf = profile.cumsum(1) / mass[:, None]
            inside = torch.sigmoid((cdf - 0.05) / 0.01) * torch.sigmoid((0.95 - cdf) / 0.01)
            extents.append(inside.sum(1) / length)
            pos = (torch.arange(length, device=pooled.device, dtype=pooled.dtype) + 0.5) / length - 0.5
            centre.append((profile * pos).sum(1) / mass)
        inside = subject > 0.5
        nan = torch.full_like(y, float("nan"))
        subject_luma = torch.where(inside, y, nan).flatten(1)
        tones = torch.nanquantile(subject_luma, torch.tensor([0.05, 0.95], device=y.device), dim=1)
        has_subject = inside.flatten(1).sum(1) >= 16
        top = pooled.amax(dim=1)
        subject_clipped = ((top >= _BLOWN) & inside).flatten(1).sum(1) / (inside.flatten(1).sum(1) + 1.0)
        return {
            "background_clutter": clutter,
            "background_spread": spread,
            "background_luma": (background[:, :, ring] * luma.view(1, 3, 1)).sum(1).median(dim=1).values,
            "subject_fill": subject.flatten(1).mean(1),
            "subject_extent": torch.maximum(extents[0], extents[1]),   # the longer side, as marketplaces measure
            "subject_offset": torch.sqrt(centre[0] ** 2 + centre[1] ** 2),
            "subject_shadow": torch.where(has_subject, torch.nan_to_num(tones[0], nan=0.0), low),
            "subject_highlight": torch.where(has_subject, torch.nan_to_num(tones[1], nan=1.0), high),
            "subject_clipped": subject_clipped,
        }, subject

    @staticmethod
    def _unclipped(pooled: torch.Tensor) -> torch.Tensor:
        """``[N, H/4, W/4]``: 1 per 4x4 block where neither it nor a neighbouring block is blown or crushed.

        Judged on the 4x-pooled image, so heavy noise on a bright background (single
        pixels at 255) is not mistaken for clipping; a blown area is flat at 255 and stays.
        """
        top = pooled.amax(dim=1, keepdim=True)
        clipped = ((top >= _CLIP_HIGH) | (top <= _CLIP_LOW)).float()
        return 1.0 - _dilate(clipped, 3)[:, 0]

    @staticmethod
    def _flat_floor(energy: torch.Tensor, share: torch.Tensor, unsaturated: torch.Tensor) -> torch.Tensor:
        """``[N, bands]`` band energy of the flattest 16x16 patches (10th percentile): the noise floor.

        ``energy`` ``[N, bands, patches]`` is each patch's mean band energy over its
        unclipped pixels, ``share`` ``[N, patches]`` the unclipped share of each patch and
        ``unsaturated`` the share with no channel at 0/255 (which would cut the noise off).
        A patch counts if at least half of it is unclipped, so scattered blown highlights
        (sunlit gravel) do not leave the frame without a floor; where enough patches are
        also unsaturated, only those count.
        """
        unclipped = (share > 0.5)[:, None]
        strict = unclipped & (unsaturated > 0.98)[:, None]
        nan = torch.full_like(energy, float("nan"))
        floor_strict = torch.nanquantile(torch.where(strict, energy, nan), _FLOOR_QUANTILE, dim=2)
        floor_loose = torch.nanquantile(torch.where(unclipped, energy, nan), _FLOOR_QUANTILE, dim=2)
        floor = torch.where(strict.sum(2) >= _MIN_FLOOR_PATCHES, floor_strict, floor_loose)
        # With few unclipped patches the floor comes from those few (the flattest of what is left);
        # with none at all, the frame counts as noise-free.
        return torch.nan_to_num(floor, nan=0.0)

    @staticmethod
    def _blockiness(smooth: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
        """Fraction of the edge profile's energy in one periodic peak (a block grid) along ``dim`` of ``[N, H, W]``.

        ``smooth`` is luma blurred along the other axis, the one the edges run
        along: that keeps block edges and halves noise.
        """
        # Cap each step, so a few strong natural edges cannot outweigh many faint block edges in flat areas.
        length = smooth.shape[dim] - 1
        step = torch.sub(smooth.narrow(dim, 1, length), smooth.narrow(dim, 0, length))
        step = step.abs_().clamp_max_(_BLOCK_STEP_CAP)
        w = weight.narrow(dim, 0, length)
        across = 1 if dim == 2 else 2
        weighted = step.mul_(w)
        mean = weighted.sum((1, 2)) / (w.sum((1, 2)) + _EPS)
        # Each line's mean step over the subject; a line with little subject shrinks to the overall mean.
        profile = (weighted.sum(dim=across) + mean[:, None]) / (w.sum(dim=across) + 1.0)
        profile = profile - profile.mean(dim=1, keepdim=True)
        power = torch.fft.rfft(profile, dim=1).abs() ** 2
        freqs = torch.fft.rfftfreq(length, device=smooth.device)
        excess = (power - power[:, 1:].median(dim=1).values[:, None]).clamp_min(0.0)
        band = ((freqs >= 1.0 / _BLOCK_PERIODS[1]) & (freqs <= 1.0 / _BLOCK_PERIODS[0]))[None, :]
        # A block grid is a comb: its second harmonic (folded back past Nyquist) is there too, where a
        # periodic texture or a content edge pattern usually has none.
        harmonic = 2 * freqs
        harmonic = torch.where(harmonic > 0.5, 1.0 - harmonic, harmonic)
        index = torch.round(harmonic * length).long().clamp(1, excess.shape[1] - 2)
        near = torch.maximum(torch.maximum(excess[:, index - 1], excess[:, index]), excess[:, index + 1])
        comb = excess + near
        peak = torch.where(band, comb, torch.zeros_like(comb)).amax(dim=1)
        return peak / (power[:, 1:].sum(dim=1) + _EPS)

    # ------------------------------------------------------------------ score

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(calibrate(logit(terms(self.features(images)), self.weights))).float()


def terms(f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The signed terms of the quality logit (larger is better), from :meth:`HandcraftedScorer.features`."""
    k = KNEES
    plain = torch.exp(-f["background_clutter"] / (f["background_luma"] + 0.1) / CLUTTER_REF)
    return {
        "effective_resolution": torch.log(f["effective_resolution"] + _DETAIL_FLOOR),
        "sharpness": torch.log(f["sharpness"] + _DETAIL_FLOOR),
        "noise": -torch.log1p((f["noise"] / NOISE_REF) ** 2),
        # Log: a grid's share of a busy scene's edge profile stays small however coarse the blocks (a
        # temple scene's at quality 5 is 0.018, a portrait's 0.28), but it grows as many times over its clean level.
        "blockiness": -torch.log(f["blockiness"] + BLOCK_FLOOR),
        "highlight": -_soft_hinge(k["highlight"] - f["highlight"], 0.05),      # brightest tones too dark
        "dark": -_soft_hinge(k["dark"] - f["brightness"], 0.05),               # the whole image too dark
        # Shadows lifted (washed out). Not on a plain backdrop: there the darkest pixels are the
        # product's, and a light product is not an overexposed one (subject_washed judges it).
        "shadow": -(1 - plain) * _soft_hinge(f["shadow"] - k["shadow"], 0.05),
        "clipped": -_soft_hinge(f["clipped"] - k["clipped"], 0.02),            # blown highlights
        "contrast": -_soft_hinge(torch.log(k["contrast"] / (f["contrast"] + 1e-4)), 0.2),   # flat image
        "colourfulness": -_soft_hinge(k["colourfulness"] - f["colourfulness"], 0.03),       # dull colours
        # A busy background: detail in the frame's outer ring, relative to its brightness.
        "background_clutter": -torch.log1p(f["background_clutter"] / (f["background_luma"] + 0.1) / CLUTTER_REF),
        "background_spread": -_soft_hinge(f["background_spread"] - k["background_spread"], 0.01),
        "subject_extent": torch.log(f["subject_extent"] + 0.05),              # the subject fills the frame
        # Marketplaces ask for a product spanning most of the frame (Amazon: ~85 %); under half is a defect.
        "subject_small": -_soft_hinge(k["subject_small"] - f["subject_extent"], 0.05),
        "subject_offset": -_soft_hinge(f["subject_offset"] - k["subject_offset"], 0.02),   # pushed off centre
        "subject_dark": -_soft_hinge(k["subject_dark"] - f["subject_highlight"], 0.05),    # underexposed subject
        "subject_washed": -_soft_hinge(f["subject_shadow"] - k["subject_washed"], 0.05),   # overexposed subject
        "subject_clipped": -_soft_hinge(f["subject_clipped"] - k["subject_clipped"], 0.02),
        # A plain light backdrop that came out grey: the shot is underexposed. A near-black backdrop
        # (a night sky, black velvet) is a choice, not a dim white one, so the term fades out below 0.3.
        "background_dim": -plain * _soft_hinge(k["background_dim"] - f["background_luma"], 0.05)
                          * torch.sigmoid((f["background_luma"] - 0.3) / 0.05),
    }


def logit(t: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``bias + sum(weight * term)``: the uncalibrated quality logit."""
    out = torch.full_like(t["noise"], weights["bias"])
    for name, value in t.items():
        out = out + weights[name] * value
    return out


def calibrate(x: torch.Tensor, knots=None) -> torch.Tensor:
    """Piecewise-linear monotone map through ``knots`` (default :data:`CALIBRATION`), linear past the ends."""
    knots = CALIBRATION if knots is None else knots
    (x0, y0), (x1, y1) = knots[0], knots[1]
    out = y0 + (y1 - y0) / (x1 - x0) * torch.clamp(x - x0, max=0.0)
    for (xa, ya), (xb, yb) in zip(knots[:-1], knots[1:]):
        out = out + (yb - ya) / (xb - xa) * torch.clamp(x - xa, min=0.0, max=xb - xa)
    (xa, ya), (xb, yb) = knots[-2], knots[-1]
    return out + (yb - ya) / (xb - xa) * torch.clamp(x - xb, min=0.0)


def load_handcrafted(spec: str, device: torch.device) -> HandcraftedScorer:
    """The ``--model handcrafted`` loader of :data:`scoring.model.MODEL_KINDS`: weight-free, so only built."""
    return HandcraftedScorer()
