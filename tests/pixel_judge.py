"""A deterministic stand-in for a vision LLM judge, for :class:`tests.chat_double.ChatDouble`.

It scores each image from the pixels the request actually carried (after our
resize and JPEG encoding), so an end-to-end test over HTTP exercises real
image transport: an image lost, swapped or garbled on the way changes the
score. The measures are the simple ones a photo editor shows:

* sharpness: the 99.5th percentile of the gradient magnitude (strong edges
  survive only in a focused, full-resolution photo);
* exposure: mean luminance (too dark or washed out is penalised);
* busyness: the share of pixels on an edge (a cluttered background or sensor
  noise both raise it);
* contrast: the luminance standard deviation.

The answer follows ``labeling/prompts/xiqe_aesthetic_v1.txt``: JSON with one
entry per image, criteria as short sentences and an integer 0-10 ``score``.
The sentences use plain adjectives ("sharp", "blurry", "bright", "dark",
"cluttered", ...) so the analysis's WordNet adjective table has real input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.chat_double import Reply, completion

EDGE_THRESHOLD = 0.08  # gradient magnitude (0-1 luminance) that counts as an edge pixel
SHARP_REFERENCE = 0.25  # 99.5th-percentile gradient of a clean, focused simulated product photo
TOKENS_PER_IMAGE = 85  # OpenAI's low-detail image cost, so usage and cost figures look like a real endpoint's
PROMPT_TOKENS = 500


@dataclass(frozen=True)
class Measures:
    brightness: float  # mean luminance, 0-1
    contrast: float  # luminance standard deviation
    sharpness: float  # 99.5th percentile of the gradient magnitude
    busyness: float  # share of edge pixels
    saturation: float  # mean HSV saturation, 0-1


def measure(image: Image.Image) -> Measures:
    gray = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    grad = np.hypot(np.abs(np.diff(gray, axis=1))[:-1], np.abs(np.diff(gray, axis=0))[:, :-1])
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64) / 255.0
    return Measures(brightness=float(gray.mean()), contrast=float(gray.std()),
                    sharpness=float(np.percentile(grad, 99.5)), busyness=float((grad > EDGE_THRESHOLD).mean()),
                    saturation=float(hsv[..., 1].mean()))


def score(m: Measures) -> int:
    """0-10: the product of penalties for softness, bad exposure, busyness and flatness."""
    sharp = min(1.0, m.sharpness / SHARP_REFERENCE)
    exposure = (1.0 - 0.8 * np.clip((0.45 - m.brightness) / 0.35, 0.0, 1.0)
                - 0.6 * np.clip((m.brightness - 0.92) / 0.08, 0.0, 1.0))
    clean = 1.0 - 0.6 * np.clip((m.busyness - 0.015) / 0.08, 0.0, 1.0)
    contrast = np.clip(m.contrast / 0.12, 0.3, 1.0)
    return round(10.0 * float(sharp * exposure * clean * contrast))


def assessment(m: Measures, value: int) -> dict:
    """The prompt's per-image criteria, worded from the measures."""
    if m.brightness < 0.3:
        brightness = "Dark and underexposed; the product is murky."
    elif m.brightness < 0.45:
        brightness = "Slightly dark but readable."
    elif m.brightness > 0.92:
        brightness = "Washed-out, overexposed highlights."
    else:
        brightness = "Bright and well exposed."
    if m.busyness > 0.15:
        detail_noise = " Grainy, noisy texture."
        composition = "Product hard to separate from a grainy background."
    elif m.busyness > 0.03:
        detail_noise = ""
        composition = "Cluttered, busy background around the product."
    else:
        detail_noise = ""
        composition = "Clean, simple background; the product stands out."
    sharp = m.sharpness / SHARP_REFERENCE
    detail = ("Sharp, crisp edges." if sharp >= 0.7 else "Soft, slightly fuzzy edges." if sharp >= 0.4
              else "Blurry, edges smeared.") + detail_noise
    saturation = ("Vivid, saturated colours." if m.saturation > 0.35 else "Dull, muted colours."
                  if m.saturation < 0.12 else "Natural colours.")
    contrast = "Flat, low contrast." if m.contrast < 0.08 else "Good contrast."
    impact = ("Attractive, trustworthy presentation." if value >= 7 else "Plain, ordinary listing photo."
              if value >= 4 else "Careless, unappealing presentation.")
    return {"brightness": brightness, "saturation": saturation, "composition": composition,
            "light_and_shadow": contrast, "detail": detail, "visual_impact": impact}


def pixel_judge(n_images: int, images: list[Image.Image]) -> Reply:
    """A :data:`tests.chat_double.Responder`: one scored JSON entry per received image, in order."""
    entries = []
    for number, image in enumerate(images, start=1):
        m = measure(image)
        value = score(m)
        entries.append({"image": number, **assessment(m, value), "score": value})
    content = json.dumps({"images": entries}, indent=1)
    return completion(content, PROMPT_TOKENS + TOKENS_PER_IMAGE * n_images, len(content) // 4)
