"""The handcrafted baseline: interface, what each feature measures, that it ranks distortions and listing shots right."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from scoring.handcrafted import CALIBRATION, HandcraftedScorer, calibrate, terms
from scoring.model import load_model
from scoring.photos import (
    DEGRADATIONS,
    compose_listing,
    cutout,
    degrade,
    draw_product,
    listing_pairs,
    sample_photos,
    studio_background,
    texture,
)
from transforms.decode import decode_image

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def model():
    return HandcraftedScorer().eval()


@pytest.fixture(scope="module")
def photos():
    return sample_photos()


def as_batch(*images: Image.Image, size: int = 384, fmt: str = "PNG") -> torch.Tensor:
    """Encode and decode through the production decoder, as the pipelines do."""
    arrays = []
    for img in images:
        buffer = io.BytesIO()
        img.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        arrays.append(decode_image(buffer.getvalue(), size))
    return torch.from_numpy(np.stack(arrays))


def test_interface_scores_in_unit_interval_and_is_batch_independent(model, photos):
    batch = as_batch(*(img for _, img in photos[:3]))
    with torch.no_grad():
        scores = model(batch)
        single = torch.cat([model(batch[i:i + 1]) for i in range(3)])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert bool(((scores > 0) & (scores < 1)).all())
    assert torch.allclose(scores, single, atol=1e-5)
    assert model.model_id == "handcrafted-v4" and model.input_size == 384


def test_load_model_returns_the_handcrafted_scorer():
    loaded = load_model("handcrafted", device="cpu")
    assert isinstance(loaded, HandcraftedScorer) and not loaded.training


@pytest.mark.parametrize("bad", [torch.zeros(1, 384, 384, 3), torch.zeros(1, 224, 224, 3, dtype=torch.uint8),
                                 torch.zeros(1, 3, 384, 384, dtype=torch.uint8)])
def test_refuses_batches_that_break_the_interface(model, bad):
    with pytest.raises(ValueError, match="uint8 NHWC|384x384"):
        model(bad)


def test_noise_feature_tracks_added_noise(model):
    rng = np.random.default_rng(0)
    flat = np.full((2, 384, 384, 3), 120.0)
    flat[1] += rng.standard_normal(flat[1].shape) * 8.0
    feats = model.features(torch.from_numpy(np.clip(np.rint(flat), 0, 255).astype(np.uint8)))
    assert feats["noise"][0] < 0.001
    # Measured in luma, which averages three independent channels: 8 / 255 / sqrt(~2.3).
    assert 0.012 < float(feats["noise"][1]) < 0.03


def test_effective_resolution_sees_an_upscaled_photo(model, photos):
    astronaut = dict(photos)["astronaut"]
    upscaled = astronaut.resize((128, 128), Image.Resampling.LANCZOS).resize(astronaut.size, Image.Resampling.LANCZOS)
    feats = model.features(as_batch(astronaut, upscaled))
    assert feats["effective_resolution"][1] < 0.5 * feats["effective_resolution"][0]


def test_blockiness_sees_jpeg_blocks_not_texture(model, photos):
    coffee = dict(photos)["coffee"]
    feats = model.features(as_batch(coffee, degrade(coffee, "jpeg", 1.0), degrade(coffee, "blur", 0.5)))
    assert feats["blockiness"][1] > 5 * feats["blockiness"][0]
    assert feats["blockiness"][2] < 2 * feats["blockiness"][0] + 0.01


def test_exposure_features_move_the_right_way(model, photos):
    astronaut = dict(photos)["astronaut"]
    feats = model.features(as_batch(astronaut, degrade(astronaut, "underexpose", 0.5),
                                    degrade(astronaut, "overexpose", 0.5)))
    assert feats["highlight"][1] < feats["highlight"][0] and feats["brightness"][1] < feats["brightness"][0]
    assert feats["clipped"][2] > feats["clipped"][0] + 0.1


def test_blockiness_sees_jpeg_on_a_photo_upscaled_before_compression(model, photos):
    """Apps upscale phone photos before re-saving them: the 8 px grid lands at ~3 px in the model's crop."""
    coffee = dict(photos)["coffee"]
    upscaled = coffee.resize((2 * coffee.width, 2 * coffee.height), Image.Resampling.BICUBIC)
    feats = model.features(as_batch(upscaled, degrade(upscaled, "jpeg", 0.75), degrade(upscaled, "jpeg", 1.0)))
    assert feats["blockiness"][1] > 5 * feats["blockiness"][0]
    assert feats["blockiness"][2] > feats["blockiness"][1]


def test_heavy_jpeg_does_not_earn_blown_highlights_back(model):
    """At quality 5 JPEG quantises a block at 255 down to ~248; v3's 0.98 blown line then read the white print's
    share as 0.24 -> 0.07, and the clipped terms paid the heavy JPEG back (the held-out china scene ranked its
    quality-5 crop first)."""
    shot = compose_listing(cutout("logo"), studio_background(512), 0.8)
    upscaled = shot.resize((2 * shot.width, 2 * shot.height), Image.Resampling.BICUBIC)
    batch = as_batch(upscaled, *(degrade(upscaled, "jpeg", level) for level in (0.5, 0.75, 1.0)))
    f = model.features(batch)
    assert float(f["clipped"][3]) > 0.9 * float(f["clipped"][0]), f["clipped"]
    scores = model(batch).tolist()
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_layout_features_see_background_size_and_placement(model):
    cup, plain = cutout("cup"), studio_background(512)
    shots = [compose_listing(cup, plain, 0.8), compose_listing(cup, texture("gravel"), 0.8),
             compose_listing(cup, plain, 0.3), compose_listing(cup, plain, 0.4, (0.28, 0.25))]
    f = model.features(as_batch(*shots, fmt="JPEG"))
    assert f["background_clutter"][1] > 20 * f["background_clutter"][0]
    assert f["subject_extent"][0] > 0.6 and f["subject_extent"][2] < 0.4   # 5-95 % mass widths, not the box
    assert f["subject_offset"][3] > 0.25 > 0.05 > f["subject_offset"][0]
    assert abs(float(f["background_luma"][0]) - 0.93) < 0.03


def test_subject_extent_shrinks_with_the_product(model):
    """The soft mask's faint tail over a plain backdrop must not stretch a small product's extent (v2 measured a
    product a fifth of the frame wide as 0.63, wider than one half as wide), and under half the frame is penalised."""
    bike, plain = cutout("motorcycle"), studio_background(512)
    fills = (0.8, 0.5, 0.3, 0.2, 0.12)
    f = model.features(as_batch(*(compose_listing(bike, plain, fill) for fill in fills), fmt="JPEG"))
    extent = f["subject_extent"].tolist()
    assert all(a > b for a, b in zip(extent, extent[1:])), extent
    assert extent[3] < 0.25, extent
    penalty = terms(f)["subject_small"].tolist()
    assert penalty[0] > -0.05 and all(a > b for a, b in zip(penalty, penalty[1:])), penalty


def test_a_studio_sweep_reads_as_plain_however_it_was_encoded(model):
    """A sweep's gradient is background, not clutter, before and after JPEG (v2 read 0.003 in PNG and 0 at quality
    60, so any JPEG lifted a studio shot's score), and its 8-bit banding is not a block grid: blockiness rises with
    every JPEG level (v2's fell from the PNG to quality 35, where the banding's peak outweighed the grid's)."""
    shot = compose_listing(cutout("rocket"), studio_background(512), 0.8)
    f = model.features(as_batch(shot, *(degrade(shot, "jpeg", level) for level in (0.25, 0.5, 1.0)), texture("gravel")))
    clutter, blocks = f["background_clutter"].tolist(), f["blockiness"].tolist()
    assert max(clutter[:4]) < 0.004 and max(clutter[:4]) - min(clutter[:4]) < 0.001 and clutter[4] > 0.1, clutter
    assert all(a < b for a, b in zip(blocks[:4], blocks[1:4])), blocks


def test_white_print_at_255_does_not_lower_the_effective_resolution(model):
    """Both octaves of the ratio are measured on unclipped pixels, so a print at 255 does not lower it (v2: 0.49 at
    the right exposure, 0.80 a stop darker, when the print was no longer clipped)."""
    shot = compose_listing(cutout("logo"), studio_background(512), 0.8)
    f = model.features(as_batch(shot, degrade(shot, "underexpose", 0.2), fmt="JPEG"))
    assert float(f["clipped"][0]) > 0.1 > float(f["clipped"][1])
    assert float(f["effective_resolution"][1]) < 1.1 * float(f["effective_resolution"][0]), f["effective_resolution"]


def test_noise_floor_survives_scattered_blown_highlights(model):
    """Overexposed gravel has blown stones in every 16 px patch; its floor comes from the unclipped part of each
    patch instead of the frame turning "noise-free" (which v2 rewarded)."""
    gravel = Image.fromarray(np.asarray(texture("gravel"), np.uint8))
    f = model.features(as_batch(gravel, degrade(gravel, "overexpose", 0.75)))
    assert float(f["clipped"][1]) > 0.2
    assert float(f["noise"][1]) > 0.5 * float(f["noise"][0]) > 0


def test_calibration_is_strictly_monotone_and_keeps_scores_off_zero_and_one():
    x = torch.linspace(-80, 80, 2001)
    y = calibrate(x)
    assert bool((y[1:] > y[:-1]).all())
    knots = torch.tensor([k[0] for k in CALIBRATION])
    assert torch.allclose(calibrate(knots), torch.tensor([k[1] for k in CALIBRATION]), atol=1e-5)


def test_scores_spread_over_the_unit_interval(model, photos):
    """No pile-up at 0 or 1: clean and heavily degraded photos alike stay inside [0.005, 0.995]."""
    images = [img for _, img in photos] + [degrade(img, kind, 1.0) for _, img in photos[:3] for kind in DEGRADATIONS]
    with torch.no_grad():
        scores = model(as_batch(*images)).numpy()
    assert scores.min() > 0.005 and scores.max() < 0.995
    assert scores.max() - scores.min() > 0.5


def test_orders_listing_pairs_as_a_buyer_would(model):
    """Clean over cluttered, large over small, well exposed over dim and bright, sharp over blurred.

    On one tuning object and texture: no test looks at the held-out split's
    scores; the full figures on both splits are bench/bench_listing.py's.
    """
    right = []
    with torch.no_grad():
        for kind, better, worse, what in listing_pairs(("logo",), ("gravel",)):
            hi, lo = model(as_batch(better, worse, fmt="JPEG")).tolist()
            right.append((kind, hi > lo, what))
    assert np.mean([ok for _, ok, _ in right]) >= 0.85, [r for r in right if not r[1]]
    for kind in ("clutter", "size", "blur"):
        assert all(ok for k, ok, _ in right if k == kind), [r for r in right if r[0] == kind]


@pytest.fixture(scope="module")
def rhos(model, photos):
    """Spearman rho of (level, score) per distortion and photo, through the real decode path."""
    out = {}
    with torch.no_grad():
        for kind in DEGRADATIONS:
            for name, img in photos:
                scores = model(as_batch(*(degrade(img, kind, level) for level in LEVELS))).numpy()
                out[kind, name] = float(spearmanr(LEVELS, scores)[0])
    return out


#: handcrafted-v4 measures -0.87 here (v3: -0.75, v2: -0.85, v1: -0.92): brightening the rocket's night scene by a
#: stop or two reads as a better-exposed photo, and the camera photo's sky blows out into what reads as a white
#: backdrop (both -0.7). See the known limits in docs/decoding-and-baseline.md.
MEAN_RHO = {"overexpose": -0.8}
WORST_RHO = {"overexpose": -0.5}


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_ranks_graded_distortions_of_real_photos(rhos, kind):
    values = {name: rho for (k, name), rho in rhos.items() if k == kind}
    assert np.mean(list(values.values())) <= MEAN_RHO.get(kind, -0.9), values
    assert min(values.values()) <= -0.999, values              # at least one photo ranked perfectly
    assert max(values.values()) <= WORST_RHO.get(kind, -0.5), values   # and none ranked mostly backwards


def test_ranks_clean_drawn_products_above_degraded_ones(model):
    clean = [draw_product(np.random.default_rng(seed), 512) for seed in range(6)]
    with torch.no_grad():
        clean_scores = model(as_batch(*clean))
        for kind in DEGRADATIONS:
            degraded = model(as_batch(*(degrade(img, kind, 1.0, seed=i) for i, img in enumerate(clean))))
            # Heavy JPEG adds fine detail to the flat drawings and smooths their backdrop: one of six may tie
            # or win (documented limit); real photos are held to the full ordering above.
            wins = int((clean_scores > degraded).sum())
            assert wins >= (5 if kind == "jpeg" else 6), (kind, clean_scores, degraded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(model, photos):
    batch = as_batch(*(img for _, img in photos))
    with torch.no_grad():
        cpu = model(batch)
        gpu = HandcraftedScorer().eval().cuda()(batch.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=2e-3)
