"""Product photos with known quality: procedurally drawn products, graded distortions, real sample photos.

The demo catalog, the offline marketplace simulator and the tests need images
whose relative quality is known without a human: a clean drawing is better
than the same drawing blurred, and a stronger distortion is worse than a
weaker one. :func:`draw_product` draws a deterministic product shot (seeded
``numpy.random.Generator``), :func:`degrade` applies one distortion at a level
in [0, 1] (0 leaves the image untouched), and :func:`sample_photos` returns
the real photographs that ship inside scikit-image (no download).
:func:`cutout` cuts real objects out of those photos by fixed rules,
:func:`compose_listing` places one on a studio sweep or a busy real texture,
and :func:`listing_pairs` yields the listing-photo pairs a buyer would order.

The handcrafted scorer is tuned on one split (:func:`tune_photos`,
:data:`TUNE_OBJECTS`, :data:`TUNE_TEXTURES`) and reported on another
(:func:`heldout_photos`, :data:`HELDOUT_OBJECTS`, :data:`HELDOUT_TEXTURES`):
photos bundled in scikit-learn, matplotlib, PyWavelets and scikit-image that
the scorer was never fitted on (docs/decoding-and-baseline.md says which were
looked at while designing it).
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PRODUCT_KINDS = ("bag", "shoe", "bottle", "box", "shirt")
DEGRADATIONS = ("blur", "noise", "jpeg", "underexpose", "overexpose", "lowres")

_SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled, so edges are antialiased like a camera's
_GAMMA = 2.2


# --------------------------------------------------------------------------- drawing

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _mask(size: int, draw_fn) -> np.ndarray:
    """A float mask in [0, 1] drawn at supersampled resolution, then box-downsampled."""
    big = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw_fn(ImageDraw.Draw(big), _SUPERSAMPLE)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _shape_masks(kind: str, size: int, scale: float, cx: float, cy: float):
    """(body mask, detail mask, shading axis) for one product kind, centred on (cx, cy) in pixels."""
    r = 0.34 * size * scale  # half-extent of the product

    def P(x: float, y: float, k: int) -> tuple[float, float]:
        return ((cx + x * r) * k, (cy + y * r) * k)

    def poly(points):
        return lambda d, k: d.polygon([P(x, y, k) for x, y in points], fill=255)

    width = max(1, int(round(0.06 * r)))
    if kind == "bag":
        body = poly([(-0.85, -0.25), (0.85, -0.25), (1.0, 0.85), (-1.0, 0.85)])

        def detail(d, k):
            d.arc([P(-0.5, -0.95, k), P(0.5, 0.35, k)], 180, 360, fill=255, width=width * k)
            d.line([P(-0.9, 0.05, k), P(0.9, 0.05, k)], fill=255, width=max(1, width * k // 2))
            d.rectangle([P(-0.12, 0.0, k), P(0.12, 0.18, k)], fill=255)
        axis = "y"
    elif kind == "shoe":
        def body(d, k):
            d.ellipse([P(-1.0, -0.1, k), P(1.0, 0.55, k)], fill=255)
            d.polygon([P(-0.9, 0.3, k), P(-0.7, -0.55, k), P(-0.1, -0.55, k), P(0.2, 0.1, k)], fill=255)

        def detail(d, k):
            d.rectangle([P(-1.0, 0.48, k), P(1.0, 0.62, k)], fill=255)  # sole
            for i in range(4):
                x = -0.55 + 0.17 * i
                d.line([P(x, -0.35 + 0.1 * i, k), P(x + 0.2, -0.25 + 0.1 * i, k)], fill=255, width=max(1, width * k // 2))
        axis = "y"
    elif kind == "bottle":
        def body(d, k):
            d.rounded_rectangle([P(-0.4, -0.35, k), P(0.4, 0.95, k)], radius=0.15 * r * k, fill=255)
            d.rectangle([P(-0.15, -0.8, k), P(0.15, -0.3, k)], fill=255)
            d.rectangle([P(-0.2, -0.95, k), P(0.2, -0.75, k)], fill=255)

        def detail(d, k):
            d.rectangle([P(-0.4, 0.1, k), P(0.4, 0.55, k)], fill=255)  # label
        axis = "x"
    elif kind == "box":
        body = poly([(-0.8, -0.4), (0.4, -0.4), (0.4, 0.9), (-0.8, 0.9)])

        def detail(d, k):
            d.polygon([P(-0.8, -0.4, k), P(-0.4, -0.8, k), P(0.8, -0.8, k), P(0.4, -0.4, k)], fill=255)
            d.polygon([P(0.4, -0.4, k), P(0.8, -0.8, k), P(0.8, 0.5, k), P(0.4, 0.9, k)], fill=255)
        axis = "y"
    elif kind == "shirt":
        body = poly([(-0.35, -0.9), (-0.1, -0.8), (0.1, -0.8), (0.35, -0.9), (1.0, -0.5), (0.8, -0.15),
                     (0.55, -0.3), (0.55, 0.95), (-0.55, 0.95), (-0.55, -0.3), (-0.8, -0.15), (-1.0, -0.5)])

        def detail(d, k):
            d.arc([P(-0.25, -1.05, k), P(0.25, -0.6, k)], 0, 180, fill=255, width=width * k)
            d.line([P(-0.55, 0.85, k), P(0.55, 0.85, k)], fill=255, width=max(1, width * k // 2))
        axis = "y"
    else:
        raise ValueError(f"unknown product kind {kind!r}; choose one of {', '.join(PRODUCT_KINDS)}")
    return _mask(size, body), _mask(size, detail), axis


def _background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """A studio sweep (near-white gradient), with ``clutter`` in [0, 1] of random household objects on top."""
    y = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    tint = _hsv_to_rgb(rng.random(), 0.05 * rng.random(), 1.0)
    clean = (0.97 - 0.10 * y) * tint * np.ones((size, size, 3), np.float32)
    if clutter <= 0:
        return clean
    busy = Image.new("RGB", (size, size), tuple(int(c * 255) for c in _hsv_to_rgb(rng.random(), 0.3, 0.55)))
    d = ImageDraw.Draw(busy)
    for _ in range(int(round(8 + 60 * clutter))):
        colour = tuple(int(c * 255) for c in _hsv_to_rgb(rng.random(), 0.3 + 0.6 * rng.random(), 0.2 + 0.8 * rng.random()))
        x0, y0 = rng.integers(-size // 8, size, 2)
        w, h = rng.integers(size // 20, size // 3, 2)
        shape = rng.integers(0, 3)
        if shape == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif shape == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(2, 9)))
    busy_arr = np.asarray(busy, dtype=np.float32) / 255.0
    mix = min(1.0, clutter * 1.25)
    return (1 - mix) * clean + mix * busy_arr


def draw_product(rng: np.random.Generator, size: int = 512, *, kind: str | None = None, clutter: float = 0.0,
                 object_scale: float = 1.0, off_center: float = 0.0) -> Image.Image:
    """Draw one product photo (RGB, ``size`` x ``size``), deterministic for the generator's state.

    ``kind`` picks bag/shoe/bottle/box/shirt (random when None); ``clutter`` in
    [0, 1] replaces the clean studio background with a busy scene;
    ``object_scale`` (1 = fills most of the frame, 0.2 = a tiny product) and
    ``off_center`` in [0, 1] (how far the product drifts toward an edge)
    model the framing mistakes sellers make.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if not 0.0 <= clutter <= 1.0 or not 0.0 <= off_center <= 1.0 or object_scale <= 0:
        raise ValueError(f"clutter and off_center must be in [0, 1] and object_scale > 0, got "
                         f"clutter={clutter} off_center={off_center} object_scale={object_scale}")
    kind = kind or PRODUCT_KINDS[int(rng.integers(len(PRODUCT_KINDS)))]
    angle = rng.random() * 2 * math.pi
    cx = size / 2 + off_center * 0.3 * size * math.cos(angle)
    cy = size / 2 + off_center * 0.3 * size * math.sin(angle)
    background = _background(rng, size, clutter)
    body, detail, axis = _shape_masks(kind, size, object_scale, cx, cy)

    base = _hsv_to_rgb(rng.random(), 0.35 + 0.6 * rng.random(), 0.45 + 0.5 * rng.random())
    accent = _hsv_to_rgb(rng.random(), 0.2 + 0.7 * rng.random(), 0.2 + 0.7 * rng.random())
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    extent = 0.34 * size * object_scale
    u = ((xx - cx) if axis == "x" else (yy - cy)) / max(extent, 1.0)
    # Soft key light from the upper left: a smooth falloff plus a specular band.
    shade = 0.6 + 0.45 * np.cos(np.clip(u, -1.5, 1.5) * 1.1 + 0.4)
    highlight = 0.35 * np.exp(-((u + 0.35) / 0.12) ** 2)
    # Fine material texture (weave / grain), the detail a sharp photo shows and a soft one loses.
    period = max(2.0, 3.0 * size / 512)
    texture = 0.05 * np.sin(xx * 2 * math.pi / period) * np.sin(yy * 2 * math.pi / (period * 1.3))
    texture += 0.03 * rng.standard_normal((size, size)).astype(np.float32)
    product = base[None, None, :] * (shade + texture)[..., None] + highlight[..., None]
    product = detail[..., None] * accent[None, None, :] * shade[..., None] + (1 - detail[..., None]) * product

    # Contact shadow under the product, blurred like a soft box makes it.
    shadow = Image.fromarray((body * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 40))
    shadow_arr = np.roll(np.asarray(shadow, dtype=np.float32) / 255.0, int(size * 0.03), axis=0)
    canvas = background * (1 - 0.6 * shadow_arr[..., None])
    alpha = np.maximum(body, detail)[..., None]
    canvas = canvas * (1 - alpha) + product * alpha
    return Image.fromarray(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------- distortions

def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(x, _GAMMA)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 1.0 / _GAMMA)


def _exposure(img: Image.Image, stops: float) -> Image.Image:
    """Scale linear light by 2**stops (what a wrong shutter time does) and clip, as a camera would."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    out = _linear_to_srgb(_srgb_to_linear(arr) * (2.0 ** stops))
    return Image.fromarray(np.rint(out * 255).astype(np.uint8), mode="RGB")


def degrade(img: Image.Image, kind: str, level: float, *, seed: int = 0) -> Image.Image:
    """Apply one distortion at ``level`` in [0, 1]; 0 returns an unchanged copy, 1 is severe.

    Strengths scale with the image so a level means the same on any size:
    ``blur`` Gaussian sigma up to 1% of the short side; ``noise`` Gaussian sensor
    noise up to sigma 40/255 per channel; ``jpeg`` re-encodes at quality 90 down to 5;
    ``underexpose`` / ``overexpose`` up to -5 / +3 stops in linear light;
    ``lowres`` downsamples by up to 8x and upsamples back (bicubic). ``seed``
    fixes the noise.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown distortion {kind!r}; choose one of {', '.join(DEGRADATIONS)}")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level}")
    img = img.convert("RGB")
    if level == 0:
        return img.copy()
    short = min(img.size)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=0.01 * short * level))
    if kind == "noise":
        rng = np.random.default_rng(seed)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.standard_normal(arr.shape).astype(np.float32) * (40.0 * level)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")
    if kind == "jpeg":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=int(round(5 + 85 * (1.0 - level) ** 1.5)))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "underexpose":
        return _exposure(img, -5.0 * level)
    if kind == "overexpose":
        return _exposure(img, 3.0 * level)
    factor = 2.0 ** (-3.0 * level)  # lowres
    small = (max(1, round(img.size[0] * factor)), max(1, round(img.size[1] * factor)))
    return img.resize(small, Image.Resampling.BICUBIC, reducing_gap=2.0).resize(img.size, Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- real photos

# Real-scene photographs bundled in the scikit-image wheel (no network); microscopy,
# astronomy and synthetic test cards are left out because they are not photos of things.
_SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera")


def sample_photos() -> list[tuple[str, Image.Image]]:
    """``(name, RGB image)`` for scikit-image's bundled real photographs."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("sample_photos() needs scikit-image: pip install 'imagescore[demo]'") from exc
    photos = []
    for name in _SAMPLE_NAMES:
        array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        photos.append((name, Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")))
    return photos


def _listing_shots(objects: tuple[str, ...]) -> list[tuple[str, Image.Image]]:
    """``("<object>-listing", shot)``: each object filling 0.8 of a 512 px studio sweep."""
    return [(f"{name}-listing", compose_listing(cutout(name), studio_background(512), 0.8)) for name in objects]


def tune_photos() -> list[tuple[str, Image.Image]]:
    """The real photos the handcrafted scorer is tuned on for graded distortions.

    scikit-image's sample photos, three more of its photos (coins, gravel,
    hubble) and listing shots of three tuning objects. The last six were once a
    held-out split; they were looked at while designing features, so they tune.
    """
    data = _skimage_data()
    return (sample_photos()
            + [("coins", Image.fromarray(data.coins()).convert("RGB")),
               ("gravel", Image.fromarray(data.gravel()).convert("RGB")),
               ("hubble", Image.fromarray(data.hubble_deep_field()).convert("RGB"))]
            + _listing_shots(("motorcycle", "rocket", "logo")))


def heldout_photos() -> list[tuple[str, Image.Image]]:
    """Real photos the handcrafted scorer was neither designed nor tuned on.

    scikit-learn's china and flower photos, matplotlib's portrait of Grace
    Hopper, PyWavelets' aerial photo and its people on a stair tower (greyscale,
    added in the fourth session, scored only after they were added), and listing
    shots of the held-out objects (:data:`HELDOUT_OBJECTS`).
    """
    return ([("china", Image.fromarray(_sklearn_photo("china.jpg"))),
             ("flower", Image.fromarray(_sklearn_photo("flower.jpg"))),
             ("hopper", Image.fromarray(_hopper_photo())),
             ("aero", Image.fromarray(_pywt_photo("aero")).convert("RGB")),
             ("ascent", Image.fromarray(_pywt_photo("ascent")).convert("RGB"))]
            + _listing_shots(HELDOUT_OBJECTS))


# --------------------------------------------------------------------------- listing-style composites

# Real objects cut out of scikit-image's bundled photos, each with a mask derived by fixed rules
# (colour thresholds, morphology, largest component; an ellipse where no rule separates the object).
# The demo catalog (pipelines/catalog.py) shows these.
LISTING_OBJECTS = ("cup", "cat", "ball", "page", "motorcycle", "rocket", "logo")
# Busy real backgrounds: textures and scenes from the same photos (greyscale ones tinted warm).
LISTING_TEXTURES = ("brick", "grass", "cells", "gravel", "garage", "coins")
# The handcrafted scorer is tuned on all of those (they were all looked at while designing it) and reported on
# objects and textures from photos in scikit-learn's, matplotlib's and scikit-image's wheels that nobody had
# scored (bench/bench_listing.py --split heldout).
TUNE_OBJECTS, TUNE_TEXTURES = LISTING_OBJECTS, LISTING_TEXTURES
HELDOUT_OBJECTS = ("flower", "hopper")
HELDOUT_TEXTURES = ("china", "moon", "text")
LISTING_PAIR_KINDS = ("clutter", "size", "dim", "bright", "blur", "placement")


def _skimage_data():
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("listing photos need scikit-image: pip install 'imagescore[demo]'") from exc
    return data


def _sklearn_photo(name: str) -> np.ndarray:
    """One of the photos bundled in scikit-learn's wheel (uint8 RGB, 427 x 640)."""
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise ImportError(f"the held-out photo {name!r} needs scikit-learn: pip install 'imagescore[dev]'") from exc
    return np.asarray(load_sample_image(name), dtype=np.uint8)


def _pywt_photo(name: str) -> np.ndarray:
    """One of the greyscale photos bundled in PyWavelets' wheel (uint8, 512 x 512)."""
    try:
        import pywt.data
    except ImportError as exc:
        raise ImportError(f"the held-out photo {name!r} needs PyWavelets: pip install 'imagescore[dev]'") from exc
    return np.asarray(getattr(pywt.data, name)(), dtype=np.uint8)


def _hopper_photo() -> np.ndarray:
    """matplotlib's bundled portrait of Grace Hopper (uint8 RGB, 600 x 512)."""
    from matplotlib import cbook
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"), dtype=np.uint8)


def _largest_filled(mask: np.ndarray, close: int, open_: int) -> np.ndarray:
    from scipy import ndimage as ndi
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, iterations=close))
    mask = ndi.binary_opening(mask, iterations=open_)
    labels, count = ndi.label(mask)
    if count == 0:
        raise ValueError("the cut-out rule found no object")
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    return ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0


def cutout(name: str) -> Image.Image:
    """One real object as an RGBA image cropped to its mask (alpha softened by one pixel)."""
    from scipy import ndimage as ndi
    data = _skimage_data()
    if name == "cup":  # espresso cup and saucer: red saucer + white cup, inside the saucer's ellipse
        rgb = data.coffee().astype(np.float32)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        red = (r > 90) & (g < 0.45 * r) & (b < 0.5 * r) & (r - g > 70)
        white = (rgb.min(2) > 150) & (rgb.max(2) - rgb.min(2) < 60)
        mask = _largest_filled((red | white) & _ellipse(r.shape, 275, 215, 215, 195), 4, 4)
    elif name == "motorcycle":  # nearer than the garage behind it: the stereo pair's disparity separates it
        left, _, disparity = data.stereo_motorcycle()
        rgb = left.astype(np.float32)
        disparity = np.where(np.isfinite(disparity), disparity, 0.0)
        floor = np.percentile(disparity, 30, axis=1)[:, None]  # the wall and floor behind, row by row
        mask = _largest_filled(disparity > np.maximum(floor + 3.0, 44.0), 1, 2)
    elif name == "logo":  # scikit-image's logo: a round printed sticker
        rgba = data.logo().astype(np.float32)
        rgb = rgba[..., :3]
        ink = (rgba[..., 3] > 128) & (rgb.min(2) < 235)  # the disc, minus the white page around it
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        mask = _ellipse(ink.shape, (cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2,
                        (cols[-1] - cols[0]) / 2, (rows[-1] - rows[0]) / 2)
    elif name == "cat":  # the cat's head, cut as an ellipse (fur has no edge a threshold finds)
        rgb = data.chelsea().astype(np.float32)
        mask = _ellipse(rgb.shape[:2], 255, 160, 175, 135)
    elif name == "ball":  # the retina photo's disc: an orange sphere on black
        rgb = np.asarray(data.retina()).astype(np.float32)
        mask = _largest_filled(rgb.max(2) > 30, 2, 2)
    elif name == "page":  # a printed page, photographed flat: a light product, all of the photo
        grey = data.page().astype(np.float32)
        rgb = np.stack([grey, grey, grey * 0.97], axis=2)
        mask = np.ones(grey.shape, bool)
    elif name == "rocket":  # the rocket on its pad, brighter than the night sky around it
        rgb = data.rocket().astype(np.float32)
        mask = np.zeros(rgb.shape[:2], bool)
        mask[:, 280:360] = rgb[:, 280:360].mean(2) > 110
        mask = _largest_filled(mask, 3, 1)
    elif name == "flower":  # the dahlia: orange petals against dark green bokeh; the upper, larger of two blooms
        rgb = _sklearn_photo("flower.jpg").astype(np.float32)
        r, b = rgb[..., 0], rgb[..., 2]
        mask = ndi.binary_erosion(_largest_filled((r > 120) & (r - b > 50), 3, 3), iterations=2)  # not the dark rim
    elif name == "hopper":  # Grace Hopper's head and upper body, without the blue backdrop and the flag beside her
        rgb = _hopper_photo().astype(np.float32)
        r, b = rgb[..., 0], rgb[..., 2]
        sky = (b > r + 40) & (b > 120)
        shade = rgb.max(2) < 80
        # Mean blueness of the dark pixels around each pixel: the flag's canton is navy even where folds shade it
        # black, her uniform is near-neutral black.
        navy = ndi.uniform_filter((b - r) * shade, 31) > 18 * np.maximum(ndi.uniform_filter(shade * 1.0, 31), 1e-3)
        uniform = shade & (rgb.max(2) - rgb.min(2) < 24) & ~navy
        person = uniform | (_ellipse(r.shape, 262, 190, 118, 175) & ~sky)  # the uniform, and her head and cap
        # Her body runs on below the frame: continue it there, so the button the bottom edge cuts is filled.
        cols = np.flatnonzero(person[-1])
        below = np.zeros((16, person.shape[1]), bool)
        below[:, cols[0]:cols[-1] + 1] = True
        mask = _largest_filled(np.vstack([person, below]), 2, 9)[:person.shape[0]]  # opening 9: drops flag folds
    else:
        raise ValueError(f"unknown listing object {name!r}; choose one of "
                         f"{', '.join(LISTING_OBJECTS + HELDOUT_OBJECTS)}")
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    alpha = ndi.gaussian_filter(mask.astype(np.float32), 1.0)[box]
    rgba = np.dstack([rgb[box], alpha * 255.0])
    return Image.fromarray(np.clip(np.rint(rgba), 0, 255).astype(np.uint8), mode="RGBA")


def texture(name: str, size: int = 512) -> Image.Image:
    """A busy real background, ``size`` x ``size``: a texture or a cluttered scene."""
    data = _skimage_data()
    if name in ("brick", "grass", "gravel", "coins", "moon", "text"):
        grey = getattr(data, name)().astype(np.float32) / 255.0
        tint = {"brick": (1.0, 0.8, 0.65), "grass": (0.8, 1.0, 0.6), "gravel": (1.0, 0.95, 0.85),
                "coins": (1.0, 0.9, 0.75), "moon": (1.0, 0.93, 0.82), "text": (1.0, 0.97, 0.88)}[name]
        arr = grey[..., None] * np.asarray(tint, np.float32)[None, None, :] * 255.0
    elif name == "cells":
        arr = data.immunohistochemistry().astype(np.float32)
    elif name == "garage":
        arr = data.stereo_motorcycle()[0].astype(np.float32)
    elif name == "china":
        arr = _sklearn_photo("china.jpg").astype(np.float32)
    else:
        raise ValueError(f"unknown texture {name!r}; choose one of {', '.join(LISTING_TEXTURES + HELDOUT_TEXTURES)}")
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def studio_background(size: int = 512, tone: float = 0.0) -> Image.Image:
    """A plain seamless sweep, white at the top to light grey below; ``tone`` in [0, 1] warms it slightly."""
    y = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    tint = np.asarray((1.0, 1.0 - 0.03 * tone, 1.0 - 0.07 * tone), np.float32)
    arr = (0.97 - 0.08 * y) * tint * np.ones((size, size, 3), np.float32)
    return Image.fromarray(np.rint(arr * 255).astype(np.uint8), mode="RGB")


def compose_listing(obj: Image.Image, background: Image.Image, fill: float = 0.8,
                    offset: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Place a cut-out object on a background: its longer side ``fill`` of the frame, shifted by ``offset``.

    ``offset`` is a fraction of the frame side (x, y); a soft contact shadow sits under the object.
    """
    if not 0.05 <= fill <= 1.0:
        raise ValueError(f"fill must be in [0.05, 1], got {fill}")
    size = background.width
    scale = fill * size / max(obj.size)
    w, h = max(1, round(obj.width * scale)), max(1, round(obj.height * scale))
    item = obj.resize((w, h), Image.Resampling.LANCZOS)
    x = round((size - w) / 2 + offset[0] * size)
    y = round((size - h) / 2 + offset[1] * size)
    canvas = background.convert("RGB").copy()
    shadow = Image.new("L", canvas.size, 0)
    shadow.paste(item.getchannel("A").point(lambda a: a * 0.45), (x, y + max(1, size // 60)))
    shadow = shadow.filter(ImageFilter.GaussianBlur(size / 80))
    canvas = Image.composite(Image.new("RGB", canvas.size, (0, 0, 0)), canvas, shadow)
    canvas.paste(item, (x, y), item)
    return canvas


def listing_pairs(objects: tuple[str, ...], textures: tuple[str, ...], size: int = 512):
    """``(kind, better, worse, what)`` listing-photo pairs a buyer would order the same way.

    Kinds (:data:`LISTING_PAIR_KINDS`): ``clutter`` the object on the studio sweep vs
    on each busy texture; ``size`` filling the frame vs small (on the sweep and on
    each texture); ``dim`` / ``bright`` the reference vs the same shot 1-2 stops
    under / 1-1.5 stops over; ``blur`` sharp vs defocused; ``placement`` centred vs
    pushed into a corner. Every pair shows the same object.
    """
    plain = studio_background(size)
    busy = {name: texture(name, size) for name in textures}
    for obj_name in objects:
        obj = cutout(obj_name)
        ref = compose_listing(obj, plain, 0.8)
        on = {name: compose_listing(obj, bg, 0.8) for name, bg in busy.items()}
        for name, shot in on.items():
            yield "clutter", compose_listing(obj, plain, 0.6), compose_listing(obj, busy[name], 0.6), f"{obj_name} plain vs {name}"
            yield "clutter", ref, shot, f"{obj_name} plain vs {name}, large"
            yield "size", shot, compose_listing(obj, busy[name], 0.35), f"{obj_name} on {name} 0.8 vs 0.35"
            yield "dim", shot, degrade(shot, "underexpose", 0.3), f"{obj_name} on {name} vs -1.5 stops"
            yield "bright", shot, degrade(shot, "overexpose", 0.4), f"{obj_name} on {name} vs +1.2 stops"
            yield "blur", shot, degrade(shot, "blur", 0.5), f"{obj_name} on {name} vs blur 0.5"
        yield "size", ref, compose_listing(obj, plain, 0.4), f"{obj_name} plain 0.8 vs 0.4"
        yield "size", compose_listing(obj, plain, 0.65), compose_listing(obj, plain, 0.25), f"{obj_name} plain 0.65 vs 0.25"
        for level in (0.2, 0.4):
            yield "dim", ref, degrade(ref, "underexpose", level), f"{obj_name} plain vs -{5 * level:.0f} stops"
        for level in (0.33, 0.5):
            yield "bright", ref, degrade(ref, "overexpose", level), f"{obj_name} plain vs +{3 * level:.1f} stops"
        for level in (0.3, 0.6):
            yield "blur", ref, degrade(ref, "blur", level), f"{obj_name} plain vs blur {level}"
        for corner in ((0.3, 0.3), (-0.3, 0.28)):
            yield ("placement", compose_listing(obj, plain, 0.45), compose_listing(obj, plain, 0.45, corner),
                   f"{obj_name} centred vs off by {corner}")
