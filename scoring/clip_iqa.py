"""CLIP-IQA: zero-shot image quality from any CLIP and antonym prompt pairs (Wang et al., AAAI 2023).

For each pair (``"Good photo."``, ``"Bad photo."``) the image embedding's
cosine similarity to both prompts, times the CLIP's logit scale, goes through
a softmax over the pair; the score is the positive prompt's probability,
averaged over the pairs. This is the zero-shot CLIP-IQA of the paper (as in
IQA-PyTorch's ``clipiqa``, with the backbone's own preprocessing), not the
prompt-tuned CLIP-IQA+.

``--model clip-iqa:BACKBONE`` takes any CLIP that :func:`scoring.backbone.load_backbone`
loads with a text tower (``hf:``, ``open_clip:`` or a local directory);
``--model 'clip-iqa:BACKBONE;prompts=FILE'`` reads the pairs from a JSON list of
``[positive, negative]`` pairs. The text embeddings are computed once at load
time and kept as a buffer, so the exported TorchScript carries them and the
model takes the same uint8 NHWC batch as every other score model.

Its quality can be measured only with real CLIP weights; the tests here run a
tiny random CLIP, which checks the plumbing and the arithmetic, not the
ranking.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import torch

from scoring.backbone import Backbone, load_backbone
from scoring.model import ScoreModel, check_batch

SCHEME = "clip-iqa:"
PROMPTS_OPTION = ";prompts="
#: the antonym pair CLIP-IQA starts from
DEFAULT_PROMPTS: tuple[tuple[str, str], ...] = (("Good photo.", "Bad photo."),)
#: CLIP's trained logit scale (exp of the stored value) when the backbone does not expose one
DEFAULT_LOGIT_SCALE = 100.0
USAGE = ("use --model clip-iqa:BACKBONE (BACKBONE: hf:<hub id or dir>, open_clip:<arch>/<tag>, or a CLIP directory), "
         "optionally 'clip-iqa:BACKBONE;prompts=FILE' with FILE a JSON list of [positive, negative] prompt pairs")


def check_prompts(prompts: Sequence[Sequence[str]], source: str = "prompts") -> tuple[tuple[str, str], ...]:
    """The prompt pairs as a tuple of (positive, negative); raises ``ValueError`` naming ``source`` when unusable."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError(f"CLIP-IQA {source}: expected a list of [positive, negative] prompt pairs, got "
                         f"{type(prompts).__name__}; {USAGE}")
    if len(prompts) == 0:
        raise ValueError(f"CLIP-IQA {source}: the prompt list is empty; give at least one [positive, negative] pair, "
                         f"e.g. [[\"Good photo.\", \"Bad photo.\"]]")
    pairs = []
    for i, pair in enumerate(prompts):
        if (isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(p, str) and p.strip() for p in pair)):
            raise ValueError(f"CLIP-IQA {source}: pair {i} is {pair!r}; each pair must be two non-empty strings "
                             "[positive, negative]")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def read_prompts(path: str) -> tuple[tuple[str, str], ...]:
    """Prompt pairs from a JSON file holding ``[[positive, negative], ...]``."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            loaded = json.load(handle)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"CLIP-IQA prompts file {path} does not exist; {USAGE}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"CLIP-IQA prompts file {path} is not JSON ({exc}); {USAGE}") from exc
    return check_prompts(loaded, f"prompts file {path}")


def parse_spec(spec: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``clip-iqa:BACKBONE[;prompts=FILE]`` -> (backbone spec, prompt pairs)."""
    if not spec.startswith(SCHEME):
        raise ValueError(f"--model {spec!r} is not a CLIP-IQA spec; {USAGE}")
    rest = spec[len(SCHEME):]
    backbone, sep, prompts_path = rest.partition(PROMPTS_OPTION)
    if not backbone.strip():
        raise ValueError(f"--model {spec!r} names no backbone; {USAGE}")
    if sep and not prompts_path.strip():
        raise ValueError(f"--model {spec!r}: ';prompts=' names no file; {USAGE}")
    return backbone.strip(), (read_prompts(prompts_path.strip()) if sep else DEFAULT_PROMPTS)


def _logit_scale(backbone: Backbone) -> float:
    """CLIP's own temperature (HF and open_clip both store log(scale) as ``logit_scale``)."""
    inner = getattr(backbone, "model", None)
    scale = getattr(inner, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        return float(scale.detach().float().exp().clamp(max=100.0))
    return DEFAULT_LOGIT_SCALE


class ClipIqaScorer(ScoreModel):
    """``forward(uint8 NHWC) -> [N]``: mean over prompt pairs of softmax(scale * cos) for the positive prompt."""

    def __init__(self, backbone: Backbone, prompts: Sequence[Sequence[str]] = DEFAULT_PROMPTS,
                 logit_scale: float | None = None):
        super().__init__()
        pairs = check_prompts(prompts)
        if not backbone.normalize:
            raise ValueError(f"CLIP-IQA needs L2-normalised embeddings; load backbone {backbone.backbone_id} "
                             "with normalize=True")
        try:
            text = backbone.encode_text([prompt for pair in pairs for prompt in pair])
        except ValueError as exc:
            raise ValueError(f"--model clip-iqa:{backbone.backbone_id}: {exc}") from exc
        self.backbone = backbone
        self.prompts = pairs
        self.logit_scale = float(_logit_scale(backbone) if logit_scale is None else logit_scale)
        # clone(): encode_text runs in inference mode; a buffer must be an ordinary tensor to be traced.
        self.register_buffer("text", text.float().clone().view(len(pairs), 2, -1))
        self.input_size = backbone.input_size
        suffix = "" if pairs == DEFAULT_PROMPTS else "+prompts@" + hashlib.sha256(
            json.dumps(pairs).encode()).hexdigest()[:8]
        self.model_id = f"clip-iqa:{backbone.backbone_id}{suffix}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_batch(images, self.input_size)
        embedding = self.backbone(images).float()                                # [N, D], unit length
        logits = self.logit_scale * torch.einsum("nd,pkd->npk", embedding, self.text)
        return logits.softmax(dim=-1)[..., 0].mean(dim=1)


def load_clip_iqa(spec: str, device: torch.device) -> ClipIqaScorer:
    """The CLIP-IQA scorer a ``clip-iqa:`` spec names, on ``device``."""
    backbone_spec, prompts = parse_spec(spec)
    try:
        backbone = load_backbone(backbone_spec, device=device, normalize=True)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise ValueError(f"--model {spec!r}: backbone {backbone_spec!r} could not be loaded: {exc}") from exc
    return ClipIqaScorer(backbone, prompts)
