"""The paper's comparison scorers (Table 1): Random, CTR Highest, CLIP Score, and Image Score itself.

Each returns one score per image of a :class:`training.data.SplitData`; the
metrics then rank the images of a SERP by it. Higher is better everywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from training.data import Embeddings, SplitData, read_records


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Uniform scores from a seeded generator: the 50 / 50 reference (continuous, so ties have probability 0)."""
    return np.random.default_rng(seed).random(n)


# ---------------------------------------------------------------- CTR Highest
@dataclasses.dataclass(frozen=True)
class CtrTable:
    counts: dict[str, tuple[int, int]]  # item_id -> (impressions, clicks)
    prior: float                        # global CTR: sum(clicks) / sum(impressions)

    def smoothed(self, item_id: str, prior_strength: float) -> float:
        """``(clicks + m * prior) / (impressions + m)``: a Beta prior worth ``m`` impressions at the global CTR.

        Rarely shown items are pulled towards the global CTR instead of
        ranking 1/1 above 90/100; items never shown before the cutoff get the
        prior itself, so two unseen items tie (and a tie counts as wrong).
        """
        shown, clicks = self.counts.get(item_id, (0, 0))
        return (clicks + prior_strength * self.prior) / (shown + prior_strength)


def load_ctr(pattern: str) -> CtrTable:
    """collect's ``ctr*.jsonl`` (impressions and clicks before ``--ctr-cutoff``)."""
    counts: dict[str, tuple[int, int]] = {}
    for k, row in enumerate(read_records(pattern, "--ctr")):
        item_id, shown, clicks = row.get("item_id"), row.get("impressions"), row.get("clicks")
        if not isinstance(item_id, str) or not isinstance(shown, int) or not isinstance(clicks, int) \
                or shown < 0 or not 0 <= clicks <= shown:
            raise ValueError(f"--ctr row {k}: need item_id and integer 0 <= clicks <= impressions, got {row!r}")
        old = counts.get(item_id, (0, 0))
        counts[item_id] = (old[0] + shown, old[1] + clicks)  # several shards may hold one item
    total_shown = sum(s for s, _ in counts.values())
    if total_shown == 0:
        raise ValueError(f"--ctr {pattern!r} has no impressions; move --ctr-cutoff later in collect")
    return CtrTable(counts, sum(c for _, c in counts.values()) / total_shown)


def ctr_scores(split: SplitData, table: CtrTable, prior_strength: float = 10.0) -> np.ndarray:
    return np.array([table.smoothed(item, prior_strength) for item in split.item_id], dtype=np.float64)


# ---------------------------------------------------------------- CLIP Score
def clip_scores(split: SplitData, embeddings: Embeddings, backbone, batch_size: int = 256) -> np.ndarray:
    """Cosine between the SERP's query text embedding and each image embedding, from one CLIP.

    Raises ValueError when the backbone has no text tower or is not the one the
    image embeddings came from (a cosine across two models means nothing).
    """
    if backbone.backbone_id != embeddings.backbone_id:
        raise ValueError(f"the text backbone is {backbone.backbone_id!r} but the image embeddings come from "
                         f"{embeddings.backbone_id!r}")
    queries = sorted(set(split.queries))
    text = []
    with torch.inference_mode():
        for k in range(0, len(queries), batch_size):
            text.append(backbone.encode_text(queries[k:k + batch_size]).float().cpu())
    text_matrix = torch.nn.functional.normalize(torch.cat(text), dim=-1).numpy() if text else np.zeros((0, 1))
    query_row = {q: k for k, q in enumerate(queries)}
    image = embeddings.matrix[split.row]
    image = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    per_image_query = np.array([query_row[split.queries[g]] for g in split.group], dtype=np.int64)
    return np.einsum("nd,nd->n", image, text_matrix[per_image_query]).astype(np.float64)


# ---------------------------------------------------------------- Image Score
def image_score_method(run_dir: str) -> str:
    """``Image Score (FL)`` / ``Image Score (CE)`` from the run's config."""
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        loss = json.load(handle).get("loss")
    return {"focal": "Image Score (FL)", "ce": "Image Score (CE)"}.get(loss, f"Image Score ({loss})")


def head_scores(run_dir: str, split: SplitData, embeddings: Embeddings) -> np.ndarray:
    """The run's head on the stored embeddings (same ranking as the served sigmoid(head))."""
    from scoring.checkpoint import load_head
    head, checkpoint = load_head(run_dir, "cpu")
    trained_on = checkpoint["backbone"]["id"]
    if trained_on != embeddings.backbone_id:
        raise ValueError(f"run {run_dir} was trained on backbone {trained_on!r} but --embeddings come from "
                         f"{embeddings.backbone_id!r}; evaluate it on embeddings of its own backbone")
    with torch.no_grad():
        return head(torch.from_numpy(embeddings.matrix[split.row])).double().numpy()
