"""The ``imagescore`` console script: one subcommand per job, each a thin layer over a module's ``run``.

Nothing imports this module: the pieces the jobs share (the usage error, the
parser, ``job_main``) live in :mod:`cli_common`. A job's module is imported
only when its command runs, so ``imagescore --help`` loads none of them.
"""
from __future__ import annotations

import importlib
import sys

from cli_common import USAGE_EXIT, UsageError, guarded  # noqa: F401  (UsageError: for callers of main)

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
    if {"-h", "--help"} & set(rest):
        # The Beam jobs' modules import Beam (seconds); their flags are defined without it.
        from pipelines.flags import JOBS, help_requested
        if name in JOBS:
            help_requested(rest, name)
            return 0
    module = importlib.import_module(COMMANDS[name][0])
    return guarded(f"imagescore {name}", module.run, rest)


if __name__ == "__main__":
    sys.exit(main())
