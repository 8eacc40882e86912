"""The MLP head on frozen image embeddings, in the ImageReward / LAION aesthetic shape.

d -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout 0.2 / 0.2 / 0.1 after the first
three layers. Initialisation follows ImageReward's ``MLP`` exactly (checked in
THUDM/ImageReward, ``ImageReward/ImageReward.py``): every weight is drawn from
``N(0, std = 1 / (d + 1))`` -- the *standard deviation* is ``1/(d+1)``, not
``1/sqrt(d+1)``, and ``d`` is the head's input size for every layer -- and
every bias starts at 0. The output starts tiny (around 1e-8); AdamW's
per-parameter step size does not care about that scale.

Activation: the default is ``none``. ImageReward ships its MLP with the ReLUs
commented out, and LAION's improved aesthetic predictor has none either, so
the paper's lineage trains what is in effect a linear probe on CLIP features
(with dropout as the only regulariser). ``relu`` and ``gelu`` are there for
backbones whose features are not linearly separable by quality.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

ACTIVATIONS = {"none": None, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    input_dim: int
    hidden: tuple[int, ...] = (1024, 128, 64, 16)
    dropout: tuple[float, ...] = (0.2, 0.2, 0.1)
    activation: str = "none"

    def __post_init__(self):
        if self.input_dim < 1:
            raise ValueError(f"head input_dim must be positive, got {self.input_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown head activation {self.activation!r}; use one of {sorted(ACTIVATIONS)}")
        if len(self.dropout) > len(self.hidden):
            raise ValueError(f"{len(self.dropout)} dropout rates for {len(self.hidden)} hidden layers")

    def to_dict(self) -> dict:
        return {"input_dim": self.input_dim, "hidden": list(self.hidden),
                "dropout": list(self.dropout), "activation": self.activation}

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        return cls(input_dim=int(data["input_dim"]), hidden=tuple(data["hidden"]),
                   dropout=tuple(data["dropout"]), activation=data["activation"])


class ScoreHead(nn.Module):
    """Maps embeddings ``[N, d]`` to raw scores (logits) ``[N]``; the sigmoid lives in the served model."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.input_dim
        act = ACTIVATIONS[config.activation]
        for k, out in enumerate(config.hidden):
            layers.append(nn.Linear(width, out))
            if act is not None:
                layers.append(act())
            if k < len(config.dropout):
                layers.append(nn.Dropout(config.dropout[k]))
            width = out
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        std = 1.0 / (config.input_dim + 1)
        for name, param in self.layers.named_parameters():
            if name.endswith("weight"):
                nn.init.normal_(param, mean=0.0, std=std)
            else:
                nn.init.zeros_(param)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)
