"""The backfill end to end on the local runner (in-process FnApiRunner): every input record lands exactly once.

The catalog is the demo's (real HTTP on 127.0.0.1, real fetcher, guard,
decoder and model): photos must be scored, each broken or hostile item must
be dead-lettered with its own reason, the too-old item must be a counted skip.
"""
import glob
import json
from collections import Counter
from datetime import UTC, datetime

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from cli_common import UsageError
from es.guard import GUARD_SCRIPT_ID, canonical_version
from es.mapping import score_properties
from pipelines import backfill
from pipelines.catalog import LISTING_SHOTS, ImageServer, build_catalog, write_catalog
from pipelines.local_runner import runner_for
from pipelines.options import job_options
from pipelines.report import counters
from scoring.photos import LISTING_OBJECTS
from tests.fixtures.catalog_scores import expected_scores
from transforms.triton_handler import ModelUnavailable

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _jsonl(pattern):
    rows = []
    for path in sorted(glob.glob(pattern)):
        rows += [json.loads(line) for line in open(path) if line.strip()]
    return rows


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    with ImageServer(root) as server:
        entries = build_catalog(root, server.url, seed=3, products=10, now=NOW)
        write_catalog(entries, root / "items.jsonl")
        yield root, server, entries


@pytest.fixture(scope="module")
def catalog_slice(catalog):
    """A few items of the catalog for the tests that need the job's paths, not its volume: every entry that is
    not scored (one per dead-letter reason, and the skip) and 12 scored ones (products, photos, listing shots)."""
    root, server, entries = catalog
    scored = [e for e in entries if e.expect == "scored"]
    chosen = {id(e) for e in scored[::max(1, len(scored) // 12)][:12]}
    subset = [e for e in entries if e.expect != "scored" or id(e) in chosen]
    write_catalog(subset, root / "slice.jsonl")
    return root / "slice.jsonl", server, subset


@pytest.fixture(scope="module")
def catalog_run(catalog, tmp_path_factory):
    """One backfill of the whole catalog with the default model, read by every test that checks its output."""
    root, server, _ = catalog
    out = tmp_path_factory.mktemp("catalog-run") / "out"
    result = backfill.run(["--source", "files", "--input", str(root / "items.jsonl"), "--output", str(out),
                           "--allow-image-hosts", server.host_port, "--now", NOW.isoformat(), "--es-index", "catalog"])
    return out, result


def _expected(entries):
    expect = {}
    for entry in entries:
        try:
            expect[json.loads(entry.record).get("id") or entry.record] = entry.expect
        except ValueError:
            expect[entry.record] = entry.expect
    return expect


def _check_every_record_lands_once(entries, out, dead_dir, result):
    scores = _jsonl(f"{out}/scores*.jsonl")
    dead = _jsonl(f"{dead_dir}/deadletter*.jsonl")
    expected = expected_scores(entries)
    assert sorted(s["id"] for s in scores) == sorted(expected)
    assert {s["id"]: s["image_score"] for s in scores} == pytest.approx(expected, abs=1e-6)
    assert {s["image_score_model"] for s in scores} == {"handcrafted-v4"}
    expected_dead = Counter(e.expect for e in entries if e.expect not in ("scored", "skipped"))
    assert Counter(d["reason"] for d in dead) == expected_dead
    # Each dead letter keeps the original payload, byte for byte.
    records = {e.record for e in entries}
    assert all(d["payload"] in records for d in dead)
    skipped = counters(result).get("skipped_outside_window", 0)
    assert skipped == sum(e.expect == "skipped" for e in entries)
    assert len(scores) + len(dead) + skipped == len(entries)
    return scores, dead


def test_files_to_output_every_record_lands_once(catalog, catalog_run):
    _, _, entries = catalog
    out, result = catalog_run
    scores, dead = _check_every_record_lands_once(entries, out, out / "deadletter", result)
    by_id = {d["id"]: d for d in dead}
    assert by_id["hostile-metadata"]["stage"] == "fetch" and "169.254.169.254" in by_id["hostile-metadata"]["error"]
    assert by_id["hostile-bomb"]["stage"] == "decode"
    # The bulk file is valid _bulk NDJSON for the same scores.
    lines = [json.loads(line) for path in glob.glob(f"{out}/bulk*.ndjson") for line in open(path) if line.strip()]
    headers, docs = lines[0::2], lines[1::2]
    assert {h["update"]["_id"] for h in headers} == {s["id"] for s in scores}
    assert all(h["update"]["_index"] == "catalog" for h in headers)
    # Guarded score-mode updates: the same stored script as the writer, no upsert.
    assert all(d["script"]["id"] == GUARD_SCRIPT_ID and "upsert" not in d for d in docs)
    by_id = {s["id"]: s for s in scores}
    for header, doc in zip(headers, docs):
        params, record = doc["script"]["params"], by_id[header["update"]["_id"]]
        assert params["score"] is True and params["version"] == canonical_version(record["updated_at"])
        assert set(params["fields"]) == set(score_properties()) - {"deleted"}
    assert all(set(s) == {"id", "updated_at", "image_score", "image_score_model", "image_scored_at",
                          "image_score_image_url", "image_provenance", "image_provenance_detail"} for s in scores)
    c = counters(result)
    assert c["items_read"] == len(entries)


def test_clean_photos_outscore_their_degraded_copies(catalog_run):
    out, _ = catalog_run
    scores = {s["id"]: s["image_score"] for s in _jsonl(f"{out}/scores*.jsonl")}
    for name in ("astronaut", "coffee", "chelsea"):
        clean = scores[f"photo-{name}-clean"]
        for kind in ("blur", "noise", "jpeg", "underexpose", "overexpose", "lowres"):
            assert scores[f"photo-{name}-{kind}-1.0"] < clean, (name, kind)
    # Listing shots of real objects: the clean, large, centred studio shot outscores the seller's mistakes.
    wrong = [(name, shot) for name in LISTING_OBJECTS for shot in LISTING_SHOTS if shot != "studio"
             and not scores[f"listing-{name}-studio"] > scores[f"listing-{name}-{shot}"]]
    assert len(wrong) <= 0.15 * len(LISTING_OBJECTS) * (len(LISTING_SHOTS) - 1), wrong


def test_multi_processing_runner_pickles_every_stage(catalog_slice, tmp_path):
    """Two worker processes pickle every DoFn and model handler, the way Dataflow does; the slice takes every
    path (each dead-letter reason, the skip, scoring)."""
    items, server, entries = catalog_slice
    out = tmp_path / "out"
    result = backfill.run(["--source", "files", "--input", str(items), "--output", str(out),
                           "--allow-image-hosts", server.host_port, "--now", NOW.isoformat(),
                           "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    _check_every_record_lands_once(entries, out, out / "deadletter", result)


def test_loopback_images_are_refused_without_the_allow_list(catalog, tmp_path):
    root, server, entries = catalog
    out = tmp_path / "out"
    backfill.run(["--source", "files", "--input", str(root / "items.jsonl"), "--output", str(out), "--now", NOW.isoformat()])
    assert _jsonl(f"{out}/scores*.jsonl") == []
    dead = _jsonl(f"{out}/deadletter/deadletter*.jsonl")
    served = [d for d in dead if d["id"] and d["id"].startswith(("prod-", "photo-"))]
    assert served and all(d["reason"] == "blocked_address" for d in served)


@pytest.mark.parametrize("argv, message", [
    (["--source", "files"], "--input"),
    (["--source", "files", "--input", "x.jsonl", "--es-url", "http://127.0.0.1:1"], "--deadletter"),
    (["--source", "files", "--input", "x.jsonl"], "--es-url"),
    (["--source", "files", "--input", "x.jsonl", "--output", "/tmp/x", "--now", "yesterday"], "--now"),
    (["--source", "files", "--input", "x.jsonl", "--output", "/tmp/x", "--es-pit-keep-alive", "10"], "keep-alive"),
])
def test_refuses_to_start_when_records_could_be_lost(argv, message, monkeypatch, capsys):
    monkeypatch.delenv("ES_URL", raising=False)
    with pytest.raises(SystemExit) as info:
        backfill.run(argv)
    assert message in str(info.value)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UsageError, match="--model"):
        backfill.run(["--source", "files", "--input", "x.jsonl", "--output", "/tmp/x", "--model", "no-such-model"])


def test_trained_run_directory_scores_through_the_same_interface(catalog_slice, tmp_path):
    """``--model RUN_DIR`` loads backbone + head as one uint8 model; its id is on every score."""
    from scoring.model import model_info
    from tests.fixtures.training import write_world
    from training.train import run as train

    world = write_world(str(tmp_path / "world"), n_windows=60)
    run_dir = tmp_path / "run"
    assert train(["--windows", world["windows"], "--labels", world["labels"], "--embeddings", world["embeddings"],
                  "--output", str(run_dir), "--epochs", "2", "--bootstrap", "10", "--no-progress"]) == 0
    model_id, input_size = model_info(str(run_dir))
    assert model_id.startswith("handcrafted-mlp:run@") and input_size == 384

    items, server, entries = catalog_slice
    out = tmp_path / "out"
    backfill.run(["--source", "files", "--input", str(items), "--output", str(out),
                  "--model", str(run_dir), "--allow-image-hosts", server.host_port, "--now", NOW.isoformat()])
    scores = _jsonl(f"{out}/scores*.jsonl")
    assert len(scores) == sum(e.expect == "scored" for e in entries)
    assert {s["image_score_model"] for s in scores} == {model_id}
    assert {s["id"]: s["image_score"] for s in scores} == pytest.approx(
        expected_scores(entries, str(run_dir)), abs=1e-6)


def test_triton_model_gives_the_local_scores(catalog_slice, catalog_run, tmp_path, triton_server):
    """``--model triton://HOST:PORT/NAME``: the same records, the same scores, the same model id as the local
    model's run (``catalog_run``)."""
    items, server, entries = catalog_slice
    out = tmp_path / "triton"
    backfill.run(["--source", "files", "--input", str(items), "--output", str(out),
                  "--model", triton_server.spec(), "--allow-image-hosts", server.host_port, "--now", NOW.isoformat()])
    in_slice = {json.loads(e.record)["id"] for e in entries if e.expect == "scored"}
    scores = {name: {s["id"]: (s["image_score"], s["image_score_model"]) for s in _jsonl(f"{path}/scores*.jsonl")}
              for name, path in (("local", catalog_run[0]), ("triton", out))}
    scores["local"] = {item_id: scored for item_id, scored in scores["local"].items() if item_id in in_slice}
    assert scores["triton"].keys() == scores["local"].keys() and len(scores["local"]) > 10
    for item_id, (score, model_id) in scores["local"].items():
        assert scores["triton"][item_id][1] == model_id
        assert abs(scores["triton"][item_id][0] - score) <= 1e-5


def test_a_line_in_another_encoding_is_a_dead_letter_not_a_failed_job(tmp_path):
    items = tmp_path / "items.jsonl"
    good = {"id": "ok", "image_urls": ["file:///etc/passwd"], "created_at": "2026-11-19T00:00:00Z"}
    items.write_bytes(b'{"id": "latin", "title": "caf\xe9", "image_urls": ["https://x/a.jpg"], '
                      b'"created_at": "2026-11-19T00:00:00Z"}\n' + json.dumps(good).encode() + b"\n")
    out = tmp_path / "out"
    result = backfill.run(["--source", "files", "--input", str(items), "--output", str(out),
                           "--now", "2026-11-20T00:00:00"])  # a naive --now is taken as UTC
    dead = sorted(((d["id"] or ""), d["reason"]) for d in _jsonl(f"{out}/deadletter/deadletter*.jsonl"))
    assert dead == [("", "bad_encoding"), ("ok", "blocked_scheme")]
    assert counters(result)["deadlettered"] == 2


@pytest.mark.parametrize("argv, shipped", [
    (["--runner", "DataflowRunner"], True),
    (["--runner", "DataflowRunner", "--sdk_container_image", "r/imagescore:1"], False),  # the image has the code
    (["--runner", "DataflowRunner", "--setup_file", "/elsewhere/setup.py"], False),
    ([], False),
])
def test_setup_py_is_shipped_only_to_dataflow_workers_without_an_image(argv, shipped):
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    from pipelines.report import SETUP_PY, ship_packages
    opts = PipelineOptions(argv)
    ship_packages(opts)
    assert (opts.view_as(SetupOptions).setup_file == SETUP_PY) is shipped


class _NoRedHandler(ModelHandler):
    """Scores an image by its brightness, one image per batch; a red image makes the batch raise,
    a blue one as a Triton server that stayed down does."""

    def load_model(self):
        return None

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": 1}

    def run_inference(self, batch, model, inference_args=None):
        for image in batch:
            red, green, blue = image.reshape(-1, 3).mean(axis=0)
            if red > 200 and max(green, blue) < 50:
                raise ValueError("this model cannot score red images")
            if blue > 200 and max(red, green) < 50:
                raise ModelUnavailable("Triton stayed unavailable for 300 s")
        return [PredictionResult(image, float(image.mean()) / 255, "no-red-v1") for image in batch]


def test_a_model_error_dead_letters_its_batch_and_the_other_items_are_scored(tmp_path):
    colours = {"grey": (128, 128, 128), "white": (250, 250, 250), "red": (255, 0, 0), "blue": (0, 0, 255)}
    lines = {}
    for name, colour in colours.items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(path)
        lines[name] = json.dumps({"id": name, "image_urls": [f"file://{path}"], "created_at": "2026-11-19T00:00:00Z"})
    items = tmp_path / "items.jsonl"
    items.write_text("".join(line + "\n" for line in lines.values()))
    out = tmp_path / "out"
    opts = job_options(["--source", "files", "--input", str(items), "--output", str(out),
                                 "--allow-image-schemes", "file", "--now", NOW.isoformat()])
    pipeline = beam.Pipeline(runner=runner_for(opts), options=opts)
    backfill.build(pipeline, opts, handler=_NoRedHandler())
    result = pipeline.run()
    result.wait_until_finish()

    scores = {s["id"]: s for s in _jsonl(f"{out}/scores*.jsonl")}
    assert sorted(scores) == ["grey", "white"]
    assert scores["white"]["image_score"] > scores["grey"]["image_score"]
    assert {s["image_score_model"] for s in scores.values()} == {"no-red-v1"}
    assert all(s["image_scored_at"] == canonical_version(s["image_scored_at"]) for s in scores.values())
    dead = {d["id"]: d for d in _jsonl(f"{out}/deadletter/deadletter*.jsonl")}
    assert {name: (d["stage"], d["reason"]) for name, d in dead.items()} == {
        "red": ("inference", "inference_error"), "blue": ("inference", "model_unavailable")}
    assert all(d["payload"] == lines[name] for name, d in dead.items())
    assert "cannot score red" in dead["red"]["error"]
    totals = counters(result)
    assert totals["scored"] == 2 and totals["deadlettered"] == 2
    assert totals["deadletter_inference_inference_error"] == totals["deadletter_inference_model_unavailable"] == 1
