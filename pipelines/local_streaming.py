"""What the local streaming runner (``BundleBasedDirectRunner``) needs to run this job honestly.

Two fixes, installed by :func:`install` for local runs only (they patch the direct
runner's classes, which no other runner uses):

* **Counters.** Beam 2.77's direct runner makes a new ``MetricsContainer`` for every
  bundle, but its per-thread ``StateSampler`` caches each step's scoped state by
  name, with the container of the step's *first* bundle. Every later bundle's
  counters land in that first container, which was already committed, and are lost:
  a step that ran a hundred bundles reports the counts of one. Here each worker
  thread gets one container per step, emptied at the start of every bundle; it is
  the one the cached scoped state holds, so each bundle's updates count once.
* **Pulls.** The direct runner pulls Pub/Sub with a 30 s long poll of at most 10
  messages, and processing-time timers (the aggregator's window, the feeder's
  buffer) fire only between pulls, so on an idle topic they fire up to 30 s late
  (apache/beam#25442). Here a pull waits at most ``pull_seconds`` (default 1) and
  takes up to ``max_messages``; an empty pull simply returns nothing.
"""
from __future__ import annotations

import threading
from typing import Any

from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.direct import executor, transform_evaluator

_local = threading.local()
_settings = {"pull_seconds": 1.0, "max_messages": 100}


def _bundle_container(step_name: str) -> MetricsContainer:
    containers = getattr(_local, "containers", None)
    if containers is None:
        containers = _local.containers = {}
    container = containers.get(step_name)
    if container is None:
        container = containers[step_name] = MetricsContainer(step_name)
    else:
        container.reset()
    return container


class _ShortPulls:
    """The subscriber client with pulls bounded by ``pull_seconds`` and ``max_messages``."""

    def __init__(self, client: Any):
        self._client = client

    def pull(self, subscription: str, max_messages: int, timeout: float):
        return self._client.pull(subscription=subscription, max_messages=max(max_messages, _settings["max_messages"]),
                                 timeout=min(timeout, _settings["pull_seconds"]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


_original_client = transform_evaluator._PubSubReadEvaluator._get_subscriber_client.__func__


def _short_pull_client(cls, transform):
    return _ShortPulls(_original_client(cls, transform))


def install(pull_seconds: float = 1.0, max_messages: int = 100) -> None:
    """Patch the direct runner (idempotent)."""
    if pull_seconds <= 0 or max_messages < 1:
        raise ValueError(f"pull_seconds must be positive and max_messages at least 1, got {pull_seconds}, "
                         f"{max_messages}")
    _settings.update(pull_seconds=pull_seconds, max_messages=max_messages)
    executor.MetricsContainer = _bundle_container
    transform_evaluator._PubSubReadEvaluator._get_subscriber_client = classmethod(_short_pull_client)
