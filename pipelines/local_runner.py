"""Runs on this machine: which Beam runner, the direct runner's fixes for streaming, and the run's monitor.

**Runner choice.** Beam's default ``DirectRunner`` (``SwitchingDirectRunner``) first
tries the Prism runner, which downloads a Go binary from GitHub; only when that fails
does it fall back to the in-process FnApiRunner (batch) or the BundleBasedDirectRunner
(streaming). So a job run without ``--runner`` would reach beyond the machine, and on a
laptop with internet would run a different runner from the one the tests exercise.
Every local run names its runner instead, through :func:`runner_for` or
:func:`local_runner`. Prism stays available on request:
``--runner PrismRunner --prism_location PATH_OR_URL``.

**Direct-runner fixes** (:class:`DirectRunnerPatches`, a context manager that checks
the Beam version and undoes itself on exit). They patch private classes of Beam's
direct runner, which no other runner uses, so they are written against one source:

* *Counters.* The direct runner makes a new ``MetricsContainer`` for every bundle, but
  its per-thread ``StateSampler`` caches each step's scoped state by name, with the
  container of the step's *first* bundle. Every later bundle's counters land in that
  first container, which was already committed, and are lost. Here each worker thread
  gets one container per step, emptied at the start of every bundle; it is the one the
  cached scoped state holds, so each bundle's updates count once.
* *Pulls.* The direct runner pulls Pub/Sub with a 30 s long poll, and processing-time
  timers fire only between pulls (apache/beam#25442). Here a pull waits at most
  ``pull_seconds`` and takes at most ``max_messages``: the runner acknowledges right
  after the pull, so that is what a SIGKILL can lose beyond what is being processed.
* *Reading never stops silently.* A failed pull is logged, counted (``read_errors``) and
  retried with backoff (0.5 s doubling to 10 s) while timers keep firing; Beam's runner
  would fail the read step and read nothing more. The subscriber takes Pub/Sub's largest
  messages (10 MB) from the emulator too (:func:`pipelines.pubsub_emulator.subscriber_client`).
* *Drain.* :meth:`LocalReads.drain` stops pulling and ends the read, so the watermark
  reaches the end, every buffered element is flushed, every timer fires, and the run
  finishes by itself, as a Dataflow drain does.

**The monitor** (:class:`LocalRun`, :func:`run_until`, :func:`print_summary`): the direct
runner never finishes a streaming run by itself; the CLI, the demo, tests and benchmarks
watch its counters, drain it on SIGTERM or Ctrl-C, or cancel it.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import apache_beam
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, StandardOptions
from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.runner import PipelineResult, PipelineRunner

from cli_common import UsageError
from pipelines.pubsub_emulator import subscriber_client
from pipelines.report import counters

log = logging.getLogger(__name__)

# What ``--runner`` names the batch runner as (Beam imports fully qualified runner names).
LOCAL_BATCH_RUNNER = "pipelines.local_runner.LocalBatchRunner"
# The streaming runner's name for ``--runner``; streaming also needs ``--streaming``.
LOCAL_STREAMING_RUNNER = "BundleBasedDirectRunner"
#: the Beam releases whose direct runner the patches were read against (its private classes are identical in both)
PATCHED_BEAM = ("2.77", "2.78")
#: the outcomes every message read ends in exactly one of (score_reused is a kind of written)
OUTCOMES = ("superseded", "written", "stale", "deleted", "missing", "deadlettered")
#: backoff after a failed pull: first delay and cap, seconds
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
#: the experiment that names a run's reads (Beam deep-copies the options, so their identity cannot)
RUN_EXPERIMENT = "imagescore_local_run"


class LocalBatchRunner(PipelineRunner):
    """Beam's in-process FnApiRunner, built the way DirectRunner builds it when it falls back.

    DirectRunner hands the pipeline options to the SDK workers through the
    provision info (``--direct_running_mode multi_processing`` workers read
    them there); a bare ``--runner FnApiRunner`` would not. ``--direct_running_mode``
    and ``--direct_num_workers`` work as they do under DirectRunner.
    """

    def run_pipeline(self, pipeline, options: PipelineOptions) -> PipelineResult:
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return fn_runner.FnApiRunner(provision_info=info).run_pipeline(pipeline, options)


def local_runner(streaming: bool = False) -> PipelineRunner:
    """The runner for a run on this machine: in-process FnApiRunner for batch, BundleBasedDirectRunner for
    streaming (the FnApiRunner cannot stream). Streaming pipelines also need ``--streaming`` in their options."""
    return BundleBasedDirectRunner() if streaming else LocalBatchRunner()


def runner_for(options: PipelineOptions) -> PipelineRunner | None:
    """The runner to pass to ``beam.Pipeline``: None when ``--runner`` was given (Beam builds the one named),
    else :func:`local_runner` for the job's ``--streaming`` flag, never Beam's Prism-first default."""
    standard = options.view_as(StandardOptions)
    if standard.runner:
        return None
    return local_runner(streaming=bool(standard.streaming))


def check_beam_version(version: str) -> None:
    """Refuse a Beam release the direct-runner patches were not read against: they replace private classes."""
    if ".".join(version.split(".")[:2]) not in PATCHED_BEAM:
        raise UsageError(
            f"the local streaming runner's fixes (pipelines/local_runner.py) were written for Apache Beam "
            f"{' and '.join(PATCHED_BEAM)}, and this is {version}: install a supported release "
            f"(pip install 'apache-beam[gcp]>={PATCHED_BEAM[0]},<{_next_minor(PATCHED_BEAM[-1])}'), "
            f"or run on Dataflow with --runner DataflowRunner")


def _next_minor(version: str) -> str:
    major, minor = version.split(".")
    return f"{major}.{int(minor) + 1}"


class LocalReads:
    """What one local run's Pub/Sub reads have done: messages pulled, pulls failed, and the drain switch."""

    def __init__(self, pull_seconds: float = 1.0, max_messages: int = 20):
        if pull_seconds <= 0 or max_messages < 1:
            raise ValueError(f"pull_seconds must be positive and max_messages at least 1, got {pull_seconds}, "
                             f"{max_messages}")
        self.pull_seconds = pull_seconds
        self.max_messages = max_messages
        self.pulled = 0
        self.errors = 0
        self._failures_in_a_row = 0
        self._retry_at = 0.0
        self._draining = threading.Event()
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def drain(self) -> None:
        """Pull nothing more; the read ends after the pull in progress, if any."""
        self._draining.set()

    def read(self, evaluator, read: Callable[[Any, Any], list], timestamp_attribute) -> list:
        """One pull through Beam's ``_read_from_pubsub``: skipped while draining or backing off; a failure is
        logged, counted and retried later instead of failing the read step."""
        if self.draining:
            return []
        wait = self._retry_at - time.monotonic()
        if wait > 0:   # backing off: an empty pull, so timers still fire in between
            self._draining.wait(min(wait, self.pull_seconds))
            return []
        _thread.reads = self
        try:
            messages = read(evaluator, timestamp_attribute)
        except Exception as exc:  # noqa: BLE001 -- any failure of the pull: retried, never the end of reading
            from google.api_core.exceptions import DeadlineExceeded

            if isinstance(exc, DeadlineExceeded):   # an idle long poll running out is an empty pull
                return []
            with self._lock:
                self.errors += 1
                self._failures_in_a_row += 1
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._failures_in_a_row - 1))
                self._retry_at = time.monotonic() + delay
            log.warning("Pub/Sub pull from %s failed (%d in a row, %d in all): %s: %s; retrying in %.1fs",
                        getattr(evaluator, "_sub_name", "?"), self._failures_in_a_row, self.errors,
                        type(exc).__name__, str(exc)[:500], delay)
            return []
        finally:
            _thread.reads = None
        with self._lock:
            self.pulled += len(messages)
            if self._failures_in_a_row:
                log.warning("Pub/Sub pull from %s works again after %d failed pulls",
                            getattr(evaluator, "_sub_name", "?"), self._failures_in_a_row)
            self._failures_in_a_row = 0
        return messages


# -- the patches ---------------------------------------------------------------------------------------------

_thread = threading.local()
_install_lock = threading.Lock()
_installed = 0
_originals: dict[str, Any] = {}
_runs: dict[str, LocalReads] = {}   # RUN_EXPERIMENT's value -> the run's reads


def _bundle_container(step_name: str) -> MetricsContainer:
    containers = getattr(_thread, "containers", None)
    if containers is None:
        containers = _thread.containers = {}
    container = containers.get(step_name)
    if container is None:
        container = containers[step_name] = MetricsContainer(step_name)
    else:
        container.reset()
    return container


class _BoundedPulls:
    """The subscriber client with each pull bounded by the run's ``pull_seconds`` and ``max_messages``."""

    def __init__(self, client: Any):
        self._client = client

    def pull(self, subscription: str, max_messages: int, timeout: float):
        reads = getattr(_thread, "reads", None)
        if reads is not None:
            max_messages, timeout = reads.max_messages, min(timeout, reads.pull_seconds)
        return self._client.pull(subscription=subscription, max_messages=max_messages, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _subscriber_state(cls, transform):
    # Beam's _get_subscriber_client_state_unlocked, with our client (callers hold the cache lock).
    state = cls._subscriber_client_cache.get(transform)
    if state is None:
        state = transform_evaluator._PubSubSubscriberClient(_BoundedPulls(subscriber_client()))
        cls._subscriber_client_cache[transform] = state
        weakref.finalize(transform, state.close)
    return state


def _reads_of(evaluator) -> LocalReads | None:
    options = getattr(evaluator._evaluation_context, "pipeline_options", None)
    run = options.view_as(DebugOptions).lookup_experiment(RUN_EXPERIMENT) if options is not None else None
    return _runs.get(run) if run else None


def _read_from_pubsub(self, timestamp_attribute):
    reads = _reads_of(self)
    original = _originals["_read_from_pubsub"]
    return original(self, timestamp_attribute) if reads is None else reads.read(self, original, timestamp_attribute)


def _finish_bundle(self):
    result = _originals["finish_bundle"](self)
    reads = _reads_of(self)
    if reads is not None and reads.draining:
        # The read is over: nothing left to schedule and no watermark hold, so the watermark goes to the end.
        result.unprocessed_bundles = []
        result.keyed_watermark_holds = {None: None}   # None lifts the hold
    return result


_READ = transform_evaluator._PubSubReadEvaluator
_PATCHES: tuple[tuple[Any, str, Callable[[], Any]], ...] = (
    (executor, "MetricsContainer", lambda: _bundle_container),
    (_READ, "_get_subscriber_client_state_unlocked", lambda: classmethod(_subscriber_state)),
    (_READ, "_read_from_pubsub", lambda: _read_from_pubsub),
    (_READ, "finish_bundle", lambda: _finish_bundle),
)


def _install() -> None:
    for owner, name, patched in _PATCHES:
        _originals[name] = owner.__dict__[name]
        setattr(owner, name, patched())


def _uninstall() -> None:
    for owner, name, _ in _PATCHES:
        setattr(owner, name, _originals.pop(name))


class DirectRunnerPatches:
    """The direct runner's fixes for local streaming runs, installed while any is entered and undone after.

    With ``options``, the Pub/Sub reads of the pipeline built from them get bounded pulls, retries and the
    drain switch; ``__enter__`` returns their :class:`LocalReads`. The options are tagged with an experiment
    (:data:`RUN_EXPERIMENT`) here, so make this before ``beam.Pipeline(options=...)``, which copies them.
    Without options only the counter fix applies (TestStream pipelines). Entering checks the Beam release
    (:data:`PATCHED_BEAM`).
    """

    def __init__(self, options: PipelineOptions | None = None, *, pull_seconds: float = 1.0,
                 max_messages: int = 20):
        self._run = None
        if options is not None:
            self._run = uuid.uuid4().hex
            options.view_as(DebugOptions).add_experiment(f"{RUN_EXPERIMENT}={self._run}")
        self._settings = (pull_seconds, max_messages)
        self.reads: LocalReads | None = None
        self._entered = False

    def __enter__(self) -> LocalReads | None:
        global _installed
        check_beam_version(apache_beam.__version__)
        with _install_lock:
            if self._entered:
                raise RuntimeError("DirectRunnerPatches is not reentrant; make one per run")
            if self._run is not None:
                self.reads = _runs[self._run] = LocalReads(*self._settings)
            if _installed == 0:
                _install()
            _installed += 1
            self._entered = True
        return self.reads

    def __exit__(self, *_) -> None:
        global _installed
        with _install_lock:
            if not self._entered:
                return
            self._entered = False
            _runs.pop(self._run, None)
            _installed -= 1
            if _installed == 0:
                _uninstall()


def patches_installed() -> bool:
    return _installed > 0


# -- the monitor ---------------------------------------------------------------------------------------------

def accounted(totals: dict[str, int]) -> int:
    """How many read messages have reached a final outcome (the accounting invariant's right side)."""
    return sum(totals.get(name, 0) for name in OUTCOMES)


def read_count(totals: dict[str, int]) -> int:
    """Messages taken off the subscription: pulled (and so acknowledged) counts even before the parser saw it."""
    return max(totals.get("messages_read", 0), totals.get("messages_pulled", 0))


def latency_ms(result) -> tuple[float | None, float | None]:
    """``(p50, p99)`` publish-to-write latency in ms from the job's histogram, ``None`` before any write."""
    from pipelines.report import query_metrics
    from transforms.feeder import LATENCY_HISTOGRAM  # here, so batch jobs choosing a runner do not import it
    histograms = query_metrics(result, MetricsFilter().with_namespace("imagescore").with_name(LATENCY_HISTOGRAM))
    for found in histograms.get("histograms", []):
        data = found.committed if found.committed is not None else found.attempted
        histogram = getattr(data, "histogram", None)
        if histogram is not None and histogram.total_count():
            return histogram.p50(), histogram.p99()
    return None, None


def progress_line(totals: dict[str, int], p50: float | None, p99: float | None) -> str:
    latency = f"p50 {p50 / 1000:.1f}s p99 {p99 / 1000:.1f}s" if p50 is not None else "p50 - p99 -"
    return (f"read {totals.get('messages_read', 0)}  scored {totals.get('scored', 0)}  "
            f"reused {totals.get('score_reused', 0)}  written {totals.get('written', 0)}  "
            f"stale {totals.get('stale', 0)}  deleted {totals.get('deleted', 0)}  "
            f"superseded {totals.get('superseded', 0)}  dead-lettered {totals.get('deadlettered', 0)}  "
            f"indexed without score {totals.get('image_deadlettered', 0)}  {latency}")


class LocalRun:
    """A started local streaming run: watch its counters, drain it, or cancel it.

    It owns the run's :class:`DirectRunnerPatches` (already entered) and leaves them on
    :meth:`cancel`. A pipeline failure is raised from :meth:`wait`.
    """

    def __init__(self, result, patches: DirectRunnerPatches | None = None):
        self.result = result
        self._patches = patches
        self.reads = patches.reads if patches is not None else None
        self._failure: list[BaseException] = []
        self._waiter = threading.Thread(target=self._wait_for_result, name="stream-wait", daemon=True)
        self._waiter.start()

    def _wait_for_result(self) -> None:
        try:
            self.result.wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 -- raised in the caller's thread by wait()
            self._failure.append(exc)

    @property
    def running(self) -> bool:
        return self._waiter.is_alive()

    def totals(self) -> dict[str, int]:
        """The job's counters, and the reads' own: ``messages_pulled`` and ``read_errors``."""
        totals = counters(self.result)
        if self.reads is not None:
            totals.update(messages_pulled=self.reads.pulled, read_errors=self.reads.errors)
        return totals

    def wait(self, *, stop: Callable[[dict], bool] | None = None, max_seconds: float | None = None,
             progress: Callable[[dict], None] | None = None, every: float = 1.0) -> dict[str, int]:
        """Until ``stop(totals)``, ``max_seconds`` or the end of the run. SIGTERM raises KeyboardInterrupt here,
        as Ctrl-C does, unless the caller already handles SIGTERM (:func:`run_until` drains instead)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self._waiter.is_alive():
                self._waiter.join(every)
                totals = self.totals()
                if progress is not None:
                    progress(totals)
                if (stop is not None and stop(totals)) or (deadline is not None and time.monotonic() >= deadline):
                    return totals
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self._failure:
            raise self._failure[0]
        return self.totals()

    def drain(self, seconds: float, *, stop: Callable[[dict], bool] | None = None,
              progress: Callable[[dict], None] | None = None, every: float = 1.0) -> dict[str, int]:
        """Stop pulling and let the run finish what it read, for up to ``seconds`` (or until ``stop``);
        then cancel whatever is left. Returns the counters."""
        if self.reads is not None:
            self.reads.drain()
        try:
            self.wait(stop=stop, max_seconds=seconds, progress=progress, every=every)
        finally:
            totals = self.cancel()
        return totals

    def cancel(self) -> dict[str, int]:
        """Stop now: what was read and not yet written is lost (it was acknowledged). Leaves the patches."""
        if self._waiter.is_alive():
            self.result.cancel()
            self._waiter.join(5)
        if self._patches is not None:
            self._patches.__exit__(None, None, None)
        return self.totals()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def run_until(job: LocalRun, *, max_seconds: float | None = None, drain_seconds: float = 60.0,
              progress: Callable[[dict], None] | None = None, every: float = 1.0) -> dict[str, int]:
    """Watch a local run until ``max_seconds``, SIGTERM or Ctrl-C; then drain it for up to ``drain_seconds``
    (a second signal stops it at once) and return the counters."""
    signals: list[str] = []

    def on_signal(signum, _frame) -> None:
        signals.append(signal.Signals(signum).name)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        job.wait(stop=lambda _: bool(signals), max_seconds=max_seconds, progress=progress, every=every)
        if not job.running:
            return job.totals()
        why = signals[0] if signals else f"--max-run-seconds {max_seconds:g}"
        print(f"\nstream: {why}: draining: no more pulls; finishing the {read_count(job.totals()):,} messages "
              f"read (up to --drain-seconds {drain_seconds:g}; signal again to stop at once)", file=sys.stderr)
        started = time.monotonic()
        totals = job.drain(drain_seconds, stop=lambda _: len(signals) > 1, progress=progress, every=every)
        left = read_count(totals) - accounted(totals)
        how = "stopped by a second signal" if len(signals) > 1 else (
            "drain ran out" if left else "drained")
        print(f"stream: {how} after {time.monotonic() - started:.1f}s", file=sys.stderr)
        return totals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        job.cancel()


_last_line = [""]


def print_progress(job: LocalRun, totals: dict[str, int]) -> None:
    """One line rewritten in place on a terminal; elsewhere a new line only when something changed."""
    p50, p99 = latency_ms(job.result)
    line = progress_line(totals, p50, p99)
    if sys.stdout.isatty():
        print("\r" + line.ljust(150), end="", flush=True)
    elif line != _last_line[0]:
        print(line, flush=True)
    _last_line[0] = line


def print_summary(totals: dict[str, int], result=None) -> None:
    """The counters, the progress line, any failed pulls, and the accounting: what was read and where it ended."""
    print("\n== stream: counters ==")
    width = max((len(name) for name in totals), default=0)
    for name in sorted(totals):
        print(f"  {name.ljust(width)}  {totals[name]:>10,}")
    p50, p99 = latency_ms(result) if result is not None else (None, None)
    print(f"stream: {progress_line(totals, p50, p99)}")
    if totals.get("read_errors"):
        print(f"stream: {totals['read_errors']:,} Pub/Sub pulls failed and were retried (read_errors; "
              "the log says why)")
    read, done = read_count(totals), accounted(totals)
    print(f"stream: {read:,} read, {done:,} accounted for"
          + ("" if read <= done else f" ({read - done:,} still in flight when the job stopped: acknowledged "
                                     "but not written or dead-lettered; replay them from the source)"), flush=True)
