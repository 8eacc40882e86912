"""The local harness itself: which Beam runner local runs get, and the skip-or-fail rule for missing tools."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability import prism_runner
from apache_beam.testing.util import assert_that, equal_to

from pipelines.local_runner import LOCAL_BATCH_RUNNER, LocalBatchRunner, local_runner, runner_for
from tests.fixtures.tools import missing_tool


def test_local_runs_get_the_in_process_runner_and_streaming_the_bundle_based_one():
    assert isinstance(local_runner(), LocalBatchRunner)
    assert isinstance(local_runner(streaming=True), BundleBasedDirectRunner)
    assert isinstance(runner_for(PipelineOptions([])), LocalBatchRunner)
    assert isinstance(runner_for(PipelineOptions(["--streaming"])), BundleBasedDirectRunner)
    assert runner_for(PipelineOptions(["--runner", "PrismRunner"])) is None  # a named runner is Beam's to build
    assert runner_for(PipelineOptions(["--runner", "DataflowRunner"])) is None


def _tried_prism(monkeypatch) -> list[str]:
    """Record (and refuse) every attempt to start Prism, so a fallback cannot hide one."""
    tried: list[str] = []

    def refuse(self, pipeline, options):
        tried.append("prism")
        raise RuntimeError("this test refuses Prism")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)
    return tried


@pytest.mark.parametrize("argv", [[], ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]])
def test_the_local_batch_runner_never_tries_prism(monkeypatch, argv):
    tried = _tried_prism(monkeypatch)
    options = PipelineOptions(argv)
    with beam.Pipeline(runner=runner_for(options), options=options) as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 10), equal_to([10, 20, 30]))
    assert tried == []


def test_the_local_batch_runner_can_be_named_on_the_command_line(monkeypatch):
    tried = _tried_prism(monkeypatch)
    with beam.Pipeline(options=PipelineOptions(["--runner", LOCAL_BATCH_RUNNER])) as p:
        assert isinstance(p.runner, LocalBatchRunner)
        assert_that(p | beam.Create(["a"]) | beam.Map(str.upper), equal_to(["A"]))
    assert tried == []


def test_beams_default_direct_runner_does_try_prism(monkeypatch):
    """Why the choice is explicit: Beam 2.77's DirectRunner starts with Prism (a GitHub download) and falls back."""
    tried = _tried_prism(monkeypatch)
    with beam.Pipeline(runner="DirectRunner") as p:
        assert_that(p | beam.Create([1]), equal_to([1]))
    assert tried == ["prism"]


def test_a_missing_tool_skips_on_a_laptop(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"gcloud is not installed \(install the Cloud SDK\)"):
        missing_tool("gcloud", "install the Cloud SDK")


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_a_missing_tool_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"gcloud is not installed .*CI=true, so this is a failure"):
        missing_tool("gcloud", "install the Cloud SDK")
