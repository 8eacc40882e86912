"""CLIP-IQA plumbing on the tiny random CLIP: the arithmetic, the spec, bad input, and the Triton export.

A random CLIP ranks nothing; these tests check that the score is CLIP-IQA's
(softmax over each antonym pair of CLIP's own image-text logits, averaged)
and that it travels like every other score model. Its quality can be measured
only where real CLIP weights exist.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cli_common import guarded
from scoring import export_triton as et
from scoring.clip_iqa import DEFAULT_PROMPTS, ClipIqaScorer, parse_spec
from scoring.model import load_model, model_info
from tests.fixtures.tiny_clip import TINY_IMAGE_SIZE

S = TINY_IMAGE_SIZE


def _images(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, S, S, 3), dtype=np.uint8))


def _prompts_file(tmp_path, pairs, name="prompts.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(pairs))
    return str(path)


def test_scores_are_clip_iqa_of_the_transformers_model(tiny_clip_dir, tmp_path):
    """Our score == softmax over each pair of CLIPModel's logits_per_image, averaged over pairs."""
    from transformers import AutoTokenizer, CLIPModel
    pairs = [["good photo", "bad photo"], ["sharp photo", "blurry photo"]]
    model = load_model(f"clip-iqa:hf:{tiny_clip_dir};prompts={_prompts_file(tmp_path, pairs)}", "cpu")
    images = _images(4, seed=1)
    with torch.no_grad():
        scores = model(images)
        clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
        tokens = AutoTokenizer.from_pretrained(tiny_clip_dir)([p for pair in pairs for p in pair], padding=True,
                                                              return_tensors="pt")
        pixels = model.backbone.preprocess(images)
        logits = clip(pixel_values=pixels, **tokens).logits_per_image.view(4, 2, 2)
    expected = logits.softmax(-1)[..., 0].mean(1)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.allclose(scores, expected, atol=1e-5)
    assert bool(((scores > 0) & (scores < 1)).all())


def test_interface_id_size_and_batch_independence(tiny_clip_dir):
    model = load_model(f"clip-iqa:{tiny_clip_dir}", "cpu")
    assert isinstance(model, ClipIqaScorer) and not model.training
    assert model.input_size == S and model.prompts == DEFAULT_PROMPTS
    assert model.model_id.startswith("clip-iqa:hf:tiny-clip@") and "+prompts" not in model.model_id
    assert model_info(f"clip-iqa:{tiny_clip_dir}") == (model.model_id, S)
    images = _images(3)
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(images[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    scores, model_id = model.infer(images.numpy())
    assert model_id == model.model_id and np.allclose(scores, together.numpy(), atol=1e-5)


def test_prompts_are_configurable_and_named_in_the_model_id(tiny_clip_dir, tmp_path):
    plain = load_model(f"clip-iqa:{tiny_clip_dir}", "cpu")
    swapped = load_model(f"clip-iqa:{tiny_clip_dir};prompts={_prompts_file(tmp_path, [['Bad photo.', 'Good photo.']])}",
                         "cpu")
    images = _images(5, seed=2)
    with torch.no_grad():
        assert torch.allclose(plain(images) + swapped(images), torch.ones(5), atol=1e-5)
    assert swapped.model_id.startswith(plain.model_id + "+prompts@")


@pytest.mark.parametrize("spec, message", [
    ("clip-iqa:", "names no backbone"),
    ("clip-iqa:  ", "names no backbone"),
    ("clip-iqa:nope:thing", "backbone 'nope:thing' could not be loaded.*unknown backbone spec"),
    ("clip-iqa:/no/such/clip", "backbone '/no/such/clip' could not be loaded.*not an existing directory"),
    ("clip-iqa:hf:/no/such/clip", "backbone 'hf:/no/such/clip' could not be loaded.*no such directory"),
    ("clip-iqa:handcrafted", "clip-iqa:handcrafted:handcrafted-v4.*no text tower"),
])
def test_bad_backbones_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        load_model(spec, "cpu")


@pytest.mark.parametrize("content, message", [
    ("[]", "prompt list is empty"),
    ('[["good", ""]]', "pair 0 is.*two non-empty strings"),
    ('[["good", "bad", "ugly"]]', "pair 0 is"),
    ('{"good": "bad"}', "expected a list of \\[positive, negative\\] prompt pairs, got dict"),
    ("not json", "is not JSON"),
])
def test_bad_prompt_files_are_refused_naming_the_file(tiny_clip_dir, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_model(f"clip-iqa:{tiny_clip_dir};prompts={path}", "cpu")
    assert "bad.json" in str(info.value) or "prompt list is empty" in str(info.value)


def test_missing_prompt_file_and_empty_option(tiny_clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts file .*missing.json does not exist"):
        parse_spec(f"clip-iqa:{tiny_clip_dir};prompts={tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match="';prompts=' names no file"):
        parse_spec(f"clip-iqa:{tiny_clip_dir};prompts=")
    with pytest.raises(ValueError, match="prompt list is empty"):
        ClipIqaScorer(load_model(f"clip-iqa:{tiny_clip_dir}", "cpu").backbone, [])


def test_exports_to_triton_and_the_trace_scores_the_same(tiny_clip_dir, tmp_path):
    model = load_model(f"clip-iqa:{tiny_clip_dir}", "cpu")
    model_dir = et.export_triton(f"clip-iqa:{tiny_clip_dir}", str(tmp_path / "repo"), name="iqa", backend="python")
    config = open(os.path.join(model_dir, "config.pbtxt")).read()
    assert f'string_value: "{model.model_id}"' in config and f"dims: [ {S}, {S}, 3 ]" in config
    traced = torch.jit.load(os.path.join(model_dir, "1", "model.pt"), map_location="cpu")
    images = _images(3, seed=9)
    with torch.no_grad():
        assert torch.allclose(traced(images)[:, 0], model(images), atol=1e-5)


def test_export_cli_names_a_bad_clip_iqa_spec(tmp_path, capsys):
    assert guarded("imagescore export-triton", et.run,
                   ["--model", "clip-iqa:nope:thing", "--repository", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "clip-iqa:nope:thing" in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()
