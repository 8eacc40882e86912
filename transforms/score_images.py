"""The scoring chain every job shares: fetch the thumbnail, decode it, run the model.

    Item (or Update) -> FetchImages -> DecodeImages(input_size)
      -> RunInference(KeyedModelHandler(handler)).with_exception_handling()
      -> ``scored``: (element, PredictionResult)     ``deadletter``: every failure, one per element

The backfill, the streaming analyzer and the embeddings job apply it; they differ only
in the handler (a score model or a frozen backbone) and in what they make of a result.
A model that raises on a batch dead-letters that batch's elements, each with its original
payload, as ``model_unavailable`` (a Triton server that stayed down past its budget:
replay them once it is back) or ``inference_error``; the other batches go on. Fetch and
decode failures keep those transforms' reasons.

Elements are anything with ``id``, ``thumbnail`` and ``payload`` (:class:`~transforms.items.Item`,
:class:`~transforms.messages.Update`). :class:`ScoreRecordFn` turns a scored element into the
record a job writes, with the score fields built once (:func:`es.guard.score_fields`).

With ``provenance`` (caps), the decode step reads what the image's metadata says about its
origin (:mod:`transforms.provenance`) and the key of a ``scored`` result is
:class:`~transforms.provenance.WithProvenance`; :class:`ScoreRecordFn` writes it with the score.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from es.guard import score_fields
from transforms.deadletter import DEAD_LETTER, DEADLETTERED, count_dead_letter, dead_letter
from transforms.decode import DEFAULT_MAX_PIXELS, DecodeImages
from transforms.fetch import FetchImages, FetchPolicy
from transforms.provenance import ProvenanceLimits, WithProvenance
from transforms.triton_handler import ModelUnavailable

SCORED = "scored"
INFERENCE_STAGE = "inference"


class _InferenceDeadLettersFn(beam.DoFn):
    """A batch RunInference failed on -> one dead letter per element, with the element's original payload."""

    def __init__(self, stage: str, total: str):
        self._stage = stage
        self._total = total

    def process(self, failure):
        batch, error = failure
        # Beam hands over (exception type, repr(exception), traceback lines)
        exc = error[1] if isinstance(error, tuple) and len(error) > 1 else error
        unavailable = isinstance(exc, ModelUnavailable) or "ModelUnavailable" in str(error)
        reason = "model_unavailable" if unavailable else "inference_error"
        for element, _ in (batch if isinstance(batch, list) else [batch]):
            if isinstance(element, WithProvenance):
                element = element.element
            count_dead_letter(self._stage, reason, self._total)
            yield dead_letter(self._stage, reason, exc, element.payload, id=element.id)


class ScoreImages(beam.PTransform):
    """Elements -> ``scored`` (element, PredictionResult) and ``deadletter`` (fetch, decode, inference).

    ``stage`` names the dead letters of all three steps (the analyzer's ``analyzer``); by
    default they are ``fetch``, ``decode`` and ``inference``. ``total`` is the counter they add to
    (:func:`~transforms.deadletter.count_dead_letter`): ``deadlettered`` unless the caller makes
    something else of the failed element (the analyzer indexes it without its score).
    """

    def __init__(self, handler: ModelHandler, input_size: int, policy: FetchPolicy | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, stage: str | None = None,
                 provenance: ProvenanceLimits | None = None, total: str = DEADLETTERED):
        super().__init__()
        self._total = total
        self._provenance = provenance
        self._handler = handler
        self._input_size = input_size
        self._policy = policy or FetchPolicy()
        self._max_pixels = max_pixels
        self._stage = stage

    def expand(self, elements):
        stages = {"total": self._total} if self._stage is None else {"stage": self._stage, "total": self._total}
        fetched = elements | "Fetch" >> FetchImages(self._policy, **stages)
        decoded = fetched[FetchImages.MAIN] | "Decode" >> DecodeImages(
            self._input_size, max_pixels=self._max_pixels, provenance=self._provenance, **stages)
        scored, failed = (decoded[DecodeImages.MAIN]
                          | "RunInference" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling())
        inference_failures = failed.failed_inferences | "InferenceFailures" >> beam.ParDo(
            _InferenceDeadLettersFn(self._stage or INFERENCE_STAGE, self._total))
        dead = ((fetched[DEAD_LETTER], decoded[DEAD_LETTER], inference_failures)
                | "AllDeadLetters" >> beam.Flatten())
        return {SCORED: scored, DEAD_LETTER: dead}


class ScoreRecordFn(beam.DoFn):
    """(element, PredictionResult) -> ``build(element, score fields)``, counted ``scored``; an element that
    fails is a dead letter of ``stage`` with its original payload, so one element never fails the job.

    ``build`` adds what the job writes beside the score fields (the backfill its score record,
    the analyzer the item's document); it must be picklable (a module-level function).
    Apply it with :meth:`apply`, which gives ``records`` and ``deadletter``.
    """

    def __init__(self, build: Callable[[Any, dict[str, Any]], Any], stage: str):
        self._build = build
        self._stage = stage
        self._scored = beam.metrics.Metrics.counter("imagescore", "scored")

    @classmethod
    def apply(cls, build: Callable[[Any, dict[str, Any]], Any], stage: str) -> beam.PTransform:
        return beam.ParDo(cls(build, stage)).with_outputs(DEAD_LETTER, main="records")

    def process(self, keyed_result: tuple[Any, PredictionResult]):
        element, result = keyed_result
        provenance = None
        if isinstance(element, WithProvenance):
            element, provenance = element
        try:
            record = self._build(element, score_fields(result.inference, result.model_id, element.thumbnail,
                                                       provenance=provenance))
        except Exception as exc:  # noqa: BLE001 -- a record that cannot be built is that element's dead letter
            count_dead_letter(self._stage, "unexpected_error")
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                self._stage, "unexpected_error", exc, getattr(element, "payload", repr(element)),
                id=getattr(element, "id", None)))
            return
        self._scored.inc()
        yield record
