import dataclasses
import json

import numpy as np
import pytest
import torch

from scoring.head import HeadConfig, ScoreHead
from tests.fixtures.training import write_world
from training.data import load_dataset
from training.train import (
    TrainConfig,
    build_parser,
    config_from_args,
    grid_search,
    run,
    score_pairs,
    score_pairs_naive,
    spec_from_backbone_id,
    train_head,
    window_batches,
)

FAST = dict(epochs=8, bootstrap=200)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(str(tmp_path_factory.mktemp("world")), n_windows=200)


@pytest.fixture(scope="module")
def dataset(world):
    return load_dataset(world["windows"], world["labels"], world["embeddings"])


def test_head_shape_and_imagereward_init():
    head = ScoreHead(HeadConfig(input_dim=512))
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    assert [m.p for m in head.layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.GELU)) for m in head.layers)
    # std = 1 / (d + 1) for every layer's weights, as ImageReward's MLP; biases 0
    assert linears[0].weight.std().item() == pytest.approx(1 / 513, rel=0.02)
    assert linears[1].weight.std().item() == pytest.approx(1 / 513, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
    assert head(torch.randn(4, 512)).shape == (4,)
    gelu = ScoreHead(HeadConfig(input_dim=8, activation="gelu"))
    assert sum(isinstance(m, torch.nn.GELU) for m in gelu.layers) == 4
    with pytest.raises(ValueError, match="unknown head activation 'tanh'"):
        HeadConfig(input_dim=8, activation="tanh")


def test_window_batches_keep_windows_together_and_cover_every_pair():
    pair_group = np.repeat(np.arange(10), [3, 1, 5, 2, 2, 4, 1, 6, 3, 3])
    batches = window_batches(pair_group, 7, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(pair_group)))
    assert all(len(b) == 7 for b in batches[:-1])
    runs = pair_group[flat]
    assert (np.diff(runs) != 0).sum() == 9  # each window appears as one contiguous run


def test_score_once_per_image_equals_naive_scoring():
    torch.manual_seed(0)
    head = ScoreHead(HeadConfig(input_dim=6)).eval()
    X = torch.randn(20, 6)
    w, l = torch.tensor([0, 0, 1, 5, 5]), torch.tensor([1, 2, 2, 0, 7])
    ours, naive = score_pairs(head, X, w, l), score_pairs_naive(head, X, w, l)
    assert torch.allclose(ours[0], naive[0]) and torch.allclose(ours[1], naive[1])


def test_head_runs_once_on_distinct_images():
    head = ScoreHead(HeadConfig(input_dim=4))
    seen = []
    head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    score_pairs(head, torch.randn(10, 4), torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([1, 2, 3, 2, 3, 3]))
    assert seen == [4]


def test_dataset_counts_and_pairs(dataset):
    s = dataset.summary()
    assert s["splits"]["train"]["windows"] == 160 and s["splits"]["validation"]["windows"] == 20
    assert s["dropped"] == {}
    train = dataset.splits["train"]
    assert train.n_pairs > 0 and np.all(np.diff(train.pair_group) >= 0)
    assert train.clicked.sum() == train.n_windows


def test_training_beats_chance_and_is_reproducible(dataset):
    config = TrainConfig(**FAST, loss="focal")
    first = train_head(config, dataset, progress=False)
    second = train_head(config, dataset, progress=False)
    assert first.history == second.history
    assert first.best["ca"] > 0.7 and first.best["opa"] > 0.7
    best = max(first.history, key=lambda h: (h["val_ca"], h["val_opa"]))
    assert first.best_epoch == best["epoch"]
    # the returned head is the best epoch's, not the last one's
    from training.metrics import click_accuracy
    from training.train import score_rows
    val = dataset.splits["validation"]
    scores = score_rows(first.head, torch.from_numpy(dataset.embeddings.matrix), val.row)
    assert click_accuracy(scores, val.clicked, val.group) == first.best["ca"]
    other = train_head(dataclasses.replace(config, seed=1), dataset, progress=False)
    assert other.history != first.history


def test_cosine_schedule_ends_at_eta_min(dataset):
    result = train_head(TrainConfig(epochs=3, eta_min=0.0), dataset, progress=False)
    assert result.history[0]["lr"] < 1e-3 and result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_grid_reports_every_combination(dataset):
    config = TrainConfig(epochs=2, grid_lr=[1e-4, 1e-3], grid_weight_decay=[0.0], grid_loss=["ce", "focal"])
    result, chosen, rows = grid_search(config, dataset, progress=False)
    assert len(rows) == 4 and sum(r["selected"] for r in rows) == 1
    selected = next(r for r in rows if r["selected"])
    assert max((r["val_ca"], r["val_opa"]) for r in rows) == (selected["val_ca"], selected["val_opa"])
    assert (chosen.lr, chosen.loss) == (selected["lr"], selected["loss"])


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.005, "epochs": 3, "grid_loss": ["ce"]}))
    args = build_parser().parse_args(["--windows", "w", "--labels", "l", "--embeddings", "e", "--output", "o",
                                      "--config", str(path), "--epochs", "7", "--grid-lr", "1e-3,1e-2"])
    config = config_from_args(args)
    assert (config.lr, config.epochs, config.grid_lr, config.grid_loss) == (0.005, 7, [1e-3, 1e-2], ["ce"])
    path.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ValueError, match=r"unknown settings \['learning_rate'\]"):
        config_from_args(args)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("loss: hinge\n")
    args.config = str(yaml_path)
    with pytest.raises(ValueError, match="loss 'hinge'"):
        config_from_args(args)


def test_spec_from_backbone_id():
    assert spec_from_backbone_id("handcrafted:handcrafted-v4") == "handcrafted"
    assert spec_from_backbone_id("handcrafted:handcrafted-v4+raw") == "handcrafted"
    assert spec_from_backbone_id("hf:openai/clip-vit-base-patch16@abc123") == "hf:openai/clip-vit-base-patch16"


def _train_cli(world, out, *extra):
    return run(["--windows", world["windows"], "--labels", world["labels"], "--embeddings", world["embeddings"],
                "--output", str(out), "--epochs", "6", "--bootstrap", "100", "--no-progress", *extra])


def test_cli_writes_run_directory_that_loads_as_a_model(world, tmp_path):
    from scoring.checkpoint import load_head, load_run
    out = tmp_path / "run-a"
    assert _train_cli(world, out) == 0
    for name in ("checkpoint.pt", "config.json", "metrics.json", "MODEL_CARD.md", "curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_id"].startswith("handcrafted-mlp:run-a@")
    assert metrics["test"]["ca"]["ci_low"] is not None and len(metrics["history"]) == 6
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "handcrafted" and config["run_name"] == "run-a"
    card = (out / "MODEL_CARD.md").read_text()
    assert metrics["model_id"] in card and "Limitations" in card and "`synthetic` (1600 rows)" in card
    # config.json is itself a valid --config
    assert _train_cli(world, tmp_path / "run-b", "--config", str(out / "config.json")) == 0
    assert json.loads((tmp_path / "run-b" / "metrics.json").read_text())["history"] == metrics["history"]
    model = load_run(str(out), device="cpu")
    assert model.model_id == metrics["model_id"] and model.input_size == 384
    images = torch.randint(0, 256, (3, 384, 384, 3), dtype=torch.uint8)
    scores = model(images)
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 1)).all())
    head, _ = load_head(str(out))
    from scoring.backbone import load_backbone
    expected = torch.sigmoid(head(load_backbone("handcrafted", device="cpu")(images)))
    assert torch.allclose(scores, expected, atol=1e-6)
    from scoring.model import load_model
    assert load_model(str(out), device="cpu").model_id == metrics["model_id"]


def test_cli_refuses_existing_output_and_wrong_backbone(world, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="exists and is not empty"):
        _train_cli(world, out)
    assert (out / "keep.txt").read_text() == "x"
    unloadable = write_world(str(tmp_path / "w2"), n_windows=30, backbone_id=f"hf:{tmp_path}/no-such-clip@0123")
    with pytest.raises(SystemExit, match="pass --backbone SPEC naming the backbone embed used"):
        _train_cli(unloadable, tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    other = write_world(str(tmp_path / "w3"), n_windows=30, backbone_id="handcrafted:handcrafted-v0")
    with pytest.raises(SystemExit, match="loads 'handcrafted:handcrafted-v4' but the embeddings come from"):
        _train_cli(other, tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


def test_empty_validation_or_train_split_is_refused(dataset):
    empty = dataclasses.replace(dataset, splits={**dataset.splits, "validation": dataclasses.replace(
        dataset.splits["validation"], serp_ids=[])})
    with pytest.raises(ValueError, match="validation split is empty"):
        train_head(TrainConfig(epochs=1), empty, progress=False)
    no_pairs = dataclasses.replace(dataset, splits={**dataset.splits, "train": dataclasses.replace(
        dataset.splits["train"], pair_w=np.zeros(0, dtype=np.int64))})
    with pytest.raises(ValueError, match="train split has no pairs"):
        train_head(TrainConfig(epochs=1), no_pairs, progress=False)


# ---------------------------------------------------------------- loading: bad inputs and drops
def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _emb(path, rows, backbone="handcrafted:handcrafted-v4", urls=None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"item_id": [r[0] for r in rows], "image_url": urls or [""] * len(rows),
                             "embedding": pa.array([r[1] for r in rows], type=pa.list_(pa.float32())),
                             "backbone_id": [r[2] if len(r) > 2 else backbone for r in rows]}), str(path))
    return str(path)


def _window(serp, items, anchor, split="train"):
    return {"serp_id": serp, "query": "q", "split": split, "anchor_item_id": anchor,
            "items": [{"item_id": i, "position": k + 1, "clicked": i == anchor} for k, i in enumerate(items)]}


def test_missing_labels_and_embeddings_are_counted_not_silently_lost(tmp_path):
    from training.data import load_dataset
    windows = _lines(tmp_path / "w.jsonl", [
        _window("s1", ["a", "b", "c"], "a"),       # c has no embedding
        _window("s2", ["a", "b"], "b"),            # no labels at all
        _window("s3", ["x", "b", "c"], "x"),       # clicked image has no embedding
        _window("s4", ["a", "d"], "a"),            # d unlabelled -> one image left
        _window("s5", ["a", "b"], "a", "validation"),
    ])
    labels = _lines(tmp_path / "l.jsonl", [
        {"serp_id": "s1", "item_id": i, "label": v} for i, v in (("a", 1.0), ("b", 0.5), ("c", 0.0))] + [
        {"serp_id": "s3", "item_id": i, "label": v} for i, v in (("x", 1.0), ("b", 0.0), ("c", 0.5))] + [
        {"serp_id": "s4", "item_id": "a", "label": 1.0},
        {"serp_id": "s5", "item_id": "a", "label": 1.0}, {"serp_id": "s5", "item_id": "b", "label": 0.0}])
    emb = _emb(tmp_path / "e.parquet", [("a", [1, 0]), ("b", [0, 1]), ("d", [1, 1])])
    data = load_dataset(windows, labels, emb)
    assert data.dropped == {"image_without_embedding": 3, "window_unlabelled": 1, "window_clicked_image_unusable": 1,
                            "image_in_dropped_window": 4, "image_unlabelled": 1, "window_too_few_images": 1}
    # every image of every window is either used or counted under one reason
    used = sum(len(s.group) for s in data.splits.values())
    assert used + sum(v for k, v in data.dropped.items() if k.startswith("image_")) == 12
    train = data.splits["train"]
    assert train.serp_ids == ["s1"] and train.item_id == ["a", "b"] and train.n_pairs == 1
    assert data.splits["validation"].serp_ids == ["s5"]


@pytest.mark.parametrize("content, message", [
    ('{"serp_id": "s"\n', r"w.jsonl:1: not valid JSON"),
    ('[1, 2]\n', r"w.jsonl:1: expected a JSON object"),
    (json.dumps({**_window("s", ["a"], "a"), "split": "dev"}) + "\n", r"split 'dev' is not one of"),
    (json.dumps({k: v for k, v in _window("s", ["a"], "a").items() if k != "anchor_item_id"}) + "\n",
     r"missing field 'anchor_item_id'"),
    (json.dumps(_window("s", ["a"], "a")) + "\n" + json.dumps(_window("s", ["b"], "b")) + "\n",
     r"serp_id 's' appears twice"),
    (json.dumps({**_window("s", ["a"], "a"), "items": [{"position": 1}]}) + "\n", r"every item needs a string item_id"),
])
def test_bad_windows_are_refused_with_the_place(tmp_path, content, message):
    from training.data import load_windows
    (tmp_path / "w.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_windows(str(tmp_path / "w.jsonl"))


def test_bad_labels_and_embeddings_are_refused(tmp_path):
    from training.data import load_embeddings, load_labels
    _lines(tmp_path / "l.jsonl", [{"serp_id": "s", "item_id": "a", "label": "high"}])
    with pytest.raises(ValueError, match=r"--labels row 0: field 'label' should be"):
        load_labels(str(tmp_path / "l.jsonl"))
    _emb(tmp_path / "mixed.parquet", [("a", [1, 0], "one"), ("b", [0, 1], "two")])
    with pytest.raises(ValueError, match=r"mixes backbones \['one', 'two'\]"):
        load_embeddings(str(tmp_path / "mixed.parquet"))
    _emb(tmp_path / "dims.parquet", [("a", [1, 0]), ("b", [0, 1, 0])])
    with pytest.raises(ValueError, match="vectors of different shapes"):
        load_embeddings(str(tmp_path / "dims.parquet"))
    _emb(tmp_path / "nan.parquet", [("a", [1, float("nan")]), ("b", [0, 1])])
    with pytest.raises(ValueError, match=r"non-finite values for items \['a'\]"):
        load_embeddings(str(tmp_path / "nan.parquet"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_embeddings(str(tmp_path / "nothing-*.parquet"))


def test_duplicate_embeddings_keep_one_row(tmp_path):
    from training.data import load_embeddings
    _emb(tmp_path / "e1.parquet", [("a", [1, 0]), ("b", [0, 1])])
    _emb(tmp_path / "e2.parquet", [("a", [1, 0])])
    emb = load_embeddings(str(tmp_path / "e*.parquet"))
    assert emb.item_ids == ["a", "b"] and emb.matrix.shape == (2, 2)


def test_a_changed_photo_never_borrows_the_old_photos_vector(tmp_path):
    """Embeddings join on (item_id, image_url): the labelled photo's vector, or the image is dropped and counted."""
    from training.data import Window, build_dataset, load_embeddings
    _emb(tmp_path / "e.parquet", [("a", [1, 0]), ("a", [0, 1]), ("b", [1, 1]), ("c", [0, 0])],
         urls=["http://x/a-old.jpg", "http://x/a-new.jpg", "http://x/b.jpg", "http://x/c-old.jpg"])
    emb = load_embeddings(str(tmp_path / "e.parquet"))
    items = ({"item_id": "a", "image_url": "http://x/a-new.jpg", "clicked": True, "position": 1},
             {"item_id": "b", "image_url": "http://x/b.jpg", "clicked": False, "position": 2},
             {"item_id": "c", "image_url": "http://x/c-new.jpg", "clicked": False, "position": 3})
    data = build_dataset([Window("s1", "q", "train", "a", items)], {"s1": {"a": 1.0, "b": 0.0, "c": 0.5}}, emb)
    train = data.splits["train"]
    assert train.item_id == ["a", "b"]
    assert emb.matrix[train.row[0]].tolist() == [0.0, 1.0]  # the new photo's vector
    assert data.dropped["image_without_embedding"] == 1  # c: only its old photo was embedded
    # A URL with stray whitespace in the window still joins (embed strips it too).
    spaced = tuple({**item, "image_url": f" {item['image_url']} "} for item in items[:2])
    data = build_dataset([Window("s2", "q", "train", "a", spaced)], {"s2": {"a": 1.0, "b": 0.0}}, emb)
    assert data.splits["train"].item_id == ["a", "b"]
