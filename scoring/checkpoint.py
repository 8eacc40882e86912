"""A training run directory, and the served model it turns into (frozen backbone + MLP head + sigmoid).

``checkpoint.pt`` holds only plain tensors and primitives, so it loads with
``torch.load(weights_only=True)``. The backbone is not copied into it: it is
named by its spec (what ``scoring.backbone.load_backbone`` loads) and its id
(checked on load, so a head is never served on top of other features than the
ones it was trained on).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from scoring.head import HeadConfig, ScoreHead
from scoring.model import ScoreModel, check_batch, resolve_device

FORMAT = "imagescore-run/1"
CHECKPOINT = "checkpoint.pt"


class HeadOnBackbone(ScoreModel):
    """uint8 NHWC images -> backbone embedding -> head logit -> sigmoid, one score in [0, 1] per image."""

    def __init__(self, backbone: torch.nn.Module, head: ScoreHead, model_id: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.model_id = model_id
        self.input_size = int(backbone.input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_batch(images, self.input_size)
        return torch.sigmoid(self.head(self.backbone(images)).float())


def _json_dump(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def save_run(run_dir: str, *, head: ScoreHead, backbone_spec: str, backbone_id: str, normalize: bool,
             input_size: int, run_name: str, config: dict, metrics: dict, model_card: str) -> str:
    """Write ``checkpoint.pt``, ``config.json``, ``metrics.json`` and ``MODEL_CARD.md``; return the model id."""
    os.makedirs(run_dir, exist_ok=True)
    state = {key: value.detach().cpu().clone() for key, value in head.state_dict().items()}
    torch.save({"format": FORMAT, "run_name": run_name, "head_config": head.config.to_dict(), "head_state": state,
                "backbone": {"spec": backbone_spec, "id": backbone_id, "normalize": bool(normalize),
                             "input_size": int(input_size)}},
               os.path.join(run_dir, CHECKPOINT))
    _json_dump(os.path.join(run_dir, "config.json"), config)
    model_id = run_model_id(run_dir)
    _json_dump(os.path.join(run_dir, "metrics.json"), {"model_id": model_id, **metrics})
    with open(os.path.join(run_dir, "MODEL_CARD.md"), "w", encoding="utf-8") as handle:
        handle.write(model_card.replace("{model_id}", model_id))
    return model_id


def read_checkpoint(run_dir: str) -> dict:
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir!r} is not a training run: {CHECKPOINT} is missing "
                                "(create one with `imagescore train --output RUN_DIR`)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path}: not an imagescore run checkpoint (expected format {FORMAT!r})")
    return checkpoint


def head_kind(backbone_id: str) -> str:
    """The model family a head belongs to, named after its backbone: ``handcrafted-mlp`` on the
    handcrafted image statistics, ``clip-mlp`` on a CLIP image tower (Hugging Face, open_clip, rinna)."""
    return "handcrafted-mlp" if backbone_id.startswith("handcrafted:") else "clip-mlp"


def run_model_id(run_dir: str) -> str:
    """``<head kind>:<run name>@<first 10 hex of the checkpoint's sha256>``, e.g. ``clip-mlp:fl@0123456789``:
    changes whenever the weights do."""
    checkpoint = read_checkpoint(run_dir)
    with open(os.path.join(run_dir, CHECKPOINT), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:10]
    return f"{head_kind(checkpoint['backbone']['id'])}:{checkpoint['run_name']}@{digest}"


def run_info(run_dir: str) -> tuple[str, int]:
    """``(model_id, input_size)`` from the checkpoint alone, without loading the backbone's weights."""
    return run_model_id(run_dir), int(read_checkpoint(run_dir)["backbone"]["input_size"])


def load_head(run_dir: str, device: str | torch.device = "cpu") -> tuple[ScoreHead, dict]:
    """The trained head alone (eval mode) and the checkpoint's metadata; for scoring stored embeddings."""
    checkpoint = read_checkpoint(run_dir)
    head = ScoreHead(HeadConfig.from_dict(checkpoint["head_config"]))
    head.load_state_dict(checkpoint["head_state"])
    return head.to(device).eval(), checkpoint


def load_run(run_dir: str, device: str | torch.device | None = None) -> ScoreModel:
    """Backbone (by its recorded spec) + head + sigmoid as one :class:`ScoreModel` with the uint8 interface."""
    from scoring.backbone import load_backbone
    device = resolve_device(device)
    head, checkpoint = load_head(run_dir, device)
    meta = checkpoint["backbone"]
    backbone = load_backbone(meta["spec"], device=device, normalize=meta["normalize"])
    if backbone.backbone_id != meta["id"]:
        raise ValueError(f"{run_dir}: the head was trained on backbone {meta['id']!r} but spec {meta['spec']!r} "
                         f"now loads {backbone.backbone_id!r}; restore that backbone or retrain the head")
    if int(backbone.embed_dim) != head.config.input_dim:
        raise ValueError(f"{run_dir}: backbone gives {backbone.embed_dim}-d embeddings, head expects "
                         f"{head.config.input_dim}")
    model = HeadOnBackbone(backbone, head, run_model_id(run_dir))
    return model.to(device).eval()
