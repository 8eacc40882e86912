"""The handcrafted baseline: interface, what each feature measures, and that it ranks distortions right."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from scoring.handcrafted import HandcraftedScorer
from scoring.model import load_model
from scoring.photos import DEGRADATIONS, degrade, draw_product, sample_photos
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
    assert model.model_id == "handcrafted-v1" and model.input_size == 384


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


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_ranks_graded_distortions_of_real_photos(rhos, kind):
    values = {name: rho for (k, name), rho in rhos.items() if k == kind}
    assert np.mean(list(values.values())) <= -0.9, values
    assert min(values.values()) <= -0.999, values              # at least one photo ranked perfectly
    assert max(values.values()) <= -0.5, values                # and none ranked mostly backwards


def test_ranks_clean_drawn_products_above_degraded_ones(model):
    clean = [draw_product(np.random.default_rng(seed), 512) for seed in range(6)]
    with torch.no_grad():
        clean_scores = model(as_batch(*clean))
        for kind in DEGRADATIONS:
            degraded = model(as_batch(*(degrade(img, kind, 1.0, seed=i) for i, img in enumerate(clean))))
            assert bool((clean_scores > degraded).all()), (kind, clean_scores, degraded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(model, photos):
    batch = as_batch(*(img for _, img in photos))
    with torch.no_grad():
        cpu = model(batch)
        gpu = HandcraftedScorer().eval().cuda()(batch.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=2e-3)
