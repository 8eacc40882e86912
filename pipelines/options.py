"""Pipeline options shared by the indexing jobs (backfill now, streaming later).

Each group is a ``PipelineOptions`` subclass, so Beam parses them from the
same argv as ``--runner``/``--project`` and Dataflow flex templates pass them
through unchanged. Secrets are never options: Elasticsearch credentials come
from the environment (see ``es.client``).
"""
from __future__ import annotations

import os

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from cli_common import ArgumentParser, DefaultsHelpFormatter, UsageError, check_share, unknown_flags_message
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
    parser = ArgumentParser(
        prog=prog, description=description, formatter_class=DefaultsHelpFormatter,
        epilog="Beam flags (--runner, --project, --region, --temp_location, --direct_running_mode, ...) "
               "pass through unchanged.")
    for cls in option_classes:
        cls._add_argparse_args(parser.add_argument_group(cls.__name__))
    parser.print_help()
    return True


class _RefusingParser(_BeamArgumentParser):
    """Beam's own argument parser, with a bad value raised as a one-line UsageError instead of exit + usage."""

    def error(self, message: str):
        raise UsageError(message)


def job_options(argv: list[str] | None, also_known: tuple[str, ...] = ()) -> PipelineOptions:
    """``PipelineOptions(argv)`` for a Beam job, refusing what no options class defines.

    Beam only warns "Unparseable argument" and runs on with defaults, so a
    typo such as ``--dayz 1`` would silently mean 90 days. This parses argv
    the way ``PipelineOptions.get_all_options`` does, with every loaded
    ``PipelineOptions`` subclass (Beam's, its runners', the job's) and
    refuses any leftover flag, with Beam's "did you mean" suggestion; a bad
    value (``--days abc``) is refused the same way. ``also_known`` are flags a
    wrapper (the demo) parsed itself, offered as suggestions too.
    """
    argv = list(argv or [])
    parser = _RefusingParser(allow_abbrev=False)
    seen: set[str] = set()
    for cls in PipelineOptions.__subclasses__():
        if str(cls) not in seen:  # as Beam does: one copy of each class
            seen.add(str(cls))
            cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [flag for action in parser._actions for flag in action.option_strings]
        raise UsageError(unknown_flags_message(unknown, [*known, *also_known]))
    return PipelineOptions(argv)


def require_files(pattern: str, flag: str, *, jsonl: bool = False) -> list[str]:
    """The files ``pattern`` matches (any Beam filesystem), or a UsageError naming the flag and the glob.

    With ``jsonl``, the first file's first non-blank byte is checked: a JSON
    array (``[``) is a whole-file document, not one record per line, and would
    otherwise become one ``malformed_json`` dead letter per line.
    """
    from apache_beam.io.filesystems import FileSystems
    try:
        paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception as exc:  # Beam raises a BeamIOError per scheme (bad bucket, no permission, ...)
        raise UsageError(f"{flag} {pattern!r}: cannot list files ({exc})") from None
    if not paths:
        raise UsageError(f"{flag} {pattern!r} matches no files; check the path, and quote the glob so "
                         "the shell does not expand it")
    if jsonl and _starts_with_array(paths[0]):
        raise UsageError(f"{flag} {paths[0]!r} is a JSON array, but {flag} takes JSONL: one JSON object per line. "
                         "Convert it with `jq -c '.[]' FILE > FILE.jsonl`")
    return paths


def _starts_with_array(path: str) -> bool:
    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
        head = handle.read(4096)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


class OutcomeOptions(PipelineOptions):
    """When a run counts as failed: nothing succeeded, or too large a share of dead letters."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--max-deadletter-share", dest="max_deadletter_share", type=float, default=None,
                            help="exit 1 when more than this share (0-1) of the records read was dead-lettered "
                                 "(default: fail only when nothing succeeded)")


def max_deadletter_share(options: PipelineOptions) -> float | None:
    """``--max-deadletter-share``, checked to be a share."""
    return check_share(options.view_as(OutcomeOptions).max_deadletter_share)
