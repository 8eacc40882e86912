"""The aggregator: keep only the newest update of each item over a few seconds.

Marketplace listings are edited in bursts (price, then title, then price again);
scoring and writing every edit would waste the analyzer and the cluster. Updates
are keyed by item id; the first one starts a processing-time timer of
``seconds``; until it fires, each later update either replaces the kept one (it
is newer) or is dropped, and either way one update is counted ``superseded``.

Newest means the larger ``updated_at``; ties go to a delete (as in the writer's
guard, docs/stale-guard.md), then to the later publish time, then the larger message id. Beam's ``Deduplicate`` keeps the *first* element, which is
the wrong rule here. A stale update that arrives in a later window is passed on:
the writer's stale-update guard refuses it against the indexed version.

Only updates that passed :func:`transforms.messages.parse_update` arrive here, so their
ids encode as keys; should an element still fail, it leaves as a dead letter of stage
``aggregator`` (on the ``deadletter`` output) instead of failing the job.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.deadletter import DEAD_LETTER
from transforms.messages import Update, element_dead_letter

STAGE = "aggregator"


class _KeepNewestFn(beam.DoFn):
    NEWEST = ReadModifyWriteStateSpec("newest", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, seconds: float, clock: Callable[[], float]):
        self._seconds = seconds
        self._clock = clock
        self._superseded = beam.metrics.Metrics.counter("imagescore", "superseded")

    def process(self, element: tuple[str, Update], newest=beam.DoFn.StateParam(NEWEST),
                flush=beam.DoFn.TimerParam(FLUSH)):
        update = element[1]
        try:
            kept = newest.read()
            if kept is None:
                newest.write(update)
                flush.set(Timestamp.of(self._clock() + self._seconds))
                return
            newer = update.order_key > kept.order_key
        except Exception as exc:  # noqa: BLE001 -- one element never fails the job
            yield element_dead_letter(STAGE, exc, update)
            return
        self._superseded.inc()
        if newer:
            newest.write(update)

    @on_timer(FLUSH)
    def emit(self, newest=beam.DoFn.StateParam(NEWEST)):
        update = newest.read()
        newest.clear()
        if update is None:
            return
        try:
            # The publish time stays the element's time, so the feeder can measure publish-to-write latency.
            yield TimestampedValue(update, Timestamp.from_utc_datetime(update.publish_time))
        except Exception as exc:  # noqa: BLE001 -- one element never fails the job
            yield element_dead_letter(STAGE, exc, update)


class KeepNewest(beam.PTransform):
    """``Update`` -> the newest ``Update`` per item id within ``seconds`` of its first arrival (``updates``),
    and the dead letters of stage ``aggregator`` (``deadletter``)."""

    def __init__(self, seconds: float = 5.0, clock: Callable[[], float] = time.time):
        super().__init__()
        if seconds < 0:
            raise ValueError(f"--aggregate-seconds must not be negative, got {seconds}")
        self._seconds = seconds
        self._clock = clock

    def expand(self, updates):
        return (updates
                # typed, so Beam keys the state with a deterministic str coder (it warns otherwise)
                | "KeyById" >> beam.Map(lambda update: (update.id, update)).with_output_types(
                    beam.typehints.KV[str, beam.typehints.Any])
                | "KeepNewest" >> beam.ParDo(_KeepNewestFn(self._seconds, self._clock)).with_outputs(
                    DEAD_LETTER, main="updates"))
