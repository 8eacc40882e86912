"""Flex template metadata names only flags its job really parses, so a template run cannot fail on a typo."""
import argparse
import json
from pathlib import Path

import pytest

from pipelines.backfill import BackfillOptions
from pipelines.collect import CollectOptions
from pipelines.embed import EmbedOptions
from pipelines.options import ElasticsearchOptions, ImageOptions, JobIOOptions, ModelOptions
from pipelines.streaming import StreamingOptions

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
JOBS = {
    "backfill": (BackfillOptions, JobIOOptions, ImageOptions, ModelOptions, ElasticsearchOptions),
    "collect": (CollectOptions, JobIOOptions),
    "embed": (EmbedOptions, JobIOOptions, ImageOptions, ModelOptions),
    "streaming": (StreamingOptions, ImageOptions, ModelOptions, ElasticsearchOptions),
}


def _flags(option_classes) -> set[str]:
    parser = argparse.ArgumentParser()
    for cls in option_classes:
        cls._add_argparse_args(parser)
    return {s.lstrip("-") for action in parser._actions for s in action.option_strings}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_template_parameters_are_flags_of_the_job(job):
    metadata = json.loads((TEMPLATES / f"{job}.json").read_text())
    names = [p["name"] for p in metadata["parameters"]]
    assert len(names) == len(set(names))
    unknown = set(names) - _flags(JOBS[job])
    assert not unknown, f"templates/{job}.json names flags {job} does not parse: {sorted(unknown)}"
    assert all(p.get("helpText") and p.get("label") for p in metadata["parameters"])


def test_every_template_belongs_to_a_job():
    assert {p.stem for p in TEMPLATES.glob("*.json")} == set(JOBS)
