"""``imagescore train``: fit the MLP head on frozen embeddings with a pairwise loss (paper section 3.2).

Embeddings are precomputed (``imagescore embed``), so an epoch is cheap: each
batch takes 128 pairs, scores every distinct image in it *once* and gathers the
winner/loser scores by index. Pairs are taken window by window (windows shuffled
each epoch) and cut every 128, so a window's pairs sit together (a window may
straddle two batches) and the 28 pairs of an 8-image window cost 8 head rows, not 56.

The epoch kept is the one with the best validation Click Accuracy, Ordered
Pair Accuracy breaking ties. ``--grid`` repeats that for every learning rate x
weight decay x loss in the config and keeps the best, writing the whole grid.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from training import metrics as M
from training.data import Dataset, SplitData, load_dataset

# torch and the modules built on it are imported inside the functions that train, so --help answers at once.
if TYPE_CHECKING:
    import torch

    from scoring.head import ScoreHead


# ---------------------------------------------------------------- config
@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; saved as ``config.json`` in the run directory."""

    loss: str = "focal"            # "focal" (paper's best) or "ce" (ImageReward)
    gamma: float = 2.0             # focal exponent; 0 equals CE
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 100
    batch_size: int = 128          # pairs per step
    eta_min: float = 0.0           # floor of the cosine schedule
    activation: str = "none"       # see scoring/head.py for why none is the default
    seed: int = 0
    device: str = "auto"           # auto = cuda when available
    grid_lr: list = dataclasses.field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    grid_weight_decay: list = dataclasses.field(default_factory=lambda: [0.0, 0.01, 0.1])
    grid_loss: list = dataclasses.field(default_factory=lambda: ["ce", "focal"])
    backbone: str | None = None    # spec that loads the backbone at serving time; default: the embeddings' backbone_id
    run_name: str | None = None    # default: the run directory's name
    bootstrap: int = 1000          # bootstrap resamples (SERPs) for the reported CIs

    def validate(self) -> TrainConfig:
        from scoring.head import ACTIVATIONS
        from training.losses import LOSSES
        problems = []
        for loss in [self.loss, *self.grid_loss]:
            if loss not in LOSSES:
                problems.append(f"loss {loss!r} (use one of {sorted(LOSSES)})")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} (use one of {sorted(ACTIVATIONS)})")
        for name in ("lr", "epochs", "batch_size"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} = {getattr(self, name)} (must be > 0)")
        if self.weight_decay < 0 or self.gamma < 0:
            problems.append("weight_decay and gamma must be >= 0")
        if not (self.grid_lr and self.grid_weight_decay and self.grid_loss):
            problems.append("grid_lr, grid_weight_decay and grid_loss must each list at least one value")
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))
        return self


def read_config_file(path: str) -> dict:
    """A JSON or YAML mapping of :class:`TrainConfig` fields; unknown keys are refused."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {unknown}; known: {sorted(known)}")
    return data


def make_optimizer(head: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch supports it: the step over ~0.7M head weights is a third of the
    time of a small batch, and the fused kernel is about 3x faster than the per-parameter loop."""
    import torch
    try:
        return torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # torch < 2.4 on CPU, or an unsupported device
        return torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)


# ---------------------------------------------------------------- batching and scoring
def window_batches(pair_group: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pair indices for one epoch: windows in random order, their pairs kept together, cut every ``batch_size``."""
    if len(pair_group) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, pair_group[1:] != pair_group[:-1]])
    counts = np.diff(np.r_[starts, len(pair_group)])
    order = rng.permutation(len(starts))
    counts_o = counts[order]
    offsets = np.arange(counts_o.sum()) - np.repeat(np.cumsum(counts_o) - counts_o, counts_o)
    index = np.repeat(starts[order], counts_o) + offsets
    return [index[k:k + batch_size] for k in range(0, len(index), batch_size)]


def score_pairs(head: torch.nn.Module, embeddings: torch.Tensor, winners: torch.Tensor,
                losers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the head once per distinct image of the batch and gather (s_w, s_l) by index."""
    import torch
    rows, inverse = torch.unique(torch.cat([winners, losers]), return_inverse=True)
    scores = head(embeddings[rows])
    return scores[inverse[:len(winners)]], scores[inverse[len(winners):]]


def score_pairs_naive(head: torch.nn.Module, embeddings: torch.Tensor, winners: torch.Tensor,
                      losers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook way: the head runs on both sides of every pair. Kept for the benchmark only."""
    return head(embeddings[winners]), head(embeddings[losers])


def score_rows(head: torch.nn.Module, embeddings: torch.Tensor, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Eval-mode scores (logits) for embedding rows."""
    import torch
    head.eval()
    with torch.no_grad():
        out = [head(embeddings[torch.as_tensor(rows[k:k + chunk], device=embeddings.device)]).float().cpu()
               for k in range(0, len(rows), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def split_metrics(scores: np.ndarray, split: SplitData, n_boot: int = 0, seed: int = 0) -> dict:
    return {"opa": M.opa_stats(scores, split.label, split.group, n_boot, seed).as_dict(),
            "ca": M.ca_stats(scores, split.clicked, split.group, n_boot, seed).as_dict()}


# ---------------------------------------------------------------- one training run
@dataclasses.dataclass
class TrainResult:
    head: ScoreHead
    history: list[dict]
    best_epoch: int
    best: dict           # validation ca / opa / loss at the best epoch
    seconds: float


def _selection_key(ca: float, opa: float) -> tuple[float, float]:
    return (-1.0 if math.isnan(ca) else ca, -1.0 if math.isnan(opa) else opa)


def check_trainable(data: Dataset) -> None:
    """Refuse data a head cannot be trained and selected on (ValueError naming what to change)."""
    if data.splits["train"].n_pairs == 0:
        raise ValueError("the train split has no pairs: every window was dropped or tied "
                         f"(data summary: {data.summary()})")
    if data.splits["validation"].n_windows == 0:
        raise ValueError("the validation split is empty, so no epoch can be selected; "
                         "give collect a validation fraction > 0")


def train_head(config: TrainConfig, data: Dataset, *, progress: bool = True, desc: str = "train") -> TrainResult:
    """Train one head; return it at its best validation epoch (CA, then OPA)."""
    import torch
    from tqdm.auto import tqdm

    from scoring.head import HeadConfig, ScoreHead
    from scoring.model import resolve_device
    from training.losses import pairwise_loss
    check_trainable(data)
    train, val = data.splits["train"], data.splits["validation"]
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    X = torch.from_numpy(data.embeddings.matrix).to(device)
    head = ScoreHead(HeadConfig(input_dim=data.embeddings.dim, activation=config.activation)).to(device)
    optimizer = make_optimizer(head, config.lr, config.weight_decay)
    steps_per_epoch = math.ceil(train.n_pairs / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch, eta_min=config.eta_min)
    pw_train = torch.as_tensor(train.pair_w, device=device)
    pl_train = torch.as_tensor(train.pair_l, device=device)
    pw_val = torch.as_tensor(val.pair_w, device=device)
    pl_val = torch.as_tensor(val.pair_l, device=device)

    history: list[dict] = []
    best_key, best_state, best_epoch, best = None, None, -1, {}
    started = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        head.train()
        total, seen = 0.0, 0
        for batch in window_batches(train.pair_group, config.batch_size, rng):
            index = torch.as_tensor(batch, device=device)
            s_w, s_l = score_pairs(head, X, pw_train[index], pl_train[index])
            loss = pairwise_loss(config.loss, s_w, s_l, config.gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        head.eval()
        with torch.no_grad():
            val_loss = (float(pairwise_loss(config.loss, *score_pairs(head, X, pw_val, pl_val), config.gamma))
                        if val.n_pairs else float("nan"))
        scores = score_rows(head, X, val.row)
        val_opa = M.ordered_pair_accuracy(scores, val.label, val.group)
        val_ca = M.click_accuracy(scores, val.clicked, val.group)
        row = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss, "val_opa": val_opa,
               "val_ca": val_ca, "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        key = _selection_key(val_ca, val_opa)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(head.state_dict())
            best = {"ca": val_ca, "opa": val_opa, "loss": val_loss}
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_ca=f"{val_ca:.4f}", val_opa=f"{val_opa:.4f}")
    head.load_state_dict(best_state)
    head.eval()
    return TrainResult(head, history, best_epoch, best, time.perf_counter() - started)


# ---------------------------------------------------------------- grid search
def grid_search(config: TrainConfig, data: Dataset, *, progress: bool = True) -> tuple[TrainResult, TrainConfig, list[dict]]:
    """Train every (lr, weight decay, loss) of the config's grid; keep the best by validation CA, then OPA."""
    rows, best = [], None
    combos = list(itertools.product(config.grid_lr, config.grid_weight_decay, config.grid_loss))
    for k, (lr, wd, loss) in enumerate(combos, 1):
        trial = dataclasses.replace(config, lr=float(lr), weight_decay=float(wd), loss=loss)
        result = train_head(trial, data, progress=progress, desc=f"grid {k}/{len(combos)}")
        rows.append({"lr": trial.lr, "weight_decay": trial.weight_decay, "loss": loss,
                     "best_epoch": result.best_epoch, "val_ca": result.best["ca"], "val_opa": result.best["opa"],
                     "val_loss": result.best["loss"], "seconds": round(result.seconds, 2)})
        if best is None or _selection_key(result.best["ca"], result.best["opa"]) > _selection_key(
                best[0].best["ca"], best[0].best["opa"]):
            best = (result, trial)
    for row in rows:
        row["selected"] = (row["lr"], row["weight_decay"], row["loss"]) == (best[1].lr, best[1].weight_decay, best[1].loss)
    return best[0], best[1], rows


def grid_markdown(rows: list[dict]) -> str:
    lines = ["| lr | weight decay | loss | best epoch | val CA | val OPA | val loss | selected |",
             "|---:|---:|---|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r['lr']:g} | {r['weight_decay']:g} | {r['loss']} | {r['best_epoch']} | "
                     f"{100 * r['val_ca']:.2f} | {100 * r['val_opa']:.2f} | {r['val_loss']:.4f} | "
                     f"{'**yes**' if r['selected'] else ''} |")
    return "\n".join(lines) + "\n"


def write_grid(run_dir: str, rows: list[dict]) -> None:
    import csv
    with open(os.path.join(run_dir, "grid.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(run_dir, "grid.md"), "w", encoding="utf-8") as handle:
        handle.write("# Grid search (validation split)\n\nSelection: best validation CA, OPA breaks ties.\n\n")
        handle.write(grid_markdown(rows))


# ---------------------------------------------------------------- reporting
def plot_curves(history: list[dict], best_epoch: int, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("pairwise loss")
    right.plot(epochs, [100 * h["val_ca"] for h in history], label="validation CA")
    right.plot(epochs, [100 * h["val_opa"] for h in history], label="validation OPA")
    right.axhline(50, color="grey", lw=0.8, ls=":")
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    for ax in (left, right):
        ax.axvline(best_epoch, color="black", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (dashed: selected epoch {best_epoch})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(stats: dict) -> str:
    if stats["pairs"] == 0:
        return "n/a (no pairs)"
    ci = ""
    if stats.get("ci_low") is not None:
        ci = f" [{100 * stats['ci_low']:.2f}, {100 * stats['ci_high']:.2f}]"
    return f"{100 * stats['accuracy']:.2f}{ci} ({stats['pairs']} pairs, ties {100 * stats['tie_rate']:.1f}%)"


def model_card(run_name: str, config: TrainConfig, data: Dataset, result: TrainResult, evaluation: dict,
               backbone_spec: str, normalize: bool, grid: bool) -> str:
    summary = data.summary()
    split_lines = "\n".join(f"| {name} | {s['windows']} | {s['images']} | {s['pairs']} |"
                            for name, s in summary["splits"].items())
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(summary["dropped"].items())) or "none"
    judges = ", ".join(f"`{name}` ({rows} rows)" for name, rows in sorted(summary["judges"].items())) or "unknown"
    return f"""# Model card: {run_name}

Model id: `{{model_id}}` (written to Elasticsearch as `image_score_model`).

## What it is
An MLP head (d={data.embeddings.dim} -> 1024 -> 128 -> 64 -> 16 -> 1, activation `{config.activation}`)
on the frozen backbone `{summary['backbone_id']}` (spec `{backbone_spec}`, L2-normalised: {normalize}),
trained with the pairwise {'focal' if config.loss == 'focal' else 'cross-entropy'} loss
(paper "Image Score", Mercari 2024, section 3.2). The served model takes uint8 NHWC images and returns
sigmoid(head(backbone(image))) in [0, 1].

## Data
Windows from `imagescore collect`, labels from `imagescore label` (judge: {judges}),
embeddings from `imagescore embed`.
Pairs: the clicked image and the images the judge scored below it; every untied pair, winner = higher label.

| split | windows | images | pairs |
|---|---:|---:|---:|
{split_lines}

Dropped while joining: {dropped}.

## Training
AdamW (lr {config.lr:g}, weight decay {config.weight_decay:g}), cosine schedule over {config.epochs} epochs,
batch {config.batch_size} pairs, seed {config.seed}{', selected by grid search (see grid.md)' if grid else ''}.
Selected epoch {result.best_epoch} by validation Click Accuracy (OPA breaks ties). Curves: `curves.png`.

## Figures (95% bootstrap CI over SERPs; ties count as wrong)
| split | OPA | CA |
|---|---|---|
| validation | {_pct(evaluation['validation']['opa'])} | {_pct(evaluation['validation']['ca'])} |
| test | {_pct(evaluation['test']['opa'])} | {_pct(evaluation['test']['ca'])} |

The test split was not used for any choice. Compare against baselines with `imagescore evaluate`.

## Limitations
- Labels come from the judge named above (a vision LLM in production; `simulated` reads a simulator's
  latent quality). The model learns the judge's taste where it agrees with clicks, not an objective
  quality. OPA measures agreement with the judge, CA with users' clicks.
- Clicks depend on price, title and position too; CA is a noisy proxy and cannot reach 100%.
- A head is only valid on the backbone it was trained on (checked when loading).
- Figures from a simulated marketplace or a stand-in backbone (tiny or handcrafted) say that the pipeline
  works, not how well a production model ranks.
"""


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore train", description=__doc__.split("\n")[0])
    p.add_argument("--windows", required=True, help="glob of collect's windows (JSONL or Parquet), with split")
    p.add_argument("--labels", required=True, help="glob of the label step's labels*.jsonl")
    p.add_argument("--embeddings", required=True, help="glob of embed's embeddings*.parquet")
    p.add_argument("--output", required=True, help="run directory to create (checkpoint, config, metrics, card)")
    p.add_argument("--config", help="JSON or YAML file of settings; flags given on the command line win")
    p.add_argument("--grid", action="store_true", help="grid-search lr x weight decay x loss on validation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="write into an existing run directory")
    flags = {"loss": str, "gamma": float, "lr": float, "weight_decay": float, "epochs": int, "batch_size": int,
             "eta_min": float, "activation": str, "seed": int, "device": str, "backbone": str,
             "run_name": str, "bootstrap": int}
    for name, kind in flags.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                       help=f"--config's value, else (default: {getattr(TrainConfig(), name)!r})")
    for name, kind in (("grid_lr", float), ("grid_weight_decay", float), ("grid_loss", str)):
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       type=lambda text, kind=kind: [kind(v) for v in text.split(",") if v.strip()],
                       help=f"comma-separated (default: {','.join(map(str, getattr(TrainConfig(), name)))})")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = read_config_file(args.config) if args.config else {}
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return TrainConfig(**values).validate()


def spec_from_backbone_id(backbone_id: str) -> str:
    """Best guess of the spec that produced a backbone id (``handcrafted:...`` -> ``handcrafted``,
    ``hf:name@hash`` -> ``hf:name``); ``--backbone`` overrides it where the guess cannot load."""
    base = backbone_id[:-len("+raw")] if backbone_id.endswith("+raw") else backbone_id
    if base.startswith("handcrafted:"):
        return "handcrafted"
    return base.rsplit("@", 1)[0]


def resolve_backbone(config: TrainConfig, data: Dataset) -> tuple[str, bool, int]:
    """The backbone spec, normalize flag and input size the served model will use, checked against the embeddings.

    The normalize flag is read off the id (raw embeddings carry ``+raw``); loading
    the backbone and comparing ids proves the served model sees the features the
    head was trained on.
    """
    from scoring.backbone import load_backbone
    wanted = data.embeddings.backbone_id
    spec = config.backbone or spec_from_backbone_id(wanted)
    normalize = not wanted.endswith("+raw")
    try:
        backbone = load_backbone(spec, device="cpu", normalize=normalize)
    except Exception as exc:
        raise ValueError(f"cannot load backbone {spec!r}, which the served model needs ({exc}); "
                         f"pass --backbone SPEC naming the backbone embed used for {wanted!r}") from exc
    if backbone.backbone_id != wanted:
        raise ValueError(f"backbone {spec!r} loads {backbone.backbone_id!r} but the embeddings come from "
                         f"{wanted!r}; pass --backbone with the spec embed used")
    if int(backbone.embed_dim) != data.embeddings.dim:
        raise ValueError(f"backbone {spec!r} gives {backbone.embed_dim}-d vectors, embeddings are {data.embeddings.dim}-d")
    return spec, normalize, int(backbone.input_size)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from scoring.checkpoint import save_run
    from scoring.model import resolve_device
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.force:
        raise UsageError(f"--output {args.output!r} exists and is not empty; choose a new run directory or pass --force")
    try:  # the flags, --config and the files they name
        config = config_from_args(args)
        data = load_dataset(args.windows, args.labels, args.embeddings)
        spec, normalize, input_size = resolve_backbone(config, data)
        check_trainable(data)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    run_name = config.run_name or os.path.basename(os.path.normpath(args.output))
    summary = data.summary()
    print(f"data: {json.dumps(summary)}", file=sys.stderr)
    progress = not args.no_progress
    grid_rows = None
    if args.grid:
        result, config, grid_rows = grid_search(config, data, progress=progress)
    else:
        result = train_head(config, data, progress=progress)
    device = resolve_device(config.device)
    X = torch.from_numpy(data.embeddings.matrix).to(device)
    evaluation = {name: split_metrics(score_rows(result.head, X, data.splits[name].row), data.splits[name],
                                      config.bootstrap, config.seed)
                  for name in ("validation", "test")}
    os.makedirs(args.output, exist_ok=True)
    metrics = {"best_epoch": result.best_epoch, "selection": "validation CA, then OPA", "seconds": result.seconds,
               "data": summary, "history": result.history, **evaluation}
    if grid_rows is not None:
        metrics["grid"] = grid_rows
        write_grid(args.output, grid_rows)
        print(grid_markdown(grid_rows))
    # config.json is a valid --config file: it reproduces this run on the same inputs.
    config_dict = {**dataclasses.asdict(config), "backbone": spec, "run_name": run_name}
    metrics["inputs"] = {"windows": args.windows, "labels": args.labels, "embeddings": args.embeddings}
    model_id = save_run(args.output, head=result.head.cpu(), backbone_spec=spec,
                        backbone_id=data.embeddings.backbone_id, normalize=normalize, input_size=input_size,
                        run_name=run_name, config=config_dict, metrics=metrics,
                        model_card=model_card(run_name, config, data, result, evaluation, spec, normalize,
                                              grid_rows is not None))
    plot_curves(result.history, result.best_epoch, os.path.join(args.output, "curves.png"), run_name)
    print(f"model {model_id}: best epoch {result.best_epoch}; "
          f"validation CA {_pct(evaluation['validation']['ca'])}, OPA {_pct(evaluation['validation']['opa'])}; "
          f"test CA {_pct(evaluation['test']['ca'])}, OPA {_pct(evaluation['test']['opa'])}")
    print(f"run directory: {args.output}")
    return 0


if __name__ == "__main__":
    job_main("python -m training.train", run)
