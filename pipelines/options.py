"""Pipeline options shared by the indexing jobs (backfill now, streaming later).

Each group is a ``PipelineOptions`` subclass, so Beam parses them from the
same argv as ``--runner``/``--project`` and Dataflow flex templates pass them
through unchanged. Secrets are never options: Elasticsearch credentials come
from the environment (see ``es.client``).
"""
from __future__ import annotations

import argparse
import os

from apache_beam.options.pipeline_options import PipelineOptions

from scoring.model import DEFAULT_MODEL


class JobIOOptions(PipelineOptions):
    """``--input``/``--output``, defined once: Beam parses every loaded options class, so two
    jobs defining the same flag in one process would conflict."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", dest="input",
                            help="input files, a glob (local or gs://); what they hold depends on the job")
        parser.add_argument("--output", dest="output", help="output directory (local or gs://)")


class ImageOptions(PipelineOptions):
    """How images are fetched and decoded: the hostile-input limits."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--allow-image-hosts", dest="allow_image_hosts", default="",
                            help="HOST[:PORT],... allowed even though they resolve to private/loopback addresses")
        parser.add_argument("--allow-image-schemes", dest="allow_image_schemes", default="",
                            help="Beam FileSystems schemes to read besides http(s), e.g. gs,file (off by default)")
        parser.add_argument("--max-image-bytes", dest="max_image_bytes", type=int, default=20_000_000,
                            help="refuse images larger than this many bytes (checked while streaming)")
        parser.add_argument("--max-image-pixels", dest="max_image_pixels", type=int, default=40_000_000,
                            help="refuse images with more pixels than this (decompression-bomb guard)")
        parser.add_argument("--fetch-concurrency", dest="fetch_concurrency", type=int, default=16,
                            help="concurrent image downloads per worker thread")
        parser.add_argument("--fetch-timeout", dest="fetch_timeout", type=float, default=30.0,
                            help="total seconds allowed for one image, retries included")


class ModelOptions(PipelineOptions):
    """Which model scores the images and how RunInference batches them."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model", dest="model", default=DEFAULT_MODEL,
                            help="handcrafted (weight-free baseline, the default), clip-iqa:BACKBONE (zero-shot CLIP-IQA), "
                                 "a training run directory, or "
                                 "triton://HOST:PORT/NAME[/VERSION] to score on a Triton server (gRPC port)")
        parser.add_argument("--device", dest="device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
        parser.add_argument("--min-batch-size", dest="min_batch_size", type=int, default=8)
        parser.add_argument("--max-batch-size", dest="max_batch_size", type=int, default=64)
        parser.add_argument("--large-model", dest="large_model", action="store_true",
                            help="load one model per worker VM shared across processes (for GPU workers)")
        parser.add_argument("--triton-timeout", dest="triton_timeout", type=float, default=60.0,
                            help="seconds per Triton request")
        parser.add_argument("--triton-retries", dest="triton_retries", type=int, default=5,
                            help="retries of a batch on UNAVAILABLE/RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED")


class ElasticsearchOptions(PipelineOptions):
    """Where scores go. Credentials come from ES_API_KEY or ES_USERNAME/ES_PASSWORD, never from flags."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--es-url", dest="es_url", default=os.environ.get("ES_URL"),
                            help="Elasticsearch URL (default: $ES_URL)")
        parser.add_argument("--es-index", dest="es_index", default="items", help="index holding the items")
        parser.add_argument("--es-no-verify-certs", dest="es_verify_certs", action="store_const", const=False,
                            default=None, help="do not verify TLS certificates (default: $ES_VERIFY_CERTS, else "
                                               "verify; CA bundle: $ES_CA_CERTS on the workers)")
        parser.add_argument("--es-max-docs", dest="es_max_docs", type=int, default=500,
                            help="documents per bulk request at most")
        parser.add_argument("--es-max-bytes", dest="es_max_bytes", type=int, default=5 * 1024 * 1024,
                            help="bytes per bulk request at most")



def help_requested(argv: list[str] | None, prog: str, description: str, *option_classes: type) -> bool:
    """Print a job's flags for ``-h``/``--help`` and return True.

    Beam's own parser only knows ``-h`` when it parses, so the job's option
    classes are laid out here in one help text.
    """
    if not argv or not {"-h", "--help"} & set(argv):
        return False
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog="Beam flags (--runner, --project, --region, --temp_location, --direct_running_mode, ...) "
               "pass through unchanged.")
    for cls in option_classes:
        cls._add_argparse_args(parser.add_argument_group(cls.__name__))
    parser.print_help()
    return True
