import json

import numpy as np
import pytest
import torch

from tests.fixtures.training import write_world
from training import baselines as B
from training.data import load_dataset
from training.evaluate import PAPER, evaluate_methods
from training.evaluate import run as evaluate_run
from training.samples import render_samples
from training.train import run as train_run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalworld")
    w = write_world(str(root), n_windows=200, seed=3)
    # CTR history: only some items were shown before the cutoff
    with open(root / "ctr-00000.jsonl", "w") as handle:
        for k, item in enumerate(sorted(w["quality"])[:300]):
            handle.write(json.dumps({"item_id": item, "impressions": 20, "clicks": k % 5, "ctr": (k % 5) / 20}) + "\n")
    w["ctr"] = str(root / "ctr-*.jsonl")
    runs = []
    for loss in ("ce", "focal"):
        out = root / f"run-{loss}"
        train_run(["--windows", w["windows"], "--labels", w["labels"], "--embeddings", w["embeddings"],
                   "--output", str(out), "--loss", loss, "--epochs", "6", "--bootstrap", "50", "--no-progress"])
        runs.append(str(out))
    w["runs"] = runs
    w["root"] = root
    return w


@pytest.fixture(scope="module")
def dataset(world):
    return load_dataset(world["windows"], world["labels"], world["embeddings"])


def test_table_has_every_method_with_ci_pairs_and_ties(world, dataset):
    rows, scores = evaluate_methods(dataset, runs=world["runs"], ctr=world["ctr"], clip_backbone=None,
                                    n_boot=300)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["Random", "CTR Highest", "CLIP Score", "Image Score (CE)", "Image Score (FL)"]
    assert "no text tower" in by["CLIP Score"]["unavailable"]
    rnd = by["Random"]
    assert rnd["ca"]["ci_low"] < 0.5 < rnd["ca"]["ci_high"] and rnd["opa"]["tie_rate"] == 0
    for name in ("Image Score (CE)", "Image Score (FL)"):
        assert by[name]["ca"]["ci_low"] > 0.5 and by[name]["opa"]["accuracy"] > 0.7
        assert (by[name]["paper_opa"], by[name]["paper_ca"]) == PAPER[name]
    ctr = by["CTR Highest"]["opa"]
    assert ctr["ties"] > 0 and ctr["pairs"] == rnd["opa"]["pairs"]


def test_cli_prints_and_writes_table_and_samples(world, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_run(["--windows", world["windows"], "--labels", world["labels"], "--embeddings",
                         world["embeddings"], "--runs", *world["runs"], "--ctr", world["ctr"],
                         "--bootstrap", "100", "--output", str(out), "--samples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| Image Score (FL) |" in printed and "proprietary" in printed
    assert "backbone `handcrafted:handcrafted-v4`" in printed
    assert "67.75" in printed and "44.40" in printed
    saved = json.loads((out / "evaluation.json").read_text())
    assert [m["method"] for m in saved["methods"]][0] == "Random"
    seen = saved["images_seen_in_training"]
    assert 0 < seen["seen"] <= seen["distinct_images"]  # the synthetic world reuses items across splits
    assert f"{seen['seen']} of {seen['distinct_images']} distinct images of this split" in printed
    page = (out / "samples.html").read_text()
    assert page.count("<section>") == 3 and "#e4002b" in page


def test_ctr_highest_on_a_split_with_known_counts(tmp_path):
    """Two test SERPs whose CTR history is known: every score, OPA and CA are worked out by hand.

    Global CTR = 40 clicks / 350 impressions = 4/35; with the prior worth 10 impressions each item scores
    (clicks + 8/7) / (impressions + 10), and the unseen e and f both score 4/35 (a tie, counted wrong).
      SERP 1 (labels a 1 > b 0.5 > c 0, a clicked): a 0.192 > c 0.101 > b 0.056
        OPA: (a,b) right, (a,c) right, (b,c) wrong;   CA: (a,b) right, (a,c) right
      SERP 2 (labels e 1 > f 0.5 > d 0, d clicked): e = f 0.114 > d 0.102
        OPA: (e,d) right, (f,d) right, (e,f) tied;    CA: (d,e) wrong, (d,f) wrong
    So OPA = 4/6 with 1 tie and CA = 2/4 with none. A constant scorer gets 0/6, the inverted one 1/6,
    and one that sees every item as unseen 0/6.
    """
    from training.data import Embeddings, Window, build_dataset

    history = {"a": (100, 20), "b": (100, 5), "c": (100, 10), "d": (50, 5), "elsewhere": (0, 0)}
    with open(tmp_path / "ctr-00000.jsonl", "w") as handle:
        for item, (shown, clicks) in history.items():
            handle.write(json.dumps({"item_id": item, "impressions": shown, "clicks": clicks}) + "\n")
    windows = [Window("s1", "bag", "test", "a", tuple({"item_id": i, "image_url": f"u/{i}", "clicked": i == "a"}
                                                     for i in "abc")),
               Window("s2", "shoe", "test", "d", tuple({"item_id": i, "image_url": f"u/{i}", "clicked": i == "d"}
                                                      for i in "def"))]
    labels = {"s1": {"a": 1.0, "b": 0.5, "c": 0.0}, "s2": {"d": 0.0, "e": 1.0, "f": 0.5}}
    ids = list("abcdef")
    embeddings = Embeddings(ids, [f"u/{i}" for i in ids], np.zeros((6, 2), dtype=np.float32),
                            "handcrafted:handcrafted-v1")
    data = build_dataset(windows, labels, embeddings)

    rows, scores = evaluate_methods(data, runs=[], ctr=str(tmp_path / "ctr-*.jsonl"), clip_backbone=None,
                                    n_boot=0)
    prior = 40 / 350
    expected = [(c + 10 * prior) / (s + 10) for s, c in (history[i] for i in "abcd")] + [prior, prior]
    assert data.splits["test"].item_id == ids
    assert scores["CTR Highest"] == pytest.approx(expected)
    ctr = next(r for r in rows if r["method"] == "CTR Highest")
    assert {k: ctr["opa"][k] for k in ("pairs", "correct", "ties", "groups")} == \
        {"pairs": 6, "correct": 4, "ties": 1, "groups": 2}
    assert ctr["opa"]["accuracy"] == pytest.approx(4 / 6)
    assert {k: ctr["ca"][k] for k in ("pairs", "correct", "ties", "groups")} == \
        {"pairs": 4, "correct": 2, "ties": 0, "groups": 2}
    assert ctr["ca"]["accuracy"] == pytest.approx(0.5)


def test_ctr_smoothing_and_prior():
    table = B.CtrTable({"a": (100, 10), "b": (1, 1)}, prior=0.05)
    assert table.smoothed("a", 10) == pytest.approx((10 + 0.5) / 110)
    assert table.smoothed("b", 10) == pytest.approx((1 + 0.5) / 11)
    assert table.smoothed("unseen", 10) == pytest.approx(0.05)
    assert table.smoothed("a", 10) < table.smoothed("b", 10) < 1.0


def test_ctr_file_is_summed_across_shards_and_bad_rows_refused(tmp_path):
    (tmp_path / "ctr-0.jsonl").write_text(json.dumps({"item_id": "a", "impressions": 4, "clicks": 1}) + "\n")
    (tmp_path / "ctr-1.jsonl").write_text(json.dumps({"item_id": "a", "impressions": 6, "clicks": 1}) + "\n")
    table = B.load_ctr(str(tmp_path / "ctr-*.jsonl"))
    assert table.counts == {"a": (10, 2)} and table.prior == pytest.approx(0.2)
    (tmp_path / "ctr-2.jsonl").write_text(json.dumps({"item_id": "b", "impressions": 1, "clicks": 3}) + "\n")
    with pytest.raises(ValueError, match="clicks <= impressions"):
        B.load_ctr(str(tmp_path / "ctr-*.jsonl"))


class FakeTextBackbone:
    backbone_id = "fake-clip"

    def encode_text(self, texts):
        return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 2.0] for t in texts])


def test_clip_score_is_query_image_cosine(dataset):
    import dataclasses
    part = dataset.splits["test"]
    emb = dataclasses.replace(dataset.embeddings, backbone_id="fake-clip",
                              matrix=np.zeros((len(dataset.embeddings.item_ids), 2), dtype=np.float32))
    emb.matrix[part.row[0]] = [3.0, 4.0]
    emb.matrix[part.row[1]] = [0.0, -1.0]
    part = dataclasses.replace(part, queries=["red bag"] + ["blue"] * (len(part.queries) - 1))
    scores = B.clip_scores(part, emb, FakeTextBackbone())
    assert part.group[0] == part.group[1] == 0
    assert scores[0] == pytest.approx(0.6) and scores[1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="text backbone is 'fake-clip'"):
        B.clip_scores(part, dataset.embeddings, FakeTextBackbone())


def test_run_on_another_backbone_is_refused(world, tmp_path):
    other = write_world(str(tmp_path / "other"), n_windows=20, backbone_id="handcrafted:handcrafted-v0")
    data = load_dataset(other["windows"], other["labels"], other["embeddings"])
    with pytest.raises(ValueError, match="trained on backbone 'handcrafted:handcrafted-v4'"):
        evaluate_methods(data, runs=world["runs"][:1], ctr=None, clip_backbone=None, n_boot=10)


def test_samples_page_orders_by_score_and_escapes(dataset):
    import dataclasses
    part = dataclasses.replace(dataset.splits["test"], queries=["<script>x</script>"] * dataset.splits["test"].n_windows)
    scores = np.linspace(0.0, 1.0, len(part.group))
    page = render_samples(part, scores, method="Image Score (FL)", n=1, seed=0)
    assert "<script>x" not in page and "&lt;script&gt;" in page
    section = page.split("<section>")[1]
    original, ranked = section.split('class="row"')[1:3]
    ranked_scores = [float(s.split("score ")[1].split(" ")[0].split("<")[0]) for s in ranked.split("<figcaption>")[1:]]
    assert ranked_scores == sorted(ranked_scores, reverse=True)
    assert "clicked" in original and original.count("#e4002b") == 1


def test_samples_page_shows_image_scores_not_raw_head_outputs(dataset):
    part = dataset.splits["test"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render_samples(part, np.full(len(part.group), -1.156), method="Image Score (FL)", n=1)


def test_samples_page_embeds_local_images(dataset, tmp_path):
    import dataclasses
    img = tmp_path / "x.jpg"
    img.write_bytes(b"\xff\xd8fakejpeg")
    part = dataset.splits["test"]
    part = dataclasses.replace(part, image_url=[img.as_uri()] * len(part.group))
    page = render_samples(part, np.zeros(len(part.group)), method="m", n=1, embed_images=True)
    assert "data:image/jpeg;base64," in page and img.as_uri() not in page


def test_clip_score_with_a_real_text_tower(tmp_path, tiny_clip_dir):
    from scoring.backbone import load_backbone
    backbone = load_backbone(f"hf:{tiny_clip_dir}", device="cpu")
    w = write_world(str(tmp_path), n_windows=40, dim=backbone.embed_dim, backbone_id=backbone.backbone_id)
    data = load_dataset(w["windows"], w["labels"], w["embeddings"])
    rows, scores = evaluate_methods(data, runs=[], ctr=None, clip_backbone=f"hf:{tiny_clip_dir}", n_boot=50)
    clip = next(r for r in rows if r["method"] == "CLIP Score")
    assert "unavailable" not in clip and clip["opa"]["pairs"] > 0
    part = data.splits["test"]
    text = torch.nn.functional.normalize(backbone.encode_text([part.queries[0]]), dim=-1)[0].numpy()
    image = data.embeddings.matrix[part.row[0]]
    assert scores["CLIP Score"][0] == pytest.approx(float(image @ text / np.linalg.norm(image)), abs=1e-5)


def test_samples_page_inlines_only_local_image_files(tmp_path):
    from training.samples import _src
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not inline")
    assert _src(photo.as_uri(), embed=True).startswith("data:image/jpeg;base64,")
    assert _src(str(photo), embed=True) == str(photo)  # a bare path stays a link
    assert _src(secret.as_uri(), embed=True) == secret.as_uri()  # not an image: never read
    assert _src(photo.as_uri(), embed=False) == photo.as_uri()
