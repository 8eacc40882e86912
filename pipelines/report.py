"""What every job does around ``pipeline.run()``: ship our code, print what happened."""
from __future__ import annotations

import os
import time

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, WorkerOptions

from cli_common import run_outcome

SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def ship_packages(opts: PipelineOptions) -> None:
    """On Dataflow, install this project on the workers from ``setup.py`` unless a setup file or image is given."""
    runner = (opts.view_as(StandardOptions).runner or "").lower()
    setup = opts.view_as(SetupOptions)
    image = opts.view_as(WorkerOptions).sdk_container_image
    if "dataflow" in runner and setup.setup_file is None and not image and os.path.exists(SETUP_PY):
        setup.setup_file = SETUP_PY


def query_metrics(result, metrics_filter: MetricsFilter, attempts: int = 20) -> dict:
    """``result.metrics().query(...)``, retried while the job runs: the direct runner's metrics are dicts
    its executor threads update while a query iterates them ("dictionary changed size during iteration")."""
    for _ in range(attempts - 1):
        try:
            return result.metrics().query(metrics_filter)
        except RuntimeError as exc:
            if "changed size during iteration" not in str(exc):
                raise
            time.sleep(0.01)
    return result.metrics().query(metrics_filter)


def counters(result, namespace: str = "imagescore") -> dict[str, int]:
    """The committed values of the job's counters in ``namespace``, by name."""
    totals: dict[str, int] = {}
    for counter in query_metrics(result, MetricsFilter().with_namespace(namespace))["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + (value or 0)
    return totals


def print_counters(result, title: str, namespace: str = "imagescore") -> dict[str, int]:
    """Print the job's counters as an aligned table, so an operator sees at a glance what happened."""
    totals = counters(result, namespace)
    print(f"\n== {title}: counters ==")
    width = max((len(name) for name in totals), default=0)
    for name in sorted(totals):
        print(f"  {name.ljust(width)}  {totals[name]:>10,}")
    if not totals:
        print("  (no counters reported)")
    return totals



def top_reasons(totals: dict[str, int], n: int = 3) -> str:
    """" (fetch_blocked_address 3, parse_malformed_json 1)" from the ``deadletter_<stage>_<reason>`` counters,
    for the end of a summary line; empty when there are none."""
    reasons = sorted(((name[len("deadletter_"):], value) for name, value in totals.items()
                      if name.startswith("deadletter_") and value), key=lambda kv: (-kv[1], kv[0]))
    if not reasons:
        return ""
    text = ", ".join(f"{name} {value:,}" for name, value in reasons[:n])
    return f" ({text}{f', {len(reasons) - n} more reasons' if len(reasons) > n else ''})"


def finish(result, job: str, read: int, succeeded: int, dead: int, max_share: float | None) -> int:
    """Print the verdict when the run failed; store the exit code on ``result`` for the entry point."""
    code, why = run_outcome(job, read, succeeded, dead, max_share)
    if why:
        print(why)
    result.exit_code = code
    return code
