"""handcrafted-v4 is one model: however it is computed, its scores stay those it was released with.

The pinned scores (tests/fixtures/handcrafted_v4_scores.json) were written by the
released code (convolution blurs, one batch at a time) for both photo splits,
each photo clean and at level 0.75 of every distortion. A faster implementation
may round differently (float32 sums in another order), never by more than 1e-5;
a change beyond that is a new model version with a new ``model_id``.
"""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scoring.handcrafted import HandcraftedScorer
from scoring.photos import DEGRADATIONS, degrade, heldout_photos, tune_photos
from transforms.decode import decode_image

PINNED = Path(__file__).parent / "fixtures" / "handcrafted_v4_scores.json"
TOLERANCE = 1e-5


def _crop(photo) -> np.ndarray:
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    return decode_image(buffer.getvalue(), HandcraftedScorer.input_size)


@pytest.fixture(scope="module")
def pinned_crops() -> tuple[list[str], torch.Tensor, dict[str, float]]:
    pinned = json.loads(PINNED.read_text())
    keys, crops = [], []
    for split, photos in (("tune", tune_photos()), ("heldout", heldout_photos())):
        for name, photo in photos:
            keys.append(f"{split}/{name}/clean")
            crops.append(_crop(photo))
            for kind in DEGRADATIONS:
                keys.append(f"{split}/{name}/{kind}")
                crops.append(_crop(degrade(photo, kind, 0.75)))
    return keys, torch.from_numpy(np.stack(crops)), pinned


def test_the_fixture_is_handcrafted_v4_and_covers_both_splits(pinned_crops):
    keys, _, pinned = pinned_crops
    assert pinned["model_id"] == HandcraftedScorer.model_id == "handcrafted-v4"
    assert sorted(keys) == sorted(pinned["scores"])
    assert {key.split("/")[0] for key in keys} == {"tune", "heldout"}


@pytest.mark.parametrize("batch", [64, 8, 3])
def test_scores_equal_the_released_scores(pinned_crops, batch):
    keys, crops, pinned = pinned_crops
    model = HandcraftedScorer().eval()
    with torch.inference_mode():
        scores = torch.cat([model(crops[start:start + batch]) for start in range(0, len(crops), batch)])
    differences = {key: abs(float(score) - pinned["scores"][key]) for key, score in zip(keys, scores)}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= TOLERANCE, f"{worst}: {differences[worst]:.3g} from the released handcrafted-v4 score"
