"""The Beam runner for runs on this machine, chosen in one place.

Beam's default ``DirectRunner`` (``SwitchingDirectRunner`` in 2.77) first
tries the Prism runner, which downloads a Go binary from GitHub; only when
that fails does it fall back to the in-process FnApiRunner (batch) or the
BundleBasedDirectRunner (streaming). So a job run without ``--runner`` would
reach beyond the machine, and on a laptop with internet would run a different
runner from the one the tests exercise. Every local run here names its runner
instead: jobs, demo, benchmarks and tests all go through :func:`runner_for` or
:func:`local_runner`. Prism stays available on request:
``--runner PrismRunner --prism_location PATH_OR_URL``.
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.runner import PipelineResult, PipelineRunner

# What ``--runner`` names the batch runner as (Beam imports fully qualified runner names).
LOCAL_BATCH_RUNNER = "pipelines.runners.LocalBatchRunner"
# The streaming runner's name for ``--runner``; streaming also needs ``--streaming``.
LOCAL_STREAMING_RUNNER = "BundleBasedDirectRunner"


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
