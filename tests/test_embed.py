"""The embeddings job end to end on the local runner (in-process FnApiRunner), with the tiny CLIP and local file:// images."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines import embed
from pipelines.report import counters
from scoring.backbone import load_backbone
from tests.fixtures.tiny_clip import TINY_PROJECTION
from transforms.decode import decode_image
from transforms.embed_handler import BackboneModelHandler

pytestmark = pytest.mark.timeout(300)


def _write_images(directory, n: int) -> dict[str, str]:
    """n real JPEGs of different content; returns item_id -> file:// URL."""
    os.makedirs(directory, exist_ok=True)
    urls = {}
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 256, size=(3,), dtype=np.uint8)
        pixels = np.clip(base + rng.normal(0, 40, size=(48 + 8 * i, 64, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(directory, f"item{i}.jpg")
        Image.fromarray(pixels).save(path, quality=90)
        urls[f"item{i}"] = f"file://{path}"
    return urls


def _windows(path, urls: dict[str, str], extra_items: list[dict] = ()) -> str:
    """Two collect windows sharing item0 (a duplicate the job must merge)."""
    ids = sorted(urls)
    windows = [
        {"serp_id": "s1", "query": "bag", "platform": "web", "ts": "2024-05-01T10:00:00Z", "split": "train",
         "anchor_item_id": ids[0],
         "items": [{"item_id": i, "position": p, "price": 10.0, "image_url": urls[i], "clicked": p == 0}
                   for p, i in enumerate(ids[:3])] + list(extra_items)},
        {"serp_id": "s2", "query": "shoes", "platform": "ios", "ts": "2024-05-02T10:00:00Z", "split": "test",
         "anchor_item_id": ids[0],
         "items": [{"item_id": i, "position": p, "price": 12.0, "image_url": urls[i], "clicked": p == 0}
                   for p, i in enumerate([ids[0]] + ids[3:])]},
    ]
    with open(path, "w", encoding="utf-8") as f:
        for window in windows:
            f.write(json.dumps(window) + "\n")
    return str(path)


def _run(argv: list[str]):
    result = embed.run(argv)  # no --runner: the job picks the local runner
    return embed.summarize(counters(result))


def _rows(output) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(output, "embeddings-*.parquet"))):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def _dead(output) -> list[dict]:
    records = []
    for path in glob.glob(os.path.join(output, "deadletter-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def test_embed_windows_dedupes_dead_letters_and_resumes(tmp_path, tiny_clip_dir):
    urls = _write_images(tmp_path / "images", 5)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    extra = [{"item_id": "broken", "position": 3, "price": 9.0, "image_url": f"file://{broken}", "clicked": False},
             {"item_id": "gone", "position": 4, "price": 9.0, "image_url": f"file://{tmp_path}/nope.jpg",
              "clicked": False},
             {"position": 5, "price": 9.0, "image_url": urls["item1"], "clicked": False}]  # no item_id
    windows = _windows(tmp_path / "windows-00000.jsonl", urls, extra)
    out = str(tmp_path / "emb")
    argv = ["--windows", str(tmp_path / "windows-*.jsonl"), "--backbone", f"hf:{tiny_clip_dir}", "--output", out,
            "--allow-image-schemes", "file", "--min-batch-size", "2", "--max-batch-size", "4"]

    summary = _run(argv)

    backbone = load_backbone(f"hf:{tiny_clip_dir}", device="cpu")
    rows = _rows(out)
    assert sorted(r["item_id"] for r in rows) == sorted(urls)  # item0 once, although in both windows
    assert {r["backbone_id"] for r in rows} == {backbone.backbone_id}
    assert all(len(r["embedding"]) == TINY_PROJECTION for r in rows)
    schema = pq.read_schema(glob.glob(os.path.join(out, "embeddings-*.parquet"))[0])
    assert schema.field("embedding").type == pa.list_(pa.float32())
    # the stored vectors are the backbone's embedding of the decoded image
    for row in rows:
        with open(urls[row["item_id"]].removeprefix("file://"), "rb") as f:
            image = decode_image(f.read(), backbone.input_size)
        expected = backbone(torch.from_numpy(image)[None])[0].numpy()
        assert row["image_url"] == urls[row["item_id"]]
        assert np.allclose(row["embedding"], expected, atol=1e-5)

    dead = _dead(out)
    by_id = {d["id"]: d for d in dead}
    assert by_id["broken"]["stage"] == "decode" and by_id["broken"]["reason"] == "truncated_image"
    assert by_id["gone"]["stage"] == "fetch" and by_id["gone"]["reason"] == "file_not_found"
    assert any(d["stage"] == "read" and d["reason"] == "missing_id" for d in dead)
    assert json.loads(by_id["broken"]["payload"])["serp_id"] == "s1"  # replayable: the original entry
    # nothing lost: every unique image is embedded, skipped or dead-lettered
    assert summary["unique_images"] == 7 and summary["duplicates_merged"] == 1
    assert summary["unique_images"] == summary["embedded"] + summary["skipped_already_embedded"] + 2
    assert summary["dead_letters"] == 3 and summary["entries_read"] == 9

    # second run: everything embedded is skipped, nothing is rewritten, the broken ones are retried
    again = _run(argv)
    assert again["skipped_already_embedded"] == 5 and again["embedded"] == 0
    assert again["unique_images"] == again["embedded"] + again["skipped_already_embedded"] + 2
    assert sorted(r["item_id"] for r in _rows(out)) == sorted(urls)

    # a new image in a later window is the only one embedded on the next run
    more = _write_images(tmp_path / "more", 6)
    with open(windows, "a", encoding="utf-8") as f:
        f.write(json.dumps({"serp_id": "s3", "ts": "2024-05-03T00:00:00Z",
                            "items": [{"item_id": "item9", "image_url": more["item5"]}]}) + "\n")
    third = _run(argv)
    assert third["embedded"] == 1 and third["skipped_already_embedded"] == 5
    assert sorted(r["item_id"] for r in _rows(out)) == sorted(list(urls) + ["item9"])


def test_other_backbone_is_not_skipped(tmp_path, tiny_clip_dir):
    """Rows of another backbone (here: raw instead of L2) do not count as done."""
    urls = _write_images(tmp_path / "images", 2)
    listing = tmp_path / "images.jsonl"
    listing.write_text("".join(json.dumps({"item_id": k, "image_url": v}) + "\n" for k, v in urls.items())
                       + "not json\n")
    out = str(tmp_path / "emb")
    base = ["--input", str(listing), "--backbone", tiny_clip_dir, "--output", out, "--allow-image-schemes", "file"]
    first = _run(base)
    assert first["embedded"] == 2 and first["dead_letters"] == 1
    assert [d["reason"] for d in _dead(out)] == ["malformed_json"] * 1
    second = _run(base + ["--no-normalize"])
    assert second["embedded"] == 2 and second["skipped_already_embedded"] == 0
    ids = {r["backbone_id"] for r in _rows(out)}
    assert len(ids) == 2 and any(i.endswith("+raw") for i in ids)


def test_file_scheme_needs_to_be_allowed(tmp_path, tiny_clip_dir):
    urls = _write_images(tmp_path / "images", 1)
    listing = tmp_path / "images.jsonl"
    listing.write_text(json.dumps({"item_id": "item0", "image_url": urls["item0"]}) + "\n")
    out = str(tmp_path / "emb")
    summary = _run(["--input", str(listing), "--backbone", tiny_clip_dir, "--output", out])
    assert summary["embedded"] == 0 and summary["dead_letters"] == 1
    assert _dead(out)[0]["reason"] == "blocked_scheme"


def test_flags_are_checked(tmp_path, tiny_clip_dir):
    with pytest.raises(SystemExit, match="exactly one of --windows"):
        embed.run(["--backbone", tiny_clip_dir, "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="--backbone is required"):
        embed.run(["--input", "x.jsonl", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown backbone spec"):
        embed.run(["--input", "x.jsonl", "--output", str(tmp_path), "--backbone", "vgg"])


def test_handler_batches_and_ids(tiny_clip_dir):
    handler = BackboneModelHandler(tiny_clip_dir, device="cpu", min_batch_size=2, max_batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 8}
    model = handler.load_model()
    images = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    results = list(handler.run_inference(images, model))
    assert [r.model_id for r in results] == [model.backbone_id] * 3
    assert all(r.inference.shape == (TINY_PROJECTION,) and r.inference.dtype == np.float32 for r in results)
    assert handler.get_num_bytes(images) == 3 * 32 * 32 * 3
