"""The pieces every command shares: the usage error, the argparse parser, ``job_main`` and the outcome rule.

A leaf module: it imports nothing of the project's and nothing heavy, so any
module can use it and ``imagescore --help`` stays fast.

User mistakes (a glob that matches nothing, a service that is not there, a
bad flag) raise :class:`UsageError`; :func:`guarded` prints it as one line and
exits 2. Every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable

USAGE_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
#: the flags that name where a command writes; Ctrl-C removes Beam's temporary folders there
OUTPUT_FLAGS = ("--output", "--deadletter")

#: taken out of argv by :func:`guarded` before a job parses it, so every command has them
VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_HELP = "also show INFO log lines (Beam's progress among them); warnings and errors show either way"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


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


_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)\s*(?:<[^>]*>)?`")  # :func:`x`, :mod:`~a.b`, :ref:`title <target>`


def plain_text(text: str) -> str:
    """Docstring markup made readable in a terminal: ``x`` and :func:`x` become x, :mod:`~a.b` becomes b."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    return text.replace("``", "")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default in ``--help``, except the empty ones (None, off, an empty list), and prints
    descriptions and help texts (often a module's docstring) without their reStructuredText markup."""

    def _get_help_string(self, action):
        if action.default in (None, False, "", []) or isinstance(action, argparse._HelpAction):
            return plain_text(action.help or "")
        return plain_text(super()._get_help_string(action))

    def add_text(self, text):
        super().add_text(plain_text(text) if text else text)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every non-Beam command: defaults in ``--help``, no abbreviations, and a
    mistake (an unknown flag, a bad value) raised as :class:`UsageError`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument(*VERBOSE_FLAGS, action="store_true", help=VERBOSE_HELP)

    def parse_args(self, args=None, namespace=None):
        known = [flag for action in self._actions for flag in action.option_strings]
        # A typo is named before argparse complains that the flag it meant is missing (--outptu, not
        # "required: --output"); a token that is a number (a negative value) is not a flag.
        typos = [token for token in (sys.argv[1:] if args is None else args)
                 if token.startswith("-") and token.split("=", 1)[0] not in known and not _is_number(token)]
        if typos:
            raise UsageError(unknown_flags_message(typos, known))
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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, as ``logging.lastResort`` does (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(verbose: bool = False) -> None:
    """The one logging set-up of every command: warnings and errors by default, INFO lines too with ``-v``.

    Beam logs ~85 INFO lines per local run; they are noise unless asked for.
    Calling it again (jobs run in one process by tests) only changes the level.
    """
    root = logging.getLogger()
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    # The client warns of every failed node on its own; the command's one error line says the same.
    # urllib3 warns of every retry of an image fetch, which the fetcher budgets and dead-letters itself.
    for noisy in ("elastic_transport", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


def guarded(prog: str, run: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run a job's ``run(argv)`` and return its exit code; a :class:`UsageError` becomes one line and 2,
    Ctrl-C one line and 130 (see :func:`interrupted`).

    ``-v``/``--verbose`` are taken out of argv here and set up logging (:func:`setup_logging`).
    ``run`` returns an exit code, or a Beam ``PipelineResult`` carrying ``exit_code``
    (set by :func:`pipelines.report.finish`), or None for success.
    """
    setup_logging(verbose=any(arg in VERBOSE_FLAGS for arg in argv))
    argv = [arg for arg in argv if arg not in VERBOSE_FLAGS]
    with _SigintSeen() as sigint:
        try:
            result = run(argv)
        except UsageError as exc:
            print(f"{prog}: error: {exc.message}", file=sys.stderr)
            return USAGE_EXIT
        except KeyboardInterrupt:
            print(interrupted(prog, argv), file=sys.stderr)
            return INTERRUPTED_EXIT
        except Exception:
            if not sigint.seen:
                raise
            # Beam re-raises a KeyboardInterrupt inside a bundle as RuntimeError("KeyboardInterrupt [while ...]")
            print(interrupted(prog, argv), file=sys.stderr)
            return INTERRUPTED_EXIT
    if isinstance(result, int):
        return result
    return int(getattr(result, "exit_code", 0) or 0)


class _SigintSeen:
    """While entered, Ctrl-C raises KeyboardInterrupt as usual and is remembered, so an exception a library
    wrapped it in still ends as an interrupt. Changes nothing where SIGINT is ignored or handled by others."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> _SigintSeen:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def output_dirs(argv: list[str]) -> list[str]:
    """The local directories a command's argv names with :data:`OUTPUT_FLAGS` (``--flag DIR`` or ``--flag=DIR``)."""
    dirs = []
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in OUTPUT_FLAGS:
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            if value and "://" not in value:
                dirs.append(value)
    return dirs


def interrupted(prog: str, argv: list[str]) -> str:
    """Tidy up after Ctrl-C and say so in one line: what was interrupted, what was kept, what was removed.

    Beam's file sinks write into ``beam-temp-*`` folders beside their output and move the files into
    place when the write finishes; an interrupted run leaves them behind, and no later run removes
    them. Files already in place (finished shards, dead letters) are kept.
    """
    import glob
    import shutil

    removed = 0
    for directory in output_dirs(argv):
        for temp in glob.glob(os.path.join(glob.escape(directory), "**", "beam-temp-*"), recursive=True):
            shutil.rmtree(temp, ignore_errors=True)
            removed += 1
    dirs = output_dirs(argv)
    kept = f"kept what was already written under {', '.join(dirs)}" if dirs else "it writes no files"
    tidy = f"; removed {removed} unfinished temporary folder(s) (beam-temp-*)" if removed else ""
    return f"{prog}: interrupted (Ctrl-C) before it finished; {kept}{tidy}; run it again to redo the rest"


def job_main(prog: str, run: Callable[[list[str]], object]) -> None:
    """The ``python -m MODULE`` entry point of a job: the same handler as the console script."""
    sys.exit(guarded(prog, run, sys.argv[1:]))
