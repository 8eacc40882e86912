"""RunInference model handler for frozen backbones: uint8 images in, float32 embeddings out."""
from __future__ import annotations

from scoring.backbone import Backbone, load_backbone
from transforms.inference import TorchImageModelHandler


class BackboneModelHandler(TorchImageModelHandler[Backbone]):
    """Embeds with the backbone ``spec`` names (CUDA when available); ``model_id`` is its ``backbone_id``."""

    def __init__(self, spec: str, device: str | None = None, normalize: bool = True, **batching):
        super().__init__(spec, device, **batching)
        self._normalize = normalize

    def load_model(self) -> Backbone:
        return load_backbone(self._spec, self._device, normalize=self._normalize)

    def get_metrics_namespace(self) -> str:
        return "imagescore_embed"
