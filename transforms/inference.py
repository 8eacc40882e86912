"""RunInference model handlers for local PyTorch models (GPU when there is one).

Beam's ``RunInference`` owns batching (``min_batch_size``/``max_batch_size``)
and loads the model once per worker through ``shared.Shared``; a handler only
says how to load a model and how to run one batch of uint8 HWC arrays through
it, in the shape of Beam's ``PytorchModelHandlerTensor``. Two models share that
code: a :class:`~scoring.model.ScoreModel` (one score per image, for indexing)
and a frozen :class:`~scoring.backbone.Backbone` (one embedding per image, for
training data).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from scoring.model import DEFAULT_MODEL, ImageModule, ScoreModel, load_model, model_info
from transforms.triton_handler import TritonModelHandler, is_triton_spec, triton_model_info

ModelT = TypeVar("ModelT", bound=ImageModule)


class TorchImageModelHandler(ModelHandler[np.ndarray, PredictionResult, ModelT], Generic[ModelT]):
    """uint8 HWC images in, one :class:`PredictionResult` per image out, with the model's id as ``model_id``."""

    def __init__(self, spec: str, device: str | None = None, *,
                 min_batch_size: int | None = None, max_batch_size: int | None = None,
                 max_batch_duration_secs: int | None = None, large_model: bool = False,
                 model_copies: int | None = None):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs, large_model=large_model,
                         model_copies=model_copies)
        self._spec = spec
        self._device = device

    def run_inference(self, batch: Sequence[np.ndarray], model: ModelT,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        outputs, model_id = model.infer(np.stack(batch))
        return [PredictionResult(example, self.result_value(output), model_id)
                for example, output in zip(batch, outputs)]

    def result_value(self, output: np.ndarray) -> Any:
        return output

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)


class ScoreModelHandler(TorchImageModelHandler[ScoreModel]):
    """Scores with the model ``--model`` names; ``inference`` is the score, a float in [0, 1]."""

    def __init__(self, model_spec: str = DEFAULT_MODEL, device: str | None = None, **batching):
        super().__init__(model_spec, device, **batching)

    def load_model(self) -> ScoreModel:
        return load_model(self._spec, self._device)

    def result_value(self, output: np.ndarray) -> float:
        return float(output)

    def get_metrics_namespace(self) -> str:
        return "imagescore_inference"


def score_model_info(spec: str) -> tuple[str, int]:
    """``(model_id, input_size)`` of any ``--model``; a ``triton://`` spec asks the server."""
    return triton_model_info(spec) if is_triton_spec(spec) else model_info(spec)


def make_score_handler(spec: str, device: str | None = None, *, min_batch_size: int | None = None,
                       max_batch_size: int | None = None, large_model: bool = False,
                       triton_timeout_s: float = 60.0, triton_retries: int = 5,
                       model_unavailable_s: float | None = None) -> ModelHandler:
    """The local PyTorch handler, or the Triton gRPC one for ``triton://HOST:PORT/NAME``.

    ``model_unavailable_s`` (streaming) bounds Triton retries by time instead of by count.
    """
    if is_triton_spec(spec):
        return TritonModelHandler(spec, timeout_s=triton_timeout_s, num_retries=triton_retries,
                                  unavailable_s=model_unavailable_s,
                                  min_batch_size=min_batch_size, max_batch_size=max_batch_size)
    return ScoreModelHandler(spec, device, min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                             large_model=large_model)
