"""The ``imagescore`` console script: one subcommand per job, each a thin layer over a module's ``run``.

User mistakes (a glob that matches nothing, a service that is not there, a
bad flag) raise :class:`UsageError`; the one handler here prints it as one
line and exits 2. Every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable, Iterable

# subcommand -> (module, one-line help). Each module exposes ``run(argv: list[str])``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.demo", "build the offline sample catalog, score it and write a contact sheet"),
    "backfill": ("pipelines.backfill", "score recent items and write image_score to Elasticsearch or files"),
    "collect": ("pipelines.collect", "turn search logs into SERP windows (+ historical CTR)"),
    "label": ("labeling.label", "label SERP windows with a vision-LLM judge"),
    "analyze": ("training.analyze", "compare labels of clicked and not-clicked images"),
    "simulate": ("training.simulate", "write an offline marketplace: photos, search logs, latent quality"),
    "embed": ("pipelines.embed", "embed images with a frozen CLIP backbone into Parquet"),
    "train": ("training.train", "train the MLP head with pairwise focal or CE loss"),
    "evaluate": ("training.evaluate", "OPA and CA of Image Score against the paper's baselines"),
    "export-triton": ("scoring.export_triton", "export a score model as a Triton model repository"),
    "query": ("ranking.query", "print (or run, with explain) a search boosted by the image score"),
    "rerank-eval": ("ranking.rerank_eval", "replay logged SERPs under boosting formulas and weights"),
    "ab-readout": ("ranking.ab", "read out an A/B test in the paper's Table 2 layout"),
    "simulate-ab": ("ranking.ab_simulate", "simulate an A/B test with per-platform effects (and optional SRM)"),
    "monitor": ("ranking.monitor", "coverage and drift of the image score per model and segment (index or files)"),
    "stream": ("pipelines.streaming", "streaming indexing from Pub/Sub: aggregator -> analyzer -> feeder"),
    "stream-demo": ("pipelines.stream_demo", "run the streaming job on a local Pub/Sub emulator and check the index"),
    "emulator": ("pipelines.pubsub_emulator", "start a local Pub/Sub emulator for stream and replay; publish your messages"),
    "replay": ("pipelines.replay", "republish dead letters (a Pub/Sub subscription or deadletter*.jsonl files)"),
    "serve-triton": ("scoring.triton_server", "serve an export-triton repository with the local tritonserver"),
}

USAGE_EXIT = 2


class UsageError(SystemExit):
    """A mistake in what the user typed or pointed at: the message names the input and says what to do.

    It subclasses ``SystemExit`` so that code calling a job's ``run`` directly
    still stops cleanly; :func:`guarded` turns it into one line on stderr and exit code 2.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def unknown_flags_message(unknown: list[str], known: Iterable[str]) -> str:
    """"unknown flag --dayz (did you mean --days?)" for each unknown token, Beam's suggestion rule."""
    known = sorted(set(known))
    parts = []
    after_flag = False
    for token in unknown:
        name = token.split("=", 1)[0]
        if not name.startswith("-"):
            if not after_flag:  # a bare word that is not the value of an unknown flag
                parts.append(f"unexpected argument {token!r}")
            after_flag = False
            continue
        after_flag = "=" not in token
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts) + "; see --help for the flags"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default in ``--help``, except the empty ones (None, off, an empty list)."""

    def _get_help_string(self, action):
        if action.default in (None, False, "", []) or isinstance(action, argparse._HelpAction):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every non-Beam command: defaults in ``--help``, no abbreviations, and a
    mistake (an unknown flag, a bad value) raised as :class:`UsageError`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            known = [flag for action in self._actions for flag in action.option_strings]
            raise UsageError(unknown_flags_message(unknown, known))
        return parsed

    def error(self, message: str):
        raise UsageError(message)


def run_outcome(job: str, read: int, succeeded: int, dead: int, max_share: float | None) -> tuple[int, str]:
    """(exit code, why) of a finished run: 1 when records were dead-lettered and none succeeded, or when
    the dead-letter share is over ``max_share``; 0 otherwise (an empty input, or one where every record
    is a counted skip, is not a failure)."""
    if read and dead and not succeeded:
        return 1, f"{job}: FAILED: none of the {read:,} records read succeeded; see the dead-letter reasons above"
    if max_share is not None and read and dead / read > max_share:
        return 1, (f"{job}: FAILED: {dead / read:.1%} of the records read were dead-lettered, over "
                   f"--max-deadletter-share {max_share:g}")
    return 0, ""


def check_share(share: float | None, flag: str = "--max-deadletter-share") -> float | None:
    """A share flag's value, refused unless it is in [0, 1]."""
    if share is not None and not 0 <= share <= 1:
        raise UsageError(f"{flag} must be between 0 and 1, got {share:g}")
    return share


def guarded(prog: str, run: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run a job's ``run(argv)`` and return its exit code; a :class:`UsageError` becomes one line and 2.

    ``run`` returns an exit code, or a Beam ``PipelineResult`` carrying ``exit_code``
    (set by :func:`pipelines.report.finish`), or None for success.
    """
    try:
        result = run(argv)
    except UsageError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return USAGE_EXIT
    if isinstance(result, int):
        return result
    return int(getattr(result, "exit_code", 0) or 0)


def job_main(prog: str, run: Callable[[list[str]], object]) -> None:
    """The ``python -m MODULE`` entry point of a job: the same handler as the console script."""
    sys.exit(guarded(prog, run, sys.argv[1:]))


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: imagescore COMMAND [flags]   (imagescore COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"imagescore: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return USAGE_EXIT
    module = importlib.import_module(COMMANDS[name][0])
    return guarded(f"imagescore {name}", module.run, rest)


if __name__ == "__main__":
    from imagescore import main as _main  # the importable module's class, not __main__'s copy

    sys.exit(_main())
