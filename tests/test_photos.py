"""The photo generator: deterministic drawings, graded distortions, bundled real photos."""
import numpy as np
import pytest
from PIL import Image

from scoring.photos import DEGRADATIONS, PRODUCT_KINDS, degrade, draw_product, sample_photos


def test_draw_product_is_deterministic_per_seed_and_differs_across_seeds():
    a = np.asarray(draw_product(np.random.default_rng(7), 128))
    b = np.asarray(draw_product(np.random.default_rng(7), 128))
    c = np.asarray(draw_product(np.random.default_rng(8), 128))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", PRODUCT_KINDS)
def test_every_kind_draws_a_product_distinct_from_the_background(kind):
    img = np.asarray(draw_product(np.random.default_rng(1), 128, kind=kind), dtype=np.float32)
    corner = img[:8, :8].mean(axis=(0, 1))
    centre = img[48:80, 48:80].mean(axis=(0, 1))
    assert np.abs(centre - corner).max() > 20


def test_clutter_and_object_scale_change_the_picture():
    clean = np.asarray(draw_product(np.random.default_rng(3), 128, kind="box"), dtype=np.float32)
    busy = np.asarray(draw_product(np.random.default_rng(3), 128, kind="box", clutter=1.0), dtype=np.float32)
    tiny = np.asarray(draw_product(np.random.default_rng(3), 128, kind="box", object_scale=0.2), dtype=np.float32)
    assert busy[:16].std() > clean[:16].std() + 10        # a busy background, not a studio sweep
    background = clean[2, 2]
    covered = lambda im: (np.abs(im - background).max(axis=2) > 30).mean()  # noqa: E731
    assert covered(tiny) < covered(clean) / 4


@pytest.mark.parametrize("bad", [dict(clutter=1.5), dict(object_scale=0), dict(kind="lamp")])
def test_draw_product_refuses_bad_arguments(bad):
    with pytest.raises(ValueError):
        draw_product(np.random.default_rng(0), 64, **bad)


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degrade_level_zero_is_identity_and_strength_grows(kind):
    img = draw_product(np.random.default_rng(2), 128)
    original = np.asarray(img, dtype=np.float32)
    assert np.array_equal(np.asarray(degrade(img, kind, 0.0)), original.astype(np.uint8))
    change = [np.abs(np.asarray(degrade(img, kind, level), dtype=np.float32) - original).mean()
              for level in (0.25, 0.5, 1.0)]
    assert change[0] > 0
    assert change[-1] > change[0]


def test_degrade_refuses_unknown_kind_and_level_out_of_range():
    img = draw_product(np.random.default_rng(0), 64)
    with pytest.raises(ValueError, match="unknown distortion"):
        degrade(img, "sepia", 0.5)
    with pytest.raises(ValueError, match="level"):
        degrade(img, "blur", 1.5)


def test_noise_is_reproducible_with_a_seed():
    img = draw_product(np.random.default_rng(0), 64)
    assert np.array_equal(np.asarray(degrade(img, "noise", 0.5, seed=1)), np.asarray(degrade(img, "noise", 0.5, seed=1)))


def test_sample_photos_are_real_rgb_photos_bundled_offline():
    photos = sample_photos()
    names = [name for name, _ in photos]
    assert {"astronaut", "coffee", "chelsea", "rocket"} <= set(names)
    for name, img in photos:
        assert isinstance(img, Image.Image) and img.mode == "RGB", name
        assert min(img.size) >= 256, name
