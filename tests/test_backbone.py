"""Backbone loading and preprocessing, on tiny randomly initialised checkpoints saved to disk."""
from __future__ import annotations

import builtins
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from scoring.backbone import Backbone, load_backbone
from scoring.preprocess import Preprocess, PreprocessConfig
from tests.fixtures.tiny_clip import TINY_IMAGE_SIZE, TINY_PROJECTION, make_tiny_clip, make_tiny_rinna

S = TINY_IMAGE_SIZE


def _images(n: int, size: int = S, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8))


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """A product-photo-like image (smooth shapes and edges), plus one of pure noise for the worst case."""
    from scoring.photos import draw_product
    img = draw_product(np.random.default_rng(seed), size=max(height, width))
    return np.array(img.convert("RGB").resize((width, height)))


# --- Hugging Face CLIP -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["hf:", ""])
def test_hf_dir_loads_with_and_without_scheme(tiny_clip_dir, prefix):
    backbone = load_backbone(prefix + tiny_clip_dir, device="cpu")
    assert isinstance(backbone, Backbone)
    assert backbone.input_size == S and backbone.embed_dim == TINY_PROJECTION
    assert backbone.backbone_id.startswith("hf:tiny-clip@") and len(backbone.backbone_id.split("@")[1]) == 12
    out = backbone(_images(3))
    assert out.shape == (3, TINY_PROJECTION) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_hf_backbone_matches_transformers_reference(tiny_clip_dir):
    """Our uint8 path == CLIPImageProcessor + CLIPModel.get_image_features, then L2."""
    from transformers import CLIPImageProcessorPil, CLIPModel
    backbone = load_backbone(tiny_clip_dir, device="cpu")
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    images = _images(4, seed=3)
    pixels = processor(images=list(images.numpy()), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=pixels)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1)
    assert torch.allclose(backbone(images), ref, atol=1e-5)


def test_backbone_is_frozen_and_deterministic(tiny_clip_dir):
    backbone = load_backbone(tiny_clip_dir, device="cpu")
    assert not backbone.training
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()  # a training loop calling .train() on head + backbone must not wake the backbone up
    assert not backbone.training and not any(m.training for m in backbone.modules())
    images = _images(5, seed=1)
    first = backbone(images)
    assert not first.requires_grad
    assert torch.equal(first, backbone(images))
    # batch composition does not change an image's embedding
    assert torch.allclose(backbone(images[:2]), first[:2], atol=1e-6)
    # the same bytes loaded again give the same id and the same numbers
    again = load_backbone("hf:" + tiny_clip_dir, device="cpu")
    assert again.backbone_id == backbone.backbone_id
    assert torch.equal(again(images), first)


def test_backbone_id_follows_the_weights_not_the_path(tmp_path, tiny_clip_dir):
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "tiny-clip")
    other = make_tiny_clip(str(tmp_path / "other" / "tiny-clip"), seed=1)
    same, changed = load_backbone(str(copy), device="cpu"), load_backbone(other, device="cpu")
    assert same.backbone_id == load_backbone(tiny_clip_dir, device="cpu").backbone_id
    assert changed.backbone_id != same.backbone_id


def test_normalize_option(tiny_clip_dir):
    raw = load_backbone(tiny_clip_dir, device="cpu", normalize=False)
    unit = load_backbone(tiny_clip_dir, device="cpu")
    images = _images(3, seed=2)
    out = raw(images)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-3)
    assert torch.allclose(torch.nn.functional.normalize(out, dim=-1), unit(images), atol=1e-6)
    assert raw.backbone_id == unit.backbone_id + "+raw"  # raw and unit embeddings never mix in one table


def test_bad_batches_are_refused_with_the_reason(tiny_clip_dir):
    backbone = load_backbone(tiny_clip_dir, device="cpu")
    with pytest.raises(ValueError, match="uint8 NHWC"):
        backbone(_images(2).float())
    with pytest.raises(ValueError, match=f"expected {S}x{S}"):
        backbone(_images(2, size=S + 8))


def test_encode_text(tiny_clip_dir):
    backbone = load_backbone(tiny_clip_dir, device="cpu")
    text = backbone.encode_text(["a red bag", "shoes", "a red bag"])
    assert text.shape == (3, TINY_PROJECTION)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text[0], text[2]) and not torch.allclose(text[0], text[1])
    similarity = backbone(_images(2)) @ text.T  # the CLIP Score baseline: cosine in one space
    assert similarity.shape == (2, 3)


def test_encode_text_without_tokenizer_says_what_is_missing(tmp_path):
    directory = make_tiny_clip(str(tmp_path / "no-tok"), with_tokenizer=False)
    backbone = load_backbone(directory, device="cpu")
    with pytest.raises(ValueError, match="tokenizer"):
        backbone.encode_text(["bag"])
    assert backbone(_images(1)).shape == (1, TINY_PROJECTION)  # images still work


def test_no_preprocessor_config_falls_back_to_openai_clip(tmp_path):
    directory = make_tiny_clip(str(tmp_path / "no-pre"), preprocessor=False)
    backbone = load_backbone(directory, device="cpu")
    cfg = backbone.preprocess.config
    assert (cfg.crop, cfg.resize, cfg.interpolation) == (S, S, "bicubic")
    assert cfg.mean == (0.48145466, 0.4578275, 0.40821073)


# --- bad specs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,error,match", [
    ("", ValueError, "empty backbone spec"),
    ("resnet50", ValueError, "unknown backbone spec 'resnet50'"),
    ("hf:", ValueError, "names nothing"),
    ("hf:/no/such/dir", FileNotFoundError, "no such directory"),
    ("rinna:./missing-dir", FileNotFoundError, "no such directory"),
    ("open_clip:ViT-B-16", ValueError, "open_clip:<arch>/<pretrained"),
])
def test_bad_specs_name_the_spec_and_the_fix(spec, error, match):
    with pytest.raises(error, match=match):
        load_backbone(spec, device="cpu")


def test_dir_without_a_clip_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not be loaded"):
        load_backbone(f"hf:{tmp_path / 'empty'}", device="cpu")


def test_cuda_asked_without_cuda_is_an_error(tiny_clip_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_backbone(tiny_clip_dir, device="cuda")


def test_open_clip_missing_gives_the_install_line(monkeypatch):
    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip" or name.startswith("open_clip."):
            raise ModuleNotFoundError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ImportError, match=r"imagescore\[open_clip\]"):
        load_backbone("open_clip:ViT-B-16/openai", device="cpu")


def test_open_clip_checkpoint_roundtrip(tmp_path):
    """Runs where the open_clip extra is installed: a tiny random model saved and loaded by path."""
    open_clip = pytest.importorskip("open_clip")
    import json
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "cfg"))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit")
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    backbone = load_backbone(f"open_clip:tiny-vit/{path}", device="cpu")
    assert backbone.backbone_id.startswith("open_clip:tiny-vit/tiny.pt@")
    assert backbone.input_size == 32 and backbone.embed_dim == 16
    images = _images(2)
    out = backbone(images)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        ref = model.eval().encode_image(backbone.preprocess(images))
    assert torch.allclose(out, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    assert backbone.encode_text(["bag"]).shape == (1, 16)


# --- rinna japanese-clip ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("vision_type", ["vit", "clip_vision_model"])
def test_rinna_layout_loads_image_tower(tmp_path, vision_type):
    directory = make_tiny_rinna(str(tmp_path / "japanese-clip"), vision_type=vision_type)
    backbone = load_backbone(f"rinna:{directory}", device="cpu")
    assert backbone.backbone_id.startswith("rinna:japanese-clip@")
    assert backbone.input_size == S and backbone.embed_dim == TINY_PROJECTION
    cfg = backbone.preprocess.config
    assert (cfg.interpolation, cfg.crop_offset) == ("bilinear", "round")
    # reference: japanese_clip's get_image_features = projection(tower(x).last_hidden_state[:, 0])
    state = torch.load(os.path.join(directory, "pytorch_model.bin"), weights_only=True)
    images = _images(3, seed=4)
    with torch.no_grad():
        pixels = backbone.preprocess(images)
        hidden = backbone.tower(pixel_values=pixels).last_hidden_state[:, 0]
        ref = hidden @ state["visual_projection.weight"].T
    assert torch.allclose(backbone(images), torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    # every tower weight comes from the checkpoint, none is left at a fresh random init
    reference = torch.load(os.path.join(directory, "reference_tower.pt"), weights_only=True)
    loaded = backbone.tower.state_dict()
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)
    with pytest.raises(ValueError, match="text tower"):
        backbone.encode_text(["犬"])


def test_rinna_checkpoint_that_does_not_match_is_refused(tmp_path):
    directory = make_tiny_rinna(str(tmp_path / "broken"))
    path = os.path.join(directory, "pytorch_model.bin")
    state = torch.load(path, weights_only=True)
    dropped = [k for k in state if k.startswith("vision_model.encoder.layer.1.")]
    assert dropped
    for key in dropped:
        del state[key]
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not match the image tower: missing"):
        load_backbone(f"rinna:{directory}", device="cpu")


# --- handcrafted -----------------------------------------------------------------------------------------------

def test_handcrafted_backbone():
    from scoring.handcrafted import HandcraftedScorer
    backbone = load_backbone("handcrafted", device="cpu")
    scorer = HandcraftedScorer()
    size = scorer.input_size
    images = _images(2, size=size, seed=5)
    features = scorer.features(images)
    assert backbone.input_size == size and backbone.embed_dim == len(features)
    assert backbone.backbone_id == f"handcrafted:{scorer.model_id}"
    out = load_backbone("handcrafted", device="cpu", normalize=False)(images)
    names = sorted(features)
    assert torch.allclose(out, torch.stack([features[n].float() for n in names], dim=1), atol=1e-6)
    assert torch.allclose(backbone(images).norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="no text tower"):
        backbone.encode_text(["bag"])


# --- preprocessing parity --------------------------------------------------------------------------------------

# One grey level after normalisation by the smallest std: the PIL resampler and ours round a few pixels differently.
ONE_LEVEL = 1.0 / (255 * 0.26130258) + 1e-4


@pytest.mark.parametrize("shape", [(50, 70), (120, 90), (333, 257), (640, 480), (65, 64), (64, 64)])
def test_preprocess_matches_clip_image_processor(shape):
    """Shortest-side bicubic resize + floor centre crop + OpenAI mean/std, as CLIPImageProcessor does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import CLIPImageProcessor
        processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    ours = Preprocess(PreprocessConfig.from_hf_dict(processor.to_dict(), 64))
    height, width = shape
    noise = np.random.default_rng(height).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    for image in (_photo(height, width, seed=width), noise):
        ref = processor(images=image, return_tensors="pt")["pixel_values"]
        got = ours(torch.from_numpy(image)[None])
        assert got.shape == ref.shape == (1, 3, 64, 64)
        diff = (got - ref).abs()
        assert float(diff.max()) <= ONE_LEVEL, f"{shape}: max diff {float(diff.max()):.4f}"
        assert float((diff > 1e-4).float().mean()) < 0.01, f"{shape}: too many pixels off by one level"


def test_preprocess_config_reads_old_and_new_hf_formats():
    old = PreprocessConfig.from_hf_dict({"size": 256, "crop_size": 224, "resample": 2,
                                         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, 224)
    assert (old.resize, old.crop, old.interpolation, old.mean) == (256, 224, "bilinear", (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="resample"):
        PreprocessConfig.from_hf_dict({"resample": 0}, 224)
    with pytest.raises(ValueError, match="at least the crop"):
        PreprocessConfig(crop=224, resize=200)


def test_preprocess_round_crop_offset_follows_torchvision():
    image = torch.arange(7 * 7 * 3, dtype=torch.int64).reshape(1, 7, 7, 3).to(torch.uint8)
    floor = Preprocess(PreprocessConfig(crop=4, resize=None, mean=(0, 0, 0), std=(1 / 255,) * 3))
    rounded = Preprocess(PreprocessConfig(crop=4, resize=None, mean=(0, 0, 0), std=(1 / 255,) * 3,
                                          crop_offset="round"))
    # (7 - 4) / 2 = 1.5: HF floors to 1, torchvision's round() gives 2
    assert torch.equal(floor(image)[0, 0], image[0, 1:5, 1:5, 0].float())
    assert torch.equal(rounded(image)[0, 0], image[0, 2:6, 2:6, 0].float())
