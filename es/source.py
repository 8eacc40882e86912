"""Reading the items a backfill still has to score, split across workers.

The read is one point in time (PIT) cut into ``slices``: a first step opens the PIT
and emits one ``SliceTask`` per slice, a reshuffle spreads them over workers, and each
worker pages through its slice with ``search_after``. All slices see the same snapshot
and the same cutoff, so their union is exactly the matching set, without duplicates.

The query keeps items with ``created_at`` in the last ``days`` whose
``image_score_model`` is not the current model (a missing field counts as different),
so a rerun skips what an earlier run already scored.

Elements are the JSON text of each hit's ``_source``, with ``id`` set from ``_id``
(the document the score is written back to); the pipeline parses and validates them like any item message.
Every search answer may carry a new ``pit_id``; each slice uses the newest one it was handed
for its next page, and the PIT is closed with those newest ids once every slice has been read.
If a worker dies first, the PIT expires on its own after ``keep_alive`` of inactivity.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam

from es.client import EsConfig, EsError, call_with_retries, make_client
from es.client_dofn import EsClientDoFn
from es.mapping import CREATED_AT_FIELD, MODEL_FIELD

_LOG = logging.getLogger(__name__)
_NAMESPACE = "imagescore"
SLICE_DONE = "slice_done"


@dataclass(frozen=True)
class SliceTask:
    """One slice of one PIT: everything a worker needs to read it alone."""

    pit_id: str
    slice_id: int
    slices: int
    cutoff: str  # ISO-8601 UTC; computed once so every slice filters the same window


def backfill_query(cutoff: str, model_id: str) -> dict[str, Any]:
    """Items created at or after ``cutoff`` not yet scored by ``model_id``."""
    return {"bool": {
        "filter": [{"range": {CREATED_AT_FIELD: {"gte": cutoff, "format": "strict_date_optional_time"}}}],
        "must_not": [{"term": {MODEL_FIELD: model_id}}],
    }}


def _source_text(hit: dict) -> str:
    source = dict(hit.get("_source") or {})
    source["id"] = hit["_id"]  # the document id is the contract: scores are written back to it
    return json.dumps(source, ensure_ascii=False, separators=(",", ":"))


class _OpenPitFn(beam.DoFn):
    def __init__(self, config: EsConfig, index: str, slices: int, days: int, keep_alive: str,
                 now: datetime | None = None):
        self._config, self._index, self._slices = config, index, slices
        self._days, self._keep_alive, self._now = days, keep_alive, now

    def process(self, _: Any) -> Iterator[SliceTask]:
        now = self._now or datetime.now(UTC)
        cutoff = (now - timedelta(days=self._days)).isoformat(timespec="seconds")
        client = make_client(self._config)
        try:
            response = call_with_retries(
                lambda: client.open_point_in_time(index=self._index, keep_alive=self._keep_alive),
                f"opening a point in time on index {self._index!r}")
        finally:
            client.close()
        beam.metrics.Metrics.counter(_NAMESPACE, "es_pit_opened").inc()
        for slice_id in range(self._slices):
            yield SliceTask(response["id"], slice_id, self._slices, cutoff)


class _ReadSliceFn(EsClientDoFn):
    def __init__(self, config: EsConfig, model_id: str, page_size: int, keep_alive: str):
        self._config, self._model_id = config, model_id
        self._page_size, self._keep_alive = page_size, keep_alive
        self._read = beam.metrics.Metrics.counter(_NAMESPACE, "es_items_read")
        self._pages = beam.metrics.Metrics.counter(_NAMESPACE, "es_search_pages")

    def process(self, task: SliceTask) -> Iterator[Any]:
        pit_id = task.pit_id
        search_after = None
        while True:
            kwargs: dict[str, Any] = {
                "pit": {"id": pit_id, "keep_alive": self._keep_alive},
                "query": backfill_query(task.cutoff, self._model_id),
                "sort": [{"_shard_doc": "asc"}],
                "size": self._page_size,
                "track_total_hits": False,
            }
            if task.slices > 1:  # Elasticsearch refuses a slice with max 1
                kwargs["slice"] = {"id": task.slice_id, "max": task.slices}
            if search_after is not None:
                kwargs["search_after"] = search_after
            response = call_with_retries(
                lambda kwargs=kwargs: self._client.search(**kwargs),
                f"searching slice {task.slice_id}/{task.slices} of the backfill point in time")
            self._pages.inc()
            pit_id = response.get("pit_id", pit_id)  # Elasticsearch may hand back a newer id
            hits = response["hits"]["hits"]
            for hit in hits:
                self._read.inc()
                yield _source_text(hit)
            if len(hits) < self._page_size:
                break
            search_after = hits[-1]["sort"]
        yield beam.pvalue.TaggedOutput(SLICE_DONE, (task.pit_id, pit_id))  # the newest id, for closing


class _ClosePitFn(beam.DoFn):
    """Closes a PIT once all its slices are read, with the newest id each slice was handed.

    The ids usually agree; when Elasticsearch handed out new ones, closing each distinct one
    frees whatever contexts an older id no longer names. An id whose contexts are already
    freed answers 404 with ``num_freed: 0``, which is not an error here.
    """

    def __init__(self, config: EsConfig):
        self._config = config

    # No return hint: it outputs nothing, and Beam 2.78 resolves a ``-> None`` under postponed annotations
    # to NoneType, which it rejects at construction as "Return value not iterable".
    def process(self, done: tuple[str, list[str]]):
        _, latest_ids = done
        client = make_client(self._config)
        closer = client.options(ignore_status=404)
        try:
            for pit_id in sorted(set(latest_ids)):
                call_with_retries(lambda pit_id=pit_id: closer.close_point_in_time(id=pit_id),
                                  "closing the backfill point in time", max_retries=2, max_retry_time=10)
            beam.metrics.Metrics.counter(_NAMESPACE, "es_pit_closed").inc()
        except EsError as exc:
            # Not worth failing a finished read for: the PIT expires after keep_alive anyway.
            _LOG.warning("could not close the point in time after reading %d slices (%s); "
                         "it expires on its own", len(latest_ids), exc)
        finally:
            client.close()


class ReadItemsFromElasticsearch(beam.PTransform):
    """Items created in the last ``days`` not yet scored by ``model_id``, as JSON text of their ``_source``.

    ``slices`` is how many parallel readers the point in time is cut into; ``page_size`` is
    hits per search request; ``keep_alive`` is how long the PIT lives between requests;
    ``now`` (tz-aware) pins the end of the window for reproducible runs, default: when the read starts.
    """

    def __init__(self, config: EsConfig, index: str, days: int = 90, model_id: str = "",
                 slices: int = 4, page_size: int = 1000, keep_alive: str = "10m", now: datetime | None = None,
                 label: str | None = None):
        super().__init__(label)
        if now is not None and now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC), or the window would shift with the worker's zone")
        self._now = now
        if not model_id:
            raise ValueError("model_id is required: it is how a rerun recognises items already scored")
        if days <= 0 or slices <= 0 or not 0 < page_size <= 10_000:
            raise ValueError(f"days ({days}) and slices ({slices}) must be positive and "
                             f"page_size ({page_size}) in 1..10000")
        self._config, self._index, self._days, self._model_id = config, index, days, model_id
        self._slices, self._page_size, self._keep_alive = slices, page_size, keep_alive

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        read = (begin
                | "Impulse" >> beam.Impulse()
                | "OpenPit" >> beam.ParDo(_OpenPitFn(self._config, self._index, self._slices, self._days,
                                                     self._keep_alive, self._now))
                | "SpreadSlices" >> beam.Reshuffle()
                | "ReadSlice" >> beam.ParDo(_ReadSliceFn(self._config, self._model_id, self._page_size,
                                                         self._keep_alive)).with_outputs(SLICE_DONE, main="items"))
        _ = (read[SLICE_DONE]
             | "GatherLatestIds" >> beam.CombinePerKey(beam.combiners.ToListCombineFn())
             | "ClosePit" >> beam.ParDo(_ClosePitFn(self._config)))
        # Break fusion: otherwise fetching and scoring a page would run between two searches of the
        # same PIT, and a slow page would outlive keep_alive and fail the read for good.
        return read["items"] | "DecoupleFromPit" >> beam.Reshuffle()
