"""``imagescore label``: score every SERP window's images with a judge and write labels.

Reads collect's ``windows*.jsonl`` and writes into ``--output``:
``labels.jsonl`` (one row per item), ``responses.jsonl`` (every judge reply,
paid or served from the cache), ``deadletter.jsonl`` (windows that could not
be labelled, with the original line) and ``summary.json``. Every window ends
in exactly one place: labelled or dead-lettered.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from cli_common import ArgumentParser, UsageError, check_share, job_main, run_outcome
from es.secrets import LLM_API_KEY_ENVS, scrub
from labeling.cache import WindowCache

log = logging.getLogger("imagescore.label")
STAGE = "label"

if TYPE_CHECKING:
    from labeling.judges import WindowOutcome
    from labeling.windows import Window


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="imagescore label",
        description="Label SERP windows with a judge: a vision LLM (default) or an offline judge. "
                    "The LLM API key comes from $LLM_API_KEY or $OPENAI_API_KEY, never from a flag.")
    p.add_argument("--windows", action="append", required=True, metavar="GLOB",
                   help="collect's windows*.jsonl (repeatable)")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--judge", choices=("http", "handcrafted", "simulated"), default="http",
                   help="http: vision LLM; handcrafted: the weight-free baseline scorer; "
                        "simulated: the simulator's latent quality (needs --quality)")
    llm = p.add_argument_group("LLM judge (--judge http)")
    llm.add_argument("--base-url", default=None,
                     help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM), "
                          "http://localhost:11434/v1 (Ollama); default $OPENAI_BASE_URL or OpenAI")
    llm.add_argument("--model", default=None, help="model name the endpoint serves, e.g. gpt-4o-mini")
    llm.add_argument("--prompt", default=None, metavar="FILE",
                     help="prompt template with 'version:' front matter (default: xiqe_aesthetic_v1)")
    llm.add_argument("--temperature", type=float, default=0.0)
    llm.add_argument("--max-tokens", type=int, default=4096)
    llm.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP attempt")
    llm.add_argument("--retries", type=int, default=3,
                     help="retries with exponential backoff on 408/409/429/5xx, timeouts and connection errors")
    llm.add_argument("--malformed-retries", type=int, default=1,
                     help="times to ask again when a reply cannot be parsed (each one is paid)")
    llm.add_argument("--concurrency", type=int, default=4, help="windows in flight at once")
    llm.add_argument("--rpm", type=float, default=None, help="requests per minute, retries included (token bucket)")
    llm.add_argument("--repeats", type=int, default=1,
                     help="score each window N times; labels use the mean, summary reports agreement")
    llm.add_argument("--cache", default=None, metavar="DIR", help="response cache (default OUTPUT/cache)")
    llm.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    llm.add_argument("--price-per-1k-input", type=float, default=0.0, help="price per 1000 prompt tokens")
    llm.add_argument("--price-per-1k-output", type=float, default=0.0, help="price per 1000 completion tokens")
    images = p.add_argument_group("images (fetched by us, never by the endpoint)")
    images.add_argument("--image-size", type=int, default=512, help="long side in pixels sent to the judge")
    images.add_argument("--allow-image-hosts", default="",
                        help="host[:port] list exempt from the private-address block, e.g. 127.0.0.1:8080")
    images.add_argument("--allow-image-schemes", default="",
                        help="extra Beam FileSystems schemes besides http(s), e.g. gs,file")
    offline = p.add_argument_group("offline judges")
    offline.add_argument("--quality", default=None, metavar="FILE",
                         help="quality.jsonl from `imagescore simulate` (--judge simulated)")
    offline.add_argument("--score-model", default="handcrafted",
                         help="scoring.model.load_model spec for --judge handcrafted")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--max-deadletter-share", type=float, default=None,
                   help="exit 1 when more than this share (0-1) of the windows was dead-lettered "
                        "(default: fail only when no window was labelled)")
    return p


def _fetcher(args):
    from transforms.address_policy import parse_allowed_hosts
    from transforms.fetch import FetchPolicy, ImageFetcher
    schemes = frozenset(s.strip().lower() for s in args.allow_image_schemes.split(",") if s.strip())
    policy = FetchPolicy(allowed_hosts=parse_allowed_hosts(args.allow_image_hosts), allowed_schemes=schemes)
    return ImageFetcher(policy)


def build_judge(args):
    """(judge, chat client or None, resources to close) for the flags; usage errors raise ValueError naming the flag."""
    if args.judge == "simulated":
        from labeling.judges import SimulatedJudge, load_quality
        if not args.quality:
            raise ValueError("--judge simulated needs --quality FILE (quality.jsonl from `imagescore simulate`)")
        return SimulatedJudge(load_quality(args.quality), os.path.basename(args.quality)), None, []
    if args.judge == "handcrafted":
        from labeling.judges import HandcraftedJudge
        from scoring.model import load_model
        fetcher = _fetcher(args)
        return HandcraftedJudge(fetcher, load_model(args.score_model)), None, [fetcher]
    from labeling.client import ChatClient, api_key_from_env
    from labeling.judges import HttpJudge
    from labeling.prompt import load_prompt
    if not args.model:
        raise ValueError("--judge http needs --model NAME (the model the endpoint serves)")
    for flag, value, low in (("--image-size", args.image_size, 32), ("--concurrency", args.concurrency, 1),
                             ("--repeats", args.repeats, 1), ("--retries", args.retries, 0),
                             ("--malformed-retries", args.malformed_retries, 0)):
        if value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    prompt = load_prompt(args.prompt)
    if api_key_from_env() is None:
        log.warning("no API key in $%s or $%s: sending a placeholder, which only servers without auth "
                    "(a local vLLM or Ollama) accept", *LLM_API_KEY_ENVS)
    client = ChatClient(args.base_url, args.model, timeout=args.timeout, retries=args.retries, rpm=args.rpm,
                        temperature=args.temperature, max_tokens=args.max_tokens)
    cache = None if args.no_cache else WindowCache(args.cache or os.path.join(args.output, "cache"))
    fetcher = _fetcher(args)
    judge = HttpJudge(client, prompt, fetcher, args.image_size, cache, args.malformed_retries)
    return judge, client, [fetcher, client]


def _write_jsonl(path: Path, rows) -> None:
    """Write to a temporary file and rename, so a crash never leaves half a labels file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _safe_judge(judge, window: Window, repeats: int) -> WindowOutcome:
    """A bug in one window must not take the run down; it dead-letters as unexpected_error."""
    from labeling.judges import WindowOutcome
    from transforms.deadletter import Rejected
    try:
        return judge.judge(window, repeats)
    except Rejected as exc:
        return WindowOutcome(window, error=exc)
    except Exception as exc:  # noqa: BLE001 - turned into a dead letter with the type named
        log.exception("unexpected error judging window %s", window.serp_id)
        return WindowOutcome(window, error=Rejected("unexpected_error", f"{type(exc).__name__}: {exc}"))


def label(args) -> dict:
    """Run the labelling the parsed flags describe; returns the summary (also written to summary.json)."""
    # Imported here, not at the top, so that --help does not wait for Beam and torch.
    from tqdm import tqdm

    from labeling.report import label_rows, summarize
    from labeling.windows import Window, read_windows, window_files
    from transforms.deadletter import dead_letter
    out = Path(args.output)
    files = window_files(args.windows)
    judge, client, closers = build_judge(args)  # a bad judge flag or file is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    dead: list[dict] = []
    windows: list[Window] = []
    seen: set[str] = set()
    windows_in = 0
    for entry in read_windows(files):
        windows_in += 1
        if isinstance(entry, Window):
            if entry.serp_id in seen:
                dead.append(dead_letter(STAGE, "duplicate_window", f"serp_id {entry.serp_id} appears twice",
                                        entry.payload, id=entry.serp_id))
                continue
            seen.add(entry.serp_id)
            windows.append(entry)
        else:
            exc, line = entry
            dead.append(dead_letter(STAGE, exc.reason, exc, line))
    labels: list[dict] = []
    responses: list[dict] = []
    labelled = 0
    workers = getattr(args, "concurrency", 1) if args.judge == "http" else 1
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="label") as pool:
            outcomes = pool.map(lambda w: _safe_judge(judge, w, args.repeats), windows)
            for outcome in tqdm(outcomes, total=len(windows), desc="label", unit="window",
                                disable=args.no_progress or None):
                responses += outcome.responses
                if outcome.error is not None:
                    dead.append(dead_letter(STAGE, outcome.error.reason, outcome.error, outcome.window.payload,
                                            id=outcome.window.serp_id))
                    continue
                labels += label_rows(outcome, judge.name, judge.model, judge.prompt_version)
                labelled += 1
    finally:
        for resource in closers:
            resource.close()
    _write_jsonl(out / "labels.jsonl", labels)
    _write_jsonl(out / "responses.jsonl", responses)
    _write_jsonl(out / "deadletter.jsonl", dead)
    extra = {"judge": judge.name, "model": judge.model, "prompt_version": judge.prompt_version,
             "inputs": files, "elapsed_s": round(time.monotonic() - started, 3)}
    if client is not None:
        extra.update({"base_url": scrub(client.base_url), "image_size": args.image_size,
                      "http_attempts": client.attempts, "http_status_counts": dict(client.status_counts)})
    summary = summarize(windows_in=windows_in, labelled=labelled, dead=dead, label_rows_=labels,
                        responses=responses, repeats=args.repeats, price_in=args.price_per_1k_input,
                        price_out=args.price_per_1k_output, extra=extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_share(args.max_deadletter_share)
    try:
        summary = label(args)
    except ValueError as exc:  # the flags and the files they name (windows, --quality, --prompt)
        raise UsageError(str(exc)) from None
    reasons = sorted(summary["dead_letter_reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    top = f" ({', '.join(f'{r} {n}' for r, n in reasons[:3])})" if reasons else ""
    print(f"labelled {summary['windows_labelled']} of {summary['windows_in']} windows "
          f"({summary['items_labelled']} items), dead-lettered {summary['windows_dead_lettered']}{top}; "
          f"tokens {summary['usage']['total_tokens']}, cost {summary['cost']['total']}; "
          f"see {os.path.join(args.output, 'summary.json')}", file=sys.stderr)
    code, why = run_outcome("label", summary["windows_in"], summary["windows_labelled"],
                            summary["windows_dead_lettered"], args.max_deadletter_share)
    if why:
        print(why, file=sys.stderr)
    return code


if __name__ == "__main__":
    job_main("python -m labeling.label", run)
