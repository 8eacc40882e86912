"""Pairwise ranking losses on the score gap ``s_w - s_l`` of (winner, loser) pairs.

Both work in log-space (``logsigmoid``) so a large gap of either sign gives a
finite loss and gradient, where ``log(sigmoid(x))`` would underflow to -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gap(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    if s_w.shape != s_l.shape:
        raise ValueError(f"winner and loser scores must have the same shape, got {tuple(s_w.shape)} and {tuple(s_l.shape)}")
    if s_w.numel() == 0:
        raise ValueError("no pairs: a loss over zero pairs is undefined; check that the batch is not empty")
    return s_w - s_l


def pairwise_ce_loss(s_w: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
    """ImageReward's loss, ``-log σ(s_w - s_l)``, averaged over pairs."""
    return -F.logsigmoid(_gap(s_w, s_l)).mean()


def pairwise_focal_loss(s_w: torch.Tensor, s_l: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on the pair probability ``p = σ(s_w - s_l)``: ``(1 - p)^γ · -log p``, averaged.

    No alpha term, as in the paper. ``1 - p = σ(-Δ)`` is taken as
    ``exp(logsigmoid(-Δ))`` so it stays exact for large gaps; ``gamma = 0``
    gives exactly :func:`pairwise_ce_loss`.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    delta = _gap(s_w, s_l)
    weight = torch.exp(gamma * F.logsigmoid(-delta))
    return (weight * -F.logsigmoid(delta)).mean()


LOSSES = {"ce", "focal"}


def pairwise_loss(name: str, s_w: torch.Tensor, s_l: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Dispatch on the config's ``loss`` name (``ce`` or ``focal``)."""
    if name == "ce":
        return pairwise_ce_loss(s_w, s_l)
    if name == "focal":
        return pairwise_focal_loss(s_w, s_l, gamma)
    raise ValueError(f"unknown loss {name!r}; use one of {sorted(LOSSES)}")
