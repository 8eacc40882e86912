"""simulate -> collect -> label (simulated judge) -> embed -> train -> evaluate, offline, on two small worlds.

The backbone is the handcrafted image statistics (``--backbone handcrafted``):
no pretrained CLIP can be had here, and a randomly initialised tiny CLIP sees
nothing of photo quality. The judge is the simulator's latent quality.

* Quality world (``--quality-effect 2``): clicks depend on photo quality, so
  the learned Image Score must beat Random on Click Accuracy with its 95% CI
  above 50.
* Null world (``--quality-effect 0``): clicks ignore quality, so the same model
  must not beat Random: its CA CI must contain 50.

Training runs 15 epochs instead of 100 (``e2e-config.json`` below) to stay well
under two minutes per world; collect keeps 30% of SERPs for the test split so
the CIs are narrow enough to separate the two worlds. The steps run in this
process, through the entry point ``python -m`` uses; the README walkthrough
(tests/test_readme.py) runs the chain as ``imagescore`` processes.
"""
from __future__ import annotations

import glob
import importlib
import json
import os

import numpy as np
import pytest
import torch

from cli_common import guarded

E2E_CONFIG = {"epochs": 15, "bootstrap": 500, "seed": 0}


def _step(module: str, *argv: str) -> None:
    """One pipeline step through its ``python -m`` entry point (``guarded(run)``), in this process: each
    step reads only its flags and the files of the step before. The README walkthrough
    (tests/test_readme.py) runs the same chain as separate ``imagescore`` processes."""
    code = guarded(f"python -m {module}", importlib.import_module(module).run, list(argv))
    assert code == 0, f"{module} {' '.join(argv)} exited with {code}"


def _pipeline(root: str, quality_effect: float) -> dict:
    world, windows, labels, emb = (os.path.join(root, d) for d in ("world", "collect", "labels", "embeddings"))
    _step("training.simulate", "--output", world, "--items", "200", "--serps", "1500", "--seed", "1",
          "--image-size", "128", "--quality-effect", str(quality_effect))
    # 30% test split (not 10%): enough SERPs for a CI narrow enough to tell a real effect from none
    _step("pipelines.collect", "--logs", os.path.join(world, "logs.jsonl"), "--output", windows,
          "--train-fraction", "0.6", "--validation-fraction", "0.1", "--ctr-cutoff", "2024-01-15T00:00:00+00:00")
    _step("labeling.label", "--windows", os.path.join(windows, "windows*.jsonl"), "--output", labels,
          "--judge", "simulated", "--quality", os.path.join(world, "quality.jsonl"), "--no-progress")
    _step("pipelines.embed", "--windows", os.path.join(windows, "windows*.jsonl"), "--backbone", "handcrafted",
          "--output", emb, "--allow-image-schemes", "file")
    config = os.path.join(root, "e2e-config.json")
    with open(config, "w") as handle:
        json.dump(E2E_CONFIG, handle)
    flags = ["--windows", os.path.join(windows, "windows*.jsonl"), "--labels", os.path.join(labels, "labels*.jsonl"),
             "--embeddings", os.path.join(emb, "embeddings*.parquet")]
    run_dir = os.path.join(root, "run-fl")
    _step("training.train", *flags, "--output", run_dir, "--config", config, "--loss", "focal", "--no-progress")
    out = os.path.join(root, "eval")
    _step("training.evaluate", *flags, "--runs", run_dir, "--ctr", os.path.join(windows, "ctr*.jsonl"),
          "--bootstrap", "1000", "--output", out, "--samples", "4")
    with open(os.path.join(out, "evaluation.json")) as handle:
        result = json.load(handle)
    return {"methods": {m["method"]: m for m in result["methods"]}, "run": run_dir, "data": result["data"],
            "world": world, "emb": emb, "eval": out}


@pytest.mark.slow
def test_quality_world_image_score_beats_random(tmp_path):
    out = _pipeline(str(tmp_path), quality_effect=2.0)
    methods = out["methods"]
    assert out["data"]["backbone_id"] == "handcrafted:handcrafted-v4"
    ours, rnd = methods["Image Score (FL)"]["ca"], methods["Random"]["ca"]
    assert ours["ci_low"] > 0.5, ours
    assert ours["accuracy"] > rnd["accuracy"] and rnd["ci_low"] < 0.5 < rnd["ci_high"]
    assert methods["Image Score (FL)"]["opa"]["ci_low"] > 0.6  # it learned the judge
    assert "no text tower" in methods["CLIP Score"]["unavailable"]
    assert os.path.getsize(os.path.join(out["eval"], "samples.html")) > 1000

    # the run directory serves as one model: uint8 images in, same ranking as the head on stored embeddings
    import pyarrow.parquet as pq

    from scoring.checkpoint import load_head
    from scoring.model import load_model
    from transforms.decode import decode_image
    model = load_model(out["run"], device="cpu")
    assert model.model_id.startswith("handcrafted-mlp:run-fl@")
    rows = pq.read_table(glob.glob(os.path.join(out["emb"], "embeddings*.parquet"))[0]).to_pylist()[:16]
    images = []
    for row in rows:
        with open(row["image_url"].removeprefix("file://"), "rb") as handle:
            images.append(decode_image(handle.read(), model.input_size))
    served = model(torch.from_numpy(np.stack(images)))
    head, _ = load_head(out["run"])
    with torch.no_grad():
        stored = torch.sigmoid(head(torch.tensor([r["embedding"] for r in rows])))
    assert torch.allclose(served, stored, atol=1e-4)


@pytest.mark.slow
def test_null_world_image_score_does_not_beat_random(tmp_path):
    out = _pipeline(str(tmp_path), quality_effect=0.0)
    ours = out["methods"]["Image Score (FL)"]
    assert ours["ca"]["ci_low"] <= 0.5 <= ours["ca"]["ci_high"], ours["ca"]
    # the head still learned the judge's taste: the null result is about clicks, not a broken model
    assert ours["opa"]["ci_low"] > 0.6
