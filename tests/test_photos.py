"""The photo generator: deterministic drawings, graded distortions, bundled real photos."""
import sys

import numpy as np
import pytest
from PIL import Image

from scoring.photos import (
    DEGRADATIONS,
    HELDOUT_OBJECTS,
    HELDOUT_TEXTURES,
    LISTING_OBJECTS,
    LISTING_PAIR_KINDS,
    LISTING_TEXTURES,
    PRODUCT_KINDS,
    TUNE_OBJECTS,
    TUNE_TEXTURES,
    compose_listing,
    cutout,
    degrade,
    draw_product,
    heldout_photos,
    listing_pairs,
    sample_photos,
    studio_background,
    texture,
    tune_photos,
)


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


# --------------------------------------------------------------------------- listing composites

@pytest.mark.parametrize("name", LISTING_OBJECTS + HELDOUT_OBJECTS)
def test_cutouts_are_real_objects_with_a_mask(name):
    obj = cutout(name)
    alpha = np.asarray(obj.getchannel("A"), dtype=np.float32) / 255
    assert obj.mode == "RGBA" and min(obj.size) >= 40, obj.size
    # Cropped to the mask: the object touches every side of its box, and it is not all box.
    assert min(alpha[0].max(), alpha[-1].max(), alpha[:, 0].max(), alpha[:, -1].max()) > 0.4
    assert 0.25 < alpha.mean() <= 1.0
    assert np.array_equal(np.asarray(cutout(name)), np.asarray(obj))  # derived by fixed rules: reproducible


@pytest.mark.parametrize("name", LISTING_TEXTURES + HELDOUT_TEXTURES)
def test_textures_are_busy_and_the_studio_sweep_is_plain(name):
    busy = np.asarray(texture(name, 128), dtype=np.float32)
    plain = np.asarray(studio_background(128), dtype=np.float32)
    detail = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert busy.shape == (128, 128, 3) and detail(busy) > 5 * detail(plain) + 1


def test_compose_listing_places_the_object_at_its_size_and_offset():
    obj, plain = cutout("cup"), studio_background(200)
    covered = lambda im: np.abs(np.asarray(im, np.float32) - np.asarray(plain, np.float32)).max(axis=2) > 40  # noqa: E731
    big, small = covered(compose_listing(obj, plain, 0.8)), covered(compose_listing(obj, plain, 0.3))
    assert big.mean() > 4 * small.mean()
    cols = np.flatnonzero(covered(compose_listing(obj, plain, 0.3, (0.3, 0.0))).any(axis=0))
    assert cols.mean() > 100 + 0.25 * 200


@pytest.mark.parametrize("name", HELDOUT_OBJECTS)
def test_heldout_cutouts_cut_the_object_out_of_its_photo(name):
    """A real cut: a large object, not its whole box and not the whole photo (the backdrop is gone)."""
    obj = cutout(name)
    alpha = np.asarray(obj.getchannel("A"), dtype=np.float32) / 255
    assert min(obj.size) >= 100, obj.size
    assert 0.3 < alpha.mean() < 0.95, alpha.mean()
    photo = dict(heldout_photos())[name]
    assert alpha.sum() < 0.75 * photo.width * photo.height  # the backdrop around it is gone


@pytest.mark.parametrize("name", HELDOUT_TEXTURES)
def test_heldout_textures_are_busy_512_px_rgb(name):
    img = texture(name)
    luma = np.asarray(img.convert("L"), dtype=np.float32)
    assert img.mode == "RGB" and img.size == (512, 512)
    assert luma.std() > 10, luma.std()


@pytest.mark.parametrize("call", [lambda: cutout("lamp"), lambda: texture("carpet"),
                                  lambda: compose_listing(cutout("cup"), studio_background(64), 1.5)])
def test_listing_helpers_refuse_unknown_names_and_bad_fill(call):
    with pytest.raises(ValueError, match="unknown listing object 'lamp'|unknown texture 'carpet'|fill must be"):
        call()


def test_unknown_names_list_every_known_object_and_texture():
    with pytest.raises(ValueError) as object_error:
        cutout("lamp")
    with pytest.raises(ValueError) as texture_error:
        texture("carpet")
    assert all(name in str(object_error.value) for name in LISTING_OBJECTS + HELDOUT_OBJECTS)
    assert all(name in str(texture_error.value) for name in LISTING_TEXTURES + HELDOUT_TEXTURES)


def test_heldout_photos_without_scikit_learn_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="scikit-learn.*imagescore\\[dev\\]"):
        texture("china")
    with pytest.raises(ImportError, match="scikit-learn"):
        cutout("flower")
    assert texture("brick").size == (512, 512)  # the other textures do not need it


def test_heldout_photos_without_pywavelets_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywt.data", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pywt", None)
    with pytest.raises(ImportError, match="'aero' needs PyWavelets.*imagescore\\[dev\\]"):
        heldout_photos()
    assert {name for name, _ in tune_photos()} >= {"coins", "gravel"}  # the tuning split does not need it


def test_listing_pairs_cover_every_kind():
    pairs = list(listing_pairs(("cup",), ("brick",), size=96))
    assert {kind for kind, *_ in pairs} == set(LISTING_PAIR_KINDS)
    assert all(better.size == worse.size == (96, 96) for _, better, worse, _ in pairs)


def test_splits_are_disjoint_and_the_demo_objects_all_tune():
    assert TUNE_OBJECTS == LISTING_OBJECTS and TUNE_TEXTURES == LISTING_TEXTURES
    assert HELDOUT_OBJECTS == ("flower", "hopper") and HELDOUT_TEXTURES == ("china", "moon", "text")
    assert not set(TUNE_OBJECTS) & set(HELDOUT_OBJECTS) and not set(TUNE_TEXTURES) & set(HELDOUT_TEXTURES)
    tune = [name for name, _ in tune_photos()]
    heldout = [name for name, _ in heldout_photos()]
    assert {name for name, _ in sample_photos()} <= set(tune)
    assert {"coins", "gravel", "hubble", "motorcycle-listing", "rocket-listing", "logo-listing"} <= set(tune)
    assert heldout == ["china", "flower", "hopper", "aero", "ascent", "flower-listing", "hopper-listing"]
    assert not set(tune) & set(heldout) and len(set(tune)) == len(tune)
    for name, img in tune_photos() + heldout_photos():
        assert img.mode == "RGB" and min(img.size) >= 256, name
