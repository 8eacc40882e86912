"""Frozen image backbones: a CLIP image encoder behind a uint8 interface.

The paper freezes a CLIP ViT-B/16 and trains only an MLP head on its image
embeddings. :func:`load_backbone` turns a spec string into a
:class:`Backbone`: ``forward(uint8 NHWC [N, S, S, 3]) -> float32 [N, D]``,
preprocessing inside (see :mod:`scoring.preprocess`), frozen, in eval mode.

Specs:

``hf:<hub id or local dir>`` (or a bare local dir)
    A Hugging Face ``CLIPModel`` checkpoint (``config.json`` + weights, plus
    ``preprocessor_config.json`` and a tokenizer when present).
``open_clip:<arch>/<pretrained tag or checkpoint path>``
    An open_clip model; needs ``pip install 'imagescore[open_clip]'``.
``rinna:<hub id or local dir>``
    The image tower of rinna's japanese-clip checkpoints (the paper's
    ``rinna/japanese-clip-vit-b-16``), loaded without the ``japanese_clip``
    package; image embeddings only.
``handcrafted``
    The weight-free handcrafted image statistics as a small feature vector,
    for places where no pretrained weights can be had.

Embeddings are L2-normalised by default (``normalize=False`` keeps the raw
projection). On CUDA the encoder runs in float16; on the CPU in float32.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import torch
import torch.nn.functional as F

from scoring.model import ImageModule, check_batch, resolve_device
from scoring.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocess, PreprocessConfig

SPEC_HELP = ("use hf:<hub id or local dir> (or a bare local dir), open_clip:<arch>/<pretrained tag or checkpoint>, "
             "rinna:<hub id or local dir>, or handcrafted")
OPEN_CLIP_INSTALL = "pip install 'imagescore[open_clip]'  (or: pip install open_clip_torch)"
RINNA_MEAN = (0.48145466, 0.4578275, 0.40821073)
RINNA_STD = (0.26862954, 0.26130258, 0.27577711)


class Backbone(ImageModule):
    """A frozen image encoder: ``forward(uint8 NHWC [N, S, S, 3]) -> float32 [N, embed_dim]``."""

    #: stable identifier incl. the source and a hash of the weights, stored next to every embedding
    backbone_id: str
    #: side of the square uint8 image the decoder must produce
    input_size: int
    #: length of one embedding
    embed_dim: int

    def __init__(self, backbone_id: str, input_size: int, embed_dim: int, normalize: bool):
        super().__init__()
        self.backbone_id = backbone_id if normalize else f"{backbone_id}+raw"
        self.input_size = int(input_size)
        self.embed_dim = int(embed_dim)
        self.normalize = normalize

    @property
    def identifier(self) -> str:
        return self.backbone_id

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings of a checked uint8 NHWC batch; subclasses implement it."""
        raise TypeError(f"{type(self).__name__} does not implement embed()")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_batch(images, self.input_size)
        features = self.embed(images).float()
        return F.normalize(features, dim=-1) if self.normalize else features

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings in the image space (the CLIP Score baseline); only CLIP backbones with a text tower."""
        raise ValueError(f"backbone {self.backbone_id} has no text tower, so it cannot embed text; "
                         "use an hf: or open_clip: CLIP backbone for the CLIP Score baseline")

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: whatever a caller asks, dropout and friends stay off.
        return super().train(False)


class _ClipImageBackbone(Backbone):
    """Preprocess + an image tower, float16 on CUDA."""

    def __init__(self, backbone_id: str, preprocess: PreprocessConfig, embed_dim: int, normalize: bool,
                 dtype: torch.dtype):
        super().__init__(backbone_id, preprocess.crop, embed_dim, normalize)
        self.preprocess = Preprocess(preprocess)
        self.dtype = dtype

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's projected embedding of normalised NCHW pixels."""
        raise TypeError(f"{type(self).__name__} does not implement image_features()")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.preprocess.mean.device)).to(self.dtype)
        return self.image_features(pixels)


class HfClipBackbone(_ClipImageBackbone):
    """A Hugging Face ``CLIPModel``; ``encode_text`` uses its text tower and saved tokenizer."""

    def __init__(self, model, source: str, backbone_id: str, preprocess: PreprocessConfig, normalize: bool,
                 dtype: torch.dtype):
        super().__init__(backbone_id, preprocess, model.config.projection_dim, normalize, dtype)
        self.model = model
        self._source = source
        self._tokenizer = None

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _tensor(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self._tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                                 return_tensors="pt").to(self.device)
        with torch.inference_mode():
            features = _tensor(self.model.get_text_features(**tokens)).float()
        return F.normalize(features, dim=-1) if self.normalize else features

    def _load_tokenizer(self):
        from transformers import AutoTokenizer
        fix = "save the CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt) next to the weights"
        if os.path.isdir(self._source) and not (
                os.path.exists(os.path.join(self._source, "tokenizer.json"))
                or os.path.exists(os.path.join(self._source, "vocab.json"))):
            raise ValueError(f"backbone {self.backbone_id}: {self._source} holds no tokenizer files; {fix}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self._source)
        except (OSError, ValueError) as exc:
            raise ValueError(f"backbone {self.backbone_id}: no tokenizer could be loaded from {self._source} "
                             f"({exc}); {fix}") from exc
        # transformers 5 quietly builds a CLIPTokenizer with only its special tokens when files are missing
        if len(tokenizer) <= 3:
            raise ValueError(f"backbone {self.backbone_id}: the tokenizer from {self._source} has no vocabulary; {fix}")
        return tokenizer


class OpenClipBackbone(_ClipImageBackbone):
    """An open_clip ``CLIP`` model; ``encode_text`` uses open_clip's tokenizer for the architecture."""

    def __init__(self, model, tokenizer, backbone_id: str, preprocess: PreprocessConfig, embed_dim: int,
                 normalize: bool, dtype: torch.dtype):
        super().__init__(backbone_id, preprocess, embed_dim, normalize, dtype)
        self.model = model
        self._tokenizer = tokenizer

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens).float()
        return F.normalize(features, dim=-1) if self.normalize else features


class RinnaClipBackbone(_ClipImageBackbone):
    """rinna japanese-clip image tower: ``visual_projection(tower(x).last_hidden_state[:, 0])``."""

    def __init__(self, tower, projection, backbone_id: str, preprocess: PreprocessConfig, normalize: bool,
                 dtype: torch.dtype):
        super().__init__(backbone_id, preprocess, projection.out_features, normalize, dtype)
        self.tower = tower
        self.projection = projection

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        # As japanese_clip's get_image_features: the first token of the tower's last hidden state, projected.
        return self.projection(self.tower(pixel_values=pixels).last_hidden_state[:, 0, :])

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise ValueError(f"backbone {self.backbone_id}: rinna's text tower (a BERT with its own sentencepiece "
                         "tokenizer) is not loaded here; use an hf: or open_clip: backbone for CLIP Score")


class HandcraftedBackbone(Backbone):
    """The handcrafted image statistics, concatenated in name order, as a weight-free backbone."""

    def __init__(self, normalize: bool):
        from scoring.handcrafted import HandcraftedScorer
        scorer = HandcraftedScorer().eval()
        probe = torch.zeros(1, scorer.input_size, scorer.input_size, 3, dtype=torch.uint8)
        self.feature_names = sorted(scorer.features(probe))
        width = self._stack(scorer.features(probe)).shape[1]
        super().__init__(f"handcrafted:{scorer.model_id}", scorer.input_size, width, normalize)
        self.scorer = scorer

    def _stack(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        names = getattr(self, "feature_names", sorted(features))
        return torch.cat([features[name].reshape(features[name].shape[0], -1).float() for name in names], dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._stack(self.scorer.features(images))


def _tensor(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projection; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _freeze(backbone: Backbone, device: torch.device) -> Backbone:
    backbone.requires_grad_(False)
    backbone.eval()
    return backbone.to(device)


def load_backbone(spec: str, device: str | torch.device | None = None, normalize: bool = True) -> Backbone:
    """Load the frozen backbone that ``spec`` names (see the module docstring), on ``device``.

    The device defaults to CUDA when available. On CUDA the encoder runs in
    float16, on the CPU in float32; embeddings always come back as float32.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty backbone spec {spec!r}; {SPEC_HELP}")
    spec = spec.strip()
    device = resolve_device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if spec == "handcrafted":
        return _freeze(HandcraftedBackbone(normalize), device)
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "hf":
        backbone: Backbone = _load_hf(rest, normalize, dtype)
    elif sep and scheme == "open_clip":
        backbone = _load_open_clip(rest, normalize, dtype)
    elif sep and scheme == "rinna":
        backbone = _load_rinna(rest, normalize, dtype)
    elif os.path.isdir(spec):
        backbone = _load_hf(spec, normalize, dtype)
    else:
        raise ValueError(f"unknown backbone spec {spec!r}: not a known scheme and not an existing directory; {SPEC_HELP}")
    return _freeze(backbone, device)


# --- Hugging Face ---------------------------------------------------------------------------------------------

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a path."""
    return source.startswith((os.sep, ".", "~")) or source.count("/") > 1 or "\\" in source


def _local_or_hub(source: str, scheme: str) -> tuple[str, str | None]:
    """(source to pass to from_pretrained, local directory or None for a hub id). Refuses a missing path."""
    if not source:
        raise ValueError(f"backbone spec '{scheme}:' names nothing; {SPEC_HELP}")
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        return expanded, expanded
    if _looks_like_path(source) or os.path.exists(expanded):
        raise FileNotFoundError(f"backbone {scheme}:{source}: no such directory; pass a directory holding "
                                "config.json and the weights, or a hub id like openai/clip-vit-base-patch16")
    return source, None


def _weights_in(directory: str) -> list[str]:
    """The files from_pretrained reads the weights from (shards listed in an index included)."""
    for name in _WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        with open(path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [path] + [os.path.join(directory, shard) for shard in shards]
    raise FileNotFoundError(f"{directory} holds no weights ({', '.join(_WEIGHT_FILES)})")


_HASHES: dict[tuple, str] = {}


def weights_hash(directory: str, extra: tuple[str, ...] = ("config.json",)) -> str:
    """Short sha256 of the config and weight files: the same bytes give the same backbone_id anywhere.

    Remembered per process by (path, size, mtime) of every file, so the job's
    launcher and an in-process worker read hundreds of MB of weights only once.
    """
    paths = [os.path.join(directory, name) for name in extra if os.path.exists(os.path.join(directory, name))]
    paths += _weights_in(directory)
    stamp = tuple((os.path.realpath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    if stamp not in _HASHES:
        digest = hashlib.sha256()
        for path in paths:
            digest.update(os.path.basename(path).encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[stamp] = digest.hexdigest()[:12]
    return _HASHES[stamp]


def _load_hf(source: str, normalize: bool, dtype: torch.dtype) -> Backbone:
    from transformers import CLIPModel
    source, local = _local_or_hub(source, "hf")
    try:
        model = CLIPModel.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        hint = ("download it where there is internet (`hf download ID --local-dir DIR`) and pass hf:DIR"
                if local is None else "the directory must hold a CLIPModel config.json and its weights")
        raise ValueError(f"backbone hf:{source} could not be loaded: {exc}; {hint}") from exc
    root = local or _hub_snapshot_dir(source)
    name = os.path.basename(os.path.normpath(local)) if local else source
    backbone_id = f"hf:{name}@{weights_hash(root)}"
    preprocess = PreprocessConfig.from_hf_dir(root, model.config.vision_config.image_size)
    return HfClipBackbone(model, source, backbone_id, preprocess, normalize, dtype)


def _hub_snapshot_dir(hub_id: str) -> str:
    """The local snapshot from_pretrained just used (its config's directory)."""
    from transformers.utils import cached_file
    return os.path.dirname(cached_file(hub_id, "config.json"))


# --- open_clip ------------------------------------------------------------------------------------------------

def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(f"open_clip backbones need the open_clip extra, which is not installed: "
                          f"{OPEN_CLIP_INSTALL}") from exc
    return open_clip


def _load_open_clip(rest: str, normalize: bool, dtype: torch.dtype) -> Backbone:
    arch, sep, pretrained = rest.partition("/")
    if not arch or not sep or not pretrained:
        raise ValueError(f"backbone spec open_clip:{rest} must be open_clip:<arch>/<pretrained tag or checkpoint path>, "
                         "e.g. open_clip:ViT-B-16/openai")
    open_clip = _import_open_clip()
    is_file = os.path.exists(os.path.expanduser(pretrained))
    if _looks_like_path(pretrained) and not is_file:
        raise FileNotFoundError(f"backbone open_clip:{rest}: checkpoint {pretrained} does not exist")
    pretrained = os.path.expanduser(pretrained) if is_file else pretrained
    model = open_clip.create_model(arch, pretrained=pretrained)
    model = model.to(dtype)
    cfg = _open_clip_preprocess_cfg(open_clip, model)
    if cfg.get("resize_mode", "shortest") != "shortest":
        raise ValueError(f"backbone open_clip:{rest} uses resize_mode={cfg['resize_mode']!r}; only 'shortest' "
                         "(resize the shortest side, centre-crop) is reproduced in scoring.preprocess")
    size = cfg["size"]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    preprocess = PreprocessConfig(crop=size, resize=size, mean=tuple(cfg.get("mean", OPENAI_CLIP_MEAN)),
                                  std=tuple(cfg.get("std", OPENAI_CLIP_STD)),
                                  interpolation=cfg.get("interpolation", "bicubic"), crop_offset="round")
    tag = f"{os.path.basename(pretrained)}@{_file_hash(pretrained)}" if is_file else pretrained
    with torch.no_grad():
        embed_dim = int(model.encode_image(torch.zeros(1, 3, size, size, dtype=dtype)).shape[-1])
    return OpenClipBackbone(model, open_clip.get_tokenizer(arch), f"open_clip:{arch}/{tag}", preprocess,
                            embed_dim, normalize, dtype)


def _open_clip_preprocess_cfg(open_clip, model) -> dict[str, Any]:
    getter = getattr(open_clip, "get_model_preprocess_cfg", None) or getattr(open_clip.model, "get_model_preprocess_cfg",
                                                                            None)
    if getter is not None:
        return dict(getter(model))
    visual = model.visual
    return {"size": visual.image_size, "mean": getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN,
            "std": getattr(visual, "image_std", None) or OPENAI_CLIP_STD}


def _file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


# --- rinna japanese-clip --------------------------------------------------------------------------------------

def _load_rinna(source: str, normalize: bool, dtype: torch.dtype) -> Backbone:
    """The image tower of a japanese_clip ``CLIPModel`` checkpoint, built with transformers.

    japanese_clip's ``CLIPModel`` keeps the vision tower under ``vision_model.``
    (a CLIP vision model for ``clip``/``clip_vision_model`` vision configs,
    ``AutoModel.from_config(..., add_pooling_layer=False)`` otherwise, e.g. a
    ViT) and a bias-free ``visual_projection``. Loading is strict: a missing or
    unexpected tower weight is an error, never a silently random layer.
    """
    source, local = _local_or_hub(source, "rinna")
    root = local or _rinna_snapshot(source)
    with open(os.path.join(root, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    state = _read_state_dict(root)
    tower = _rinna_tower(config, state, f"rinna:{source}")
    if "visual_projection.weight" not in state:
        raise ValueError(f"backbone rinna:{source}: the checkpoint has no visual_projection.weight")
    weight = state["visual_projection.weight"]
    projection = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    projection.weight.data.copy_(weight)
    size = int(getattr(tower.config, "image_size", 224))
    preprocess = PreprocessConfig(crop=size, resize=size, mean=RINNA_MEAN, std=RINNA_STD,
                                  interpolation="bilinear", crop_offset="round")
    name = os.path.basename(os.path.normpath(local)) if local else source
    return RinnaClipBackbone(tower.to(dtype), projection.to(dtype), f"rinna:{name}@{weights_hash(root)}",
                             preprocess, normalize, dtype)


def _rinna_snapshot(hub_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(hub_id, allow_patterns=["config.json", "pytorch_model.bin", "model.safetensors"])
    except Exception as exc:
        raise ValueError(f"backbone rinna:{hub_id} could not be fetched ({type(exc).__name__}: {exc}); download "
                         "config.json and pytorch_model.bin where there is internet and pass rinna:DIR") from exc


def _read_state_dict(root: str) -> dict[str, torch.Tensor]:
    safetensors = os.path.join(root, "model.safetensors")
    if os.path.exists(safetensors):
        from safetensors.torch import load_file
        return load_file(safetensors)
    path = os.path.join(root, "pytorch_model.bin")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{root} holds neither model.safetensors nor pytorch_model.bin")
    return torch.load(path, map_location="cpu", weights_only=True)


def _rinna_tower(config: dict, state: dict[str, torch.Tensor], name: str) -> torch.nn.Module:
    """Build the vision tower through ``from_pretrained`` so transformers renames 4.x-era weight names itself."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel
    vision = dict(config.get("vision_config") or {})
    model_type = vision.pop("model_type", None)
    if not model_type:
        raise ValueError(f"backbone {name}: config.json has no vision_config.model_type")
    tower_state = {key[len("vision_model."):]: value.contiguous()
                   for key, value in state.items() if key.startswith("vision_model.")}
    if not tower_state:
        raise ValueError(f"backbone {name}: the checkpoint holds no vision_model.* weights")
    with tempfile.TemporaryDirectory() as tmp:
        if model_type in ("clip", "clip_vision_model"):
            CLIPVisionConfig(**vision).save_pretrained(tmp)
            loader, kwargs = CLIPVisionModel, {}
        else:
            AutoConfig.for_model(model_type, **vision).save_pretrained(tmp)
            loader, kwargs = AutoModel, {"add_pooling_layer": False}
        save_file(tower_state, os.path.join(tmp, "model.safetensors"))
        try:
            tower, info = loader.from_pretrained(tmp, output_loading_info=True, **kwargs)
        except RuntimeError as exc:  # size mismatches
            raise ValueError(f"backbone {name}: checkpoint does not match the image tower: {exc}") from exc
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith("position_ids")]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        raise ValueError(f"backbone {name}: checkpoint does not match the image tower: missing {sorted(missing)[:5]} "
                         f"({len(missing)}), unexpected {sorted(unexpected)[:5]} ({len(unexpected)}), "
                         f"mismatched {mismatched[:3]}")
    return tower
