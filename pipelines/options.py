"""Pipeline options shared by the Beam jobs (backfill, streaming, embed, collect).

Each group is a ``PipelineOptions`` subclass, so Beam parses them from the
same argv as ``--runner``/``--project`` and Dataflow flex templates pass them
through unchanged. The flags themselves are defined in :mod:`pipelines.flags`,
which ``--help`` reads without importing Beam. Secrets are never options:
Elasticsearch credentials come from the environment (see ``es.client``).

Each group also builds what its flags describe, once for every job, with a bad
value refused as a one-line :class:`~cli_common.UsageError` naming the flag:
``ImageOptions.fetch_policy()``, ``ModelOptions.model_info()`` and
``score_handler()``, ``ElasticsearchOptions.es_config()`` and ``prepare_index()``.
"""
from __future__ import annotations

from typing import Any

from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from cli_common import UsageError, check_share, unknown_flags_message
from es import index_setup
from es.client import EsConfig
from es.names import WriteMode
from es.secrets import scrub
from pipelines.flags import ElasticsearchFlags, ImageFlags, JobIOFlags, ModelFlags, OutcomeFlags
from transforms.fetch import FetchPolicy
from transforms.inference import make_score_handler, score_model_info


class JobIOOptions(JobIOFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.JobIOFlags`."""


class ImageOptions(ImageFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.ImageFlags`."""

    def fetch_policy(self) -> FetchPolicy:
        """The fetcher's limits from these flags; a bad value is a UsageError naming its flag."""
        try:
            return FetchPolicy(allowed_hosts=self.allow_image_hosts, allowed_schemes=self.allow_image_schemes,
                               max_bytes=self.max_image_bytes, total_timeout=self.fetch_timeout,
                               concurrency=self.fetch_concurrency)
        except ValueError as exc:
            message = str(exc)
            for field, flag in _FETCH_POLICY_FLAGS.items():
                message = message.replace(f"FetchPolicy.{field}", flag)
            raise UsageError(message) from None


_FETCH_POLICY_FLAGS = {"max_bytes": "--max-image-bytes", "total_timeout": "--fetch-timeout",
                       "concurrency": "--fetch-concurrency"}


class ModelOptions(ModelFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.ModelFlags`."""

    def batching(self) -> dict[str, Any]:
        """RunInference's batching flags, as a model handler's keyword arguments."""
        return {"min_batch_size": self.min_batch_size, "max_batch_size": self.max_batch_size,
                "large_model": self.large_model}

    def model_info(self) -> tuple[str, int]:
        """``(model_id, input_size)`` of ``--model`` (a ``triton://`` spec asks the server); a model that
        cannot be found or reached is a UsageError naming ``--model``."""
        try:
            return score_model_info(self.model)
        except (ValueError, ConnectionError, OSError) as exc:
            message = str(exc)
            raise UsageError(message if "--model" in message else f"--model {self.model!r}: {message}") from None

    def score_handler(self, model_unavailable_s: float | None = None) -> ModelHandler:
        """The model handler that scores with ``--model`` (local PyTorch, or Triton over gRPC).

        ``model_unavailable_s`` (streaming) bounds Triton retries by time instead of by count.
        """
        return make_score_handler(self.model, self.device, triton_timeout_s=self.triton_timeout,
                                  triton_retries=self.triton_retries, model_unavailable_s=model_unavailable_s,
                                  **self.batching())


class ElasticsearchOptions(ElasticsearchFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.ElasticsearchFlags`, and what those flags build."""

    def es_config(self) -> EsConfig | None:
        """Where the cluster is (``--es-url``, else ``$ES_URL``) and how to trust it; ``None`` without a URL."""
        if not self.es_url:
            return None
        try:
            return EsConfig.from_env(url=self.es_url, **(
                {} if self.es_verify_certs is None else {"verify_certs": False}))
        except ValueError as exc:
            raise UsageError(f"--es-url: {scrub(str(exc))}") from None

    def prepare_index(self, mode: WriteMode | str) -> None:
        """Map ``--es-index`` and store the guard script before any write (:func:`es.index_setup.prepare_index`);
        a cluster that is not there, a missing index or refused credentials are a one-line UsageError."""
        try:
            index_setup.prepare_index(self.es_config(), self.es_index, mode)
        except index_setup.IndexSetupError as exc:
            raise UsageError(str(exc)) from None


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


class OutcomeOptions(OutcomeFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.OutcomeFlags`."""


def max_deadletter_share(options: PipelineOptions) -> float | None:
    """``--max-deadletter-share``, checked to be a share."""
    return check_share(options.view_as(OutcomeOptions).max_deadletter_share)
