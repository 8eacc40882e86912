"""The offline judges: the handcrafted baseline scorer and the simulator's latent quality."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_common import guarded
from labeling.label import run
from scoring.model import load_model
from scoring.photos import degrade, draw_product
from tests.fixtures.chat import window, write_windows
from transforms.decode import decode_image


def cli(argv):
    """The command as the console script runs it: a usage error is one line on stderr and exit code 2."""
    return guarded("imagescore label", run, argv)


def read(out, name):
    return [json.loads(line) for line in (out / name).read_text().splitlines() if line.strip()]


def test_handcrafted_judge_prefers_the_clean_photo(tmp_path):
    rng = np.random.default_rng(7)
    clean = draw_product(rng, 384)
    paths = {"clean": tmp_path / "clean.jpg", "noisy": tmp_path / "noisy.jpg", "dark": tmp_path / "dark.jpg"}
    clean.save(paths["clean"], quality=95)
    degrade(clean, "noise", 1.0).save(paths["noisy"], quality=95)
    degrade(clean, "underexpose", 1.0).save(paths["dark"], quality=95)
    urls = [p.as_uri() for p in paths.values()]
    windows = write_windows(tmp_path / "windows-0.jsonl", [
        window("w1", urls), window("w2", [urls[0], (tmp_path / "missing.jpg").as_uri(), urls[2]])])
    out = tmp_path / "out"
    assert run(["--windows", windows, "--output", str(out), "--judge", "handcrafted",
                "--allow-image-schemes", "file", "--no-progress"]) == 0
    labels = read(out, "labels.jsonl")
    scores = {row["image_url"].rsplit("/", 1)[1]: row["score"] for row in labels}
    assert scores["clean.jpg"] > scores["noisy.jpg"] and scores["clean.jpg"] > scores["dark.jpg"]
    model = load_model("handcrafted", "cpu")
    with torch.no_grad():  # 10 x the model's score of the decoded file: the judge adds nothing of its own
        expected = {path.name: 10.0 * float(model(torch.from_numpy(
            decode_image(path.read_bytes(), model.input_size))[None])[0]) for path in paths.values()}
    assert scores == pytest.approx(expected, abs=1e-5)
    row = labels[0]
    assert row["judge"] == "handcrafted" and row["model"].startswith("handcrafted-v")
    assert row["prompt_version"] is None and "Handcrafted baseline scorer" in row["rationale"]
    assert row["label"] == 1.0
    dead = read(out, "deadletter.jsonl")
    assert [(d["id"], d["reason"]) for d in dead] == [("w2", "file_not_found")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows_in"] == 2 and summary["accounted"] and summary["usage"]["total_tokens"] == 0


def test_parquet_windows_from_collect_are_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    quality = tmp_path / "quality.jsonl"
    quality.write_text("".join(json.dumps({"item_id": f"w1-i{k}", "image_url": f"file:///x/{k}.jpg", "quality": q})
                               + "\n" for k, q in enumerate([0.9, 0.1])))
    pq.write_table(pa.Table.from_pylist([window("w1", ["file:///x/0.jpg", "file:///x/1.jpg"])]),
                   tmp_path / "windows-0.parquet")
    out = tmp_path / "out"
    assert run(["--windows", str(tmp_path / "windows-*.parquet"), "--output", str(out), "--judge", "simulated",
                "--quality", str(quality), "--no-progress"]) == 0
    assert [(r["item_id"], r["label"]) for r in read(out, "labels.jsonl")] == [("w1-i0", 1.0), ("w1-i1", 0.0)]


def test_simulated_judge_reads_latent_quality(tmp_path):
    quality = tmp_path / "quality.jsonl"
    quality.write_text("".join(json.dumps(r) + "\n" for r in [
        {"item_id": "w1-i0", "image_url": "file:///x/0.jpg", "quality": 0.8, "degradations": {}},
        {"item_id": "w1-i1", "image_url": "file:///x/1.jpg", "quality": 0.2, "degradations": {"blur": 0.7}},
        {"item_id": "w1-i2", "image_url": "file:///x/2.jpg", "quality": 0.5, "degradations": {"noise": 0.3}},
        {"item_id": "w2-i0", "image_url": "file:///x/3.jpg", "quality": 0.4, "degradations": {}},
        {"item_id": "w2-i1", "image_url": "file:///x/4.jpg", "quality": 0.4, "degradations": {}},
    ]))
    windows = write_windows(tmp_path / "windows-0.jsonl", [
        window("w1", ["file:///x/0.jpg", "file:///x/1.jpg", "file:///x/2.jpg"]),
        window("w2", ["file:///x/3.jpg", "file:///x/4.jpg"]),
        window("w3", ["file:///x/5.jpg", "file:///x/6.jpg"]),
    ])
    out = tmp_path / "out"
    assert run(["--windows", windows, "--output", str(out), "--judge", "simulated", "--quality", str(quality),
                "--no-progress"]) == 0
    labels = read(out, "labels.jsonl")
    assert [(r["item_id"], r["score"], r["label"], r["tied"]) for r in labels] == [
        ("w1-i0", 8.0, 1.0, False), ("w1-i1", 2.0, 0.0, False), ("w1-i2", 5.0, 0.5, False),
        ("w2-i0", 4.0, 0.5, True), ("w2-i1", 4.0, 0.5, True)]
    assert labels[1]["judge"] == "simulated" and "latent quality 0.200" in labels[1]["rationale"]
    assert "blur 0.7" in labels[1]["rationale"]
    assert [(d["id"], d["reason"]) for d in read(out, "deadletter.jsonl")] == [("w3", "no_quality")]


@pytest.mark.parametrize("content, message", [
    ("", "has no rows"),
    ('{"item_id": "a"}\n', "quality"),
    ('{"item_id": "a", "quality": 3}\n', "outside 0-1"),
])
def test_simulated_judge_refuses_a_bad_quality_file(tmp_path, capsys, content, message):
    quality = tmp_path / "quality.jsonl"
    quality.write_text(content)
    windows = write_windows(tmp_path / "w.jsonl", [window("w1", ["file:///x/0.jpg"])])
    assert cli(["--windows", windows, "--output", str(tmp_path / "o"), "--judge", "simulated",
                "--quality", str(quality)]) == 2
    assert message in capsys.readouterr().err


def test_simulated_judge_needs_quality(tmp_path, capsys):
    windows = write_windows(tmp_path / "w.jsonl", [window("w1", ["file:///x/0.jpg"])])
    assert cli(["--windows", windows, "--output", str(tmp_path / "o"), "--judge", "simulated"]) == 2
    assert "--quality" in capsys.readouterr().err
