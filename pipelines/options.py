"""Pipeline options shared by the indexing jobs (backfill now, streaming later).

Each group is a ``PipelineOptions`` subclass, so Beam parses them from the
same argv as ``--runner``/``--project`` and Dataflow flex templates pass them
through unchanged. The flags themselves are defined in :mod:`pipelines.flags`,
which ``--help`` reads without importing Beam. Secrets are never options:
Elasticsearch credentials come from the environment (see ``es.client``).
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from cli_common import UsageError, check_share, unknown_flags_message
from pipelines.flags import ElasticsearchFlags, ImageFlags, JobIOFlags, ModelFlags, OutcomeFlags


class JobIOOptions(JobIOFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.JobIOFlags`."""


class ImageOptions(ImageFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.ImageFlags`."""


class ModelOptions(ModelFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.ModelFlags`."""


class ElasticsearchOptions(ElasticsearchFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.ElasticsearchFlags`."""


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
