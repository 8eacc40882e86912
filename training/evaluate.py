"""``imagescore evaluate``: the paper's Table 1 (Method | OPA | CA) on the test split.

Each figure comes with a 95% bootstrap CI (resampling SERPs), its number of
pairs and its tie rate (ties count as wrong). The paper's own figures are
printed beside ours for orientation only: they come from Mercari's
proprietary logs and labels, not from the data evaluated here.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from training import metrics as M
from training.data import Dataset, load_dataset, match_files

# Paper Table 1 (OPA %, CA %), Mercari's proprietary dataset.
PAPER = {"Image Score (FL)": (67.75, 64.42), "Image Score (CE)": (67.45, 64.14), "CLIP Score": (49.75, 50.20),
         "CTR Highest": (42.59, 44.40), "Random": (50.0, 50.0)}


def evaluate_methods(data: Dataset, *, runs: list[str], ctr: str | None, clip_backbone: str | None,
                     split: str = "test", n_boot: int = 1000, seed: int = 0,
                     ctr_prior_strength: float = 10.0) -> tuple[list[dict], dict[str, np.ndarray]]:
    """One row per method: OPA and CA stats, or ``unavailable`` with the reason."""
    from training import baselines as B  # torch: imported when a command runs, not for --help
    part = data.splits[split]
    if part.n_windows == 0:
        raise ValueError(f"the {split} split has no usable windows (data summary: {data.summary()})")
    # (name, scorer) where scorer is a callable returning scores, or an 'unavailable: reason' string
    scorers: list[tuple[str, object]] = [("Random", lambda: B.random_scores(len(part.group), seed))]
    if ctr:
        table = B.load_ctr(ctr)
        scorers.append(("CTR Highest", lambda: B.ctr_scores(part, table, ctr_prior_strength)))
    else:
        scorers.append(("CTR Highest", "unavailable: no --ctr given (collect writes ctr*.jsonl with --ctr-cutoff)"))
    scorers.append(("CLIP Score", _clip_scorer(data, part, clip_backbone)))
    names = set()
    for run_dir in runs:
        name = B.image_score_method(run_dir)
        if name in names:
            name = f"{name} [{os.path.basename(os.path.normpath(run_dir))}]"
        names.add(name)
        scorers.append((name, lambda run_dir=run_dir: B.head_scores(run_dir, part, data.embeddings)))
    rows, scores = [], {}
    for name, scorer in scorers:
        row = {"method": name, "paper_opa": PAPER.get(name.split(" [")[0], (None, None))[0],
               "paper_ca": PAPER.get(name.split(" [")[0], (None, None))[1]}
        if isinstance(scorer, str):
            rows.append({**row, "unavailable": scorer.removeprefix("unavailable: ")})
            continue
        try:
            values = scorer()
        except (ValueError, OSError) as exc:  # e.g. a CLIP directory that is missing or has no text tower
            if name != "CLIP Score":
                raise
            rows.append({**row, "unavailable": str(exc)})
            continue
        scores[name] = values
        rows.append({**row,
                     "opa": M.opa_stats(values, part.label, part.group, n_boot, seed).as_dict(),
                     "ca": M.ca_stats(values, part.clicked, part.group, n_boot, seed).as_dict()})
    return rows, scores


def _clip_scorer(data: Dataset, part, spec: str | None):
    from training import baselines as B
    from training.train import spec_from_backbone_id
    spec = spec or spec_from_backbone_id(data.embeddings.backbone_id)

    def score():
        from scoring.backbone import load_backbone
        backbone = load_backbone(spec, device="cpu", normalize=not data.embeddings.backbone_id.endswith("+raw"))
        return B.clip_scores(part, data.embeddings, backbone)
    return score


def _cell(stats: dict) -> str:
    if stats["pairs"] == 0:
        return "n/a (0 pairs)"
    return f"{100 * stats['accuracy']:.2f} [{100 * stats['ci_low']:.2f}, {100 * stats['ci_high']:.2f}]" \
        if stats.get("ci_low") is not None else f"{100 * stats['accuracy']:.2f}"


def images_seen_in_training(data: Dataset, split: str) -> tuple[int, int]:
    """(distinct images of ``split`` that also sit in train windows, distinct images of ``split``).

    Windows are split by SERP, as in the paper, so a popular item recurs across
    splits; this says how much of a figure rests on images the head trained on.
    """
    def images(part) -> set[tuple[str, str]]:
        return set(zip(part.item_id, part.image_url))
    evaluated = images(data.splits[split])
    return len(evaluated & images(data.splits["train"])), len(evaluated)


def table_markdown(rows: list[dict], data: Dataset, split: str) -> str:
    part = data.splits[split]
    seen, total = images_seen_in_training(data, split)
    head = [f"Split `{split}`: {part.n_windows} SERPs, {len(part.group)} images; "
            f"backbone `{data.embeddings.backbone_id}`. 95% bootstrap CI over SERPs; ties count as wrong.",
            f"{seen} of {total} distinct images of this split also appear in train windows (splits are by SERP, "
            "as in the paper), so the learned rows partly measure images seen in training.",
            "Paper columns: Mercari's proprietary dataset (paper Table 1), NOT this data; for orientation only.", "",
            "| Method | OPA % [95% CI] | OPA pairs | OPA ties | CA % [95% CI] | CA pairs | CA ties "
            "| Paper OPA (other data) | Paper CA (other data) |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        paper = [f"{r['paper_opa']:.2f}" if r["paper_opa"] is not None else "-",
                 f"{r['paper_ca']:.2f}" if r["paper_ca"] is not None else "-"]
        if "unavailable" in r:
            head.append(f"| {r['method']} | unavailable: {r['unavailable']} | | | | | | {paper[0]} | {paper[1]} |")
            continue
        o, c = r["opa"], r["ca"]
        head.append(f"| {r['method']} | {_cell(o)} | {o['pairs']} | {100 * o['tie_rate']:.1f}% | {_cell(c)} "
                    f"| {c['pairs']} | {100 * c['tie_rate']:.1f}% | {paper[0]} | {paper[1]} |")
    return "\n".join(head) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--windows", required=True, help="glob of collect's windows (with split)")
    p.add_argument("--labels", required=True, help="glob of the label step's labels")
    p.add_argument("--embeddings", required=True, help="glob of embed's Parquet (the runs' backbone)")
    p.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR",
                   help="training run directories (Image Score (CE) / (FL), named by each run's loss)")
    p.add_argument("--ctr", help="glob of collect's ctr*.jsonl for CTR Highest")
    p.add_argument("--ctr-prior-strength", type=float, default=10.0,
                   help="CTR smoothing: a Beta prior worth this many impressions at the global CTR")
    p.add_argument("--clip-backbone", help="backbone spec for CLIP Score (default: guessed from the embeddings' id)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of SERPs")
    p.add_argument("--seed", type=int, default=0, help="seeds Random and the bootstrap")
    p.add_argument("--output", help="directory for evaluation.md / evaluation.json / samples.html")
    p.add_argument("--samples", type=int, default=12, help="SERPs on the qualitative page (0: none)")
    p.add_argument("--embed-images", action="store_true",
                   help="inline local (file://) images into samples.html so the page travels alone")
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bootstrap < 1:
        raise UsageError("--bootstrap must be at least 1")
    for run_dir in args.runs:
        if not os.path.isfile(os.path.join(run_dir, "config.json")):
            raise UsageError(f"--runs {run_dir!r} is not a training run directory (no config.json); pass the "
                             "--output of `imagescore train`")
    try:
        if args.ctr:  # every glob is checked before the dataset is read
            match_files(args.ctr, "--ctr")
        data = load_dataset(args.windows, args.labels, args.embeddings)
        rows, scores = evaluate_methods(data, runs=args.runs, ctr=args.ctr, clip_backbone=args.clip_backbone,
                                        split=args.split, n_boot=args.bootstrap, seed=args.seed,
                                        ctr_prior_strength=args.ctr_prior_strength)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    table = table_markdown(rows, data, args.split)
    print(table)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "evaluation.md"), "w", encoding="utf-8") as handle:
            handle.write("# Evaluation (paper Table 1 layout)\n\n" + table)
        with open(os.path.join(args.output, "evaluation.json"), "w", encoding="utf-8") as handle:
            seen, total = images_seen_in_training(data, args.split)
            json.dump({"split": args.split, "data": data.summary(), "methods": rows,
                       "images_seen_in_training": {"seen": seen, "distinct_images": total},
                       "paper_note": "paper figures are from Mercari's proprietary dataset"}, handle, indent=2)
        image_score = next((name for name in scores if name.startswith("Image Score")), None)
        if args.samples > 0 and image_score:
            from training.samples import write_samples_page
            path = os.path.join(args.output, "samples.html")
            # The head's raw outputs rank the same as the served model's sigmoid(head); the page shows
            # the latter, the [0, 1] image_score the backfill writes.
            calibrated = 1.0 / (1.0 + np.exp(-np.asarray(scores[image_score], dtype=np.float64)))
            write_samples_page(path, data.splits[args.split], calibrated, method=image_score,
                               n=args.samples, seed=args.seed, embed_images=args.embed_images)
            print(f"qualitative samples: {path}")
    return 0


if __name__ == "__main__":
    job_main("python -m training.evaluate", run)
