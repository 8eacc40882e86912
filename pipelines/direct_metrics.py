"""Correct Beam counters on the local streaming runner (``BundleBasedDirectRunner``).

Beam 2.77's direct runner makes a new ``MetricsContainer`` for every bundle, but
its per-thread ``StateSampler`` caches each step's scoped state by name, with the
container of the step's *first* bundle. Every later bundle's counters then land
in that first container, which was already committed, and are lost: a step that
ran a hundred bundles reports the counts of one.

:func:`install` makes the runner hand each worker thread one container per step,
emptied at the start of every bundle. That container is the one the cached
scoped state holds, so each bundle's updates are counted, once. It changes
nothing on other runners.
"""
from __future__ import annotations

import threading

from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.direct import executor

_local = threading.local()


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


def install() -> None:
    """Patch the direct runner's executor (idempotent; only the local runner uses it)."""
    executor.MetricsContainer = _bundle_container
