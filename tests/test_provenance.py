"""The provenance signal: what an image's own bytes say about whether AI made it.

Every fixture is built here (tests/fixtures/provenance_images.py): XMP, PNG text chunks, EXIF,
C2PA manifests signed with a throwaway test CA, and hostile metadata.
"""
from __future__ import annotations

import glob
import io
import json
from datetime import UTC, datetime

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from es.guard import SCORE, guard_params, score_fields
from es.mapping import AI_PROVENANCE_VALUES, PROVENANCE_DETAIL_FIELD, PROVENANCE_FIELD, score_properties
from pipelines import backfill
from pipelines.local_runner import runner_for
from pipelines.options import job_options
from tests.fixtures import provenance_images as fx
from tests.fixtures.image_server import ImageServer
from transforms.analyzer import STORED_FIELDS, _LookupStoredFn
from transforms.provenance import (
    Provenance,
    ProvenanceLimits,
    generator_names,
    named_generator,
    read_provenance,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def trusted() -> ProvenanceLimits:
    return ProvenanceLimits(trust_anchors=fx.c2pa_signing()[2])


@pytest.fixture(scope="module")
def signed_ai() -> bytes:
    return fx.c2pa_jpeg("trainedAlgorithmicMedia", "Firefly test")


def test_xmp_trained_algorithmic_media_is_ai_and_digital_capture_is_not():
    assert read_provenance(fx.jpeg(fx.xmp_packet("trainedAlgorithmicMedia"))) == ("xmp_ai", "trainedAlgorithmicMedia")
    assert read_provenance(fx.jpeg(fx.xmp_packet("digitalCapture"))) == ("none", "")
    composite = fx.png(xmp=fx.xmp_packet("compositeWithTrainedAlgorithmicMedia"), compress_xmp=True)
    assert read_provenance(composite) == ("xmp_ai", "compositeWithTrainedAlgorithmicMedia")


def test_png_generator_chunks_name_their_tool():
    a1111 = fx.png({"parameters": "a red chair\nSteps: 20, Sampler: Euler a, CFG scale: 7"})
    comfy = fx.png({"prompt": json.dumps({"3": {"class_type": "KSampler"}}), "workflow": "{}"})
    assert read_provenance(a1111) == ("generator_metadata", "AUTOMATIC1111")
    assert read_provenance(comfy) == ("generator_metadata", "ComfyUI")
    assert read_provenance(fx.png({"Software": "NovelAI"})) == ("generator_metadata", "NovelAI")
    assert read_provenance(fx.png({"prompt": "not json, a caption"})) == ("none", "")


def test_exif_software_names_a_generator_but_an_editor_is_not_one():
    assert read_provenance(fx.jpeg(software="Midjourney v6")) == ("generator_metadata", "Midjourney")
    assert read_provenance(fx.jpeg(software="Adobe Photoshop 25.0 (Macintosh)")) == ("none", "")
    assert read_provenance(fx.png(xmp=fx.xmp_packet(creator_tool="ComfyUI"))) == ("generator_metadata", "ComfyUI")


def test_generator_names_are_package_data_matched_as_whole_words():
    names = generator_names()
    for name in ("Stable Diffusion", "AUTOMATIC1111", "ComfyUI", "NovelAI", "Midjourney", "DALL·E",
                 "Adobe Firefly", "Imagen"):
        assert name in names
    assert named_generator("made with dall·e 3") == "DALL·E"
    assert named_generator("ImageNet viewer") is None and named_generator("Adobe Photoshop 25.0") is None


def test_c2pa_manifest_signed_here_verifies_offline_and_classifies(trusted, signed_ai):
    import c2pa

    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
                "trust": {"trust_anchors": trusted.trust_anchors}}
    with c2pa.Reader("image/jpeg", io.BytesIO(signed_ai), context=c2pa.Context.from_dict(settings)) as reader:
        assert json.loads(reader.json())["validation_state"] == "Trusted"
    assert read_provenance(signed_ai, trusted) == ("c2pa_ai", "Firefly test")
    assert read_provenance(signed_ai) == ("c2pa_ai", "Firefly test")  # untrusted: still what it claims
    capture = fx.c2pa_jpeg("digitalCapture", "Test Camera")
    assert read_provenance(capture, trusted) == ("c2pa_capture", "Test Camera")


def test_c2pa_takes_precedence_over_xmp_and_generator_metadata(trusted):
    """A capture manifest wins over an EXIF Software that names a generator (C2PA, then XMP, then the rest)."""
    capture = fx.c2pa_jpeg("digitalCapture", "Test Camera")
    assert read_provenance(capture, trusted).value == "c2pa_capture"
    both = fx.png({"parameters": "x"}, xmp=fx.xmp_packet("trainedAlgorithmicMedia"))
    assert read_provenance(both) == ("xmp_ai", "trainedAlgorithmicMedia")


@pytest.mark.parametrize("build, wrong", [
    (lambda signed: fx.corrupt_manifest(signed), "C2PA manifest"),
    (lambda _: fx.jpeg(fx.billion_laughs_xmp()), "DTDForbidden"),
    (lambda _: fx.png(xmp=fx.xmp_packet("trainedAlgorithmicMedia") + b" " * (10 << 20)), "over 1048576"),
    (lambda _: fx.png_with_many_text_chunks(100), "over 64 PNG text chunks"),
    (lambda _: fx.png_with_zip_bomb_text(), "inflates past"),
    (lambda _: fx.jpeg(b"<x:xmpmeta><unclosed"), "XMP"),
], ids=["corrupt_manifest", "billion_laughs", "xmp_10mb", "text_chunks", "ztxt_bomb", "malformed_xmp"])
def test_hostile_metadata_is_unreadable_with_what_was_wrong(signed_ai, build, wrong):
    found = read_provenance(build(signed_ai))
    assert found.value == "unreadable" and wrong in found.detail and len(found.detail) <= 80


def test_time_cap_makes_slow_metadata_unreadable(signed_ai):
    found = read_provenance(signed_ai, ProvenanceLimits(max_seconds=0.0))
    assert found == ("unreadable", "metadata took over 0s to read")


def test_any_cut_of_the_bytes_never_raises(signed_ai):
    sources = [signed_ai, fx.png({"parameters": "x"}, xmp=fx.xmp_packet("trainedAlgorithmicMedia")),
               fx.jpeg(fx.xmp_packet("trainedAlgorithmicMedia"), software="ComfyUI")]
    for data in sources:
        for cut in range(0, len(data), max(1, len(data) // 97)):
            found = read_provenance(data[:cut])
            assert isinstance(found, Provenance) and found.value in (*AI_PROVENANCE_VALUES, "none", "unreadable", "c2pa_capture")


def test_score_fields_guard_and_mapping_carry_provenance():
    fields = score_fields(0.5, "m1", "https://x/a.jpg", NOW, provenance=Provenance("xmp_ai", "trainedAlgorithmicMedia"))
    assert fields[PROVENANCE_FIELD] == "xmp_ai" and fields[PROVENANCE_DETAIL_FIELD] == "trainedAlgorithmicMedia"
    _, params = guard_params({"id": "a", "updated_at": "2026-11-20T00:00:00Z", **fields}, SCORE)
    assert params["fields"][PROVENANCE_FIELD] == "xmp_ai"
    assert params["fields"][PROVENANCE_DETAIL_FIELD] == "trainedAlgorithmicMedia"
    old = score_fields(0.5, "m1", "https://x/a.jpg", NOW)  # a record written before the signal existed
    _, params = guard_params({"id": "a", "updated_at": "2026-11-20T00:00:00Z", **old}, SCORE)
    assert PROVENANCE_FIELD not in params["fields"]
    props = score_properties()
    assert props[PROVENANCE_FIELD] == props[PROVENANCE_DETAIL_FIELD] == {"type": "keyword"}


def test_score_mode_writes_provenance_through_the_guard(es_config, es_client, es_index):
    from es.bulk_writer import write_batch
    from tests.fixtures.es import seed_items

    seed_items(es_client, es_index, {"a": {"title": "chair", "created_at": "2025-05-01T00:00:00Z"}})
    first = {"id": "a", "updated_at": "2025-05-02T00:00:00Z",
             **score_fields(0.7, "m1", "http://img.test/a.jpg", NOW, provenance=Provenance("c2pa_ai", "Firefly"))}
    assert write_batch(es_config, es_index, [first], mode="score")["written"] == ["a"]
    doc = es_client.get(index=es_index, id="a")["_source"]
    assert (doc["title"], doc[PROVENANCE_FIELD], doc[PROVENANCE_DETAIL_FIELD]) == ("chair", "c2pa_ai", "Firefly")
    plain = {"id": "a", "updated_at": "2025-05-03T00:00:00Z",
             **score_fields(0.4, "m1", "http://img.test/a2.jpg", NOW, provenance=Provenance("none", ""))}
    assert write_batch(es_config, es_index, [plain], mode="score")["written"] == ["a"]
    doc = es_client.get(index=es_index, id="a")["_source"]
    assert (doc["image_score"], doc[PROVENANCE_FIELD], doc[PROVENANCE_DETAIL_FIELD]) == (0.4, "none", "")


def test_analyzer_reuses_provenance_with_the_score():
    assert PROVENANCE_FIELD in STORED_FIELDS and PROVENANCE_DETAIL_FIELD in STORED_FIELDS
    from transforms.messages import Update

    update = Update(id="a", version=NOW, deleted=False, image_urls=("https://x/a.jpg",), fields={},
                    payload="{}", message_id="1", publish_time=NOW)
    stored = {"a": {"image_score": 0.4, "image_score_model": "m1", "image_scored_at": "2026-11-19T00:00:00.000000Z",
                    "image_score_image_url": "https://x/a.jpg", PROVENANCE_FIELD: "c2pa_ai",
                    PROVENANCE_DETAIL_FIELD: "Firefly"}}
    fn = _LookupStoredFn(None, "items", "m1")
    fn._reused = fn._failed = type("Counter", (), {"inc": lambda *a: None})()
    fn._stored = lambda ids: stored
    [out] = list(fn.process([update]))
    assert out.value[PROVENANCE_FIELD] == "c2pa_ai" and out.value[PROVENANCE_DETAIL_FIELD] == "Firefly"


class _MeanHandler(ModelHandler):
    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(image, float(image.mean()) / 255, "mean-v1") for image in batch]


def test_backfill_over_served_fixtures_writes_each_provenance(tmp_path, signed_ai):
    images = {
        "xmp_ai": (fx.jpeg(fx.xmp_packet("trainedAlgorithmicMedia")), "image/jpeg",
                   ("xmp_ai", "trainedAlgorithmicMedia")),
        "capture": (fx.jpeg(fx.xmp_packet("digitalCapture")), "image/jpeg", ("none", "")),
        "a1111": (fx.png({"parameters": "a chair\nSteps: 20"}), "image/png", ("generator_metadata", "AUTOMATIC1111")),
        "comfy": (fx.png({"prompt": '{"3": {}}'}), "image/png", ("generator_metadata", "ComfyUI")),
        "exif_gen": (fx.jpeg(software="Midjourney v6"), "image/jpeg", ("generator_metadata", "Midjourney")),
        "exif_editor": (fx.jpeg(software="Adobe Photoshop 25.0"), "image/jpeg", ("none", "")),
        "c2pa": (signed_ai, "image/jpeg", ("c2pa_ai", "Firefly test")),
        "laughs": (fx.jpeg(fx.billion_laughs_xmp()), "image/jpeg", ("unreadable", None)),
        "big_xmp": (fx.png(xmp=b" " * (10 << 20)), "image/png", ("unreadable", None)),
        "corrupt": (fx.corrupt_manifest(signed_ai), "image/jpeg", ("unreadable", None)),
    }
    with ImageServer() as server:
        lines = []
        for name, (data, content_type, _) in images.items():
            url = server.route(f"/{name}", body=data, content_type=content_type)
            lines.append(json.dumps({"id": name, "image_urls": [url], "created_at": "2026-11-19T00:00:00Z"}))
        items = tmp_path / "items.jsonl"
        items.write_text("\n".join(lines) + "\n")
        out = tmp_path / "out"
        opts = job_options(["--source", "files", "--input", str(items), "--output", str(out),
                            "--allow-image-hosts", server.host_port, "--max-image-bytes", str(16 << 20),
                            "--now", NOW.isoformat()])
        pipeline = beam.Pipeline(runner=runner_for(opts), options=opts)
        backfill.build(pipeline, opts, handler=_MeanHandler())
        pipeline.run().wait_until_finish()
    scores = {}
    for path in glob.glob(f"{out}/scores*.jsonl"):
        scores.update({row["id"]: row for row in map(json.loads, open(path)) if row})
    assert sorted(scores) == sorted(images), glob.glob(f"{out}/deadletter/*")
    for name, (_, _, (value, detail)) in images.items():
        assert scores[name][PROVENANCE_FIELD] == value, name
        if detail is not None:
            assert scores[name][PROVENANCE_DETAIL_FIELD] == detail, name
        else:
            assert scores[name][PROVENANCE_DETAIL_FIELD], name
        assert 0.0 < scores[name]["image_score"] < 1.0  # the score is never lost to its metadata


# --- ranking: ai_factor ------------------------------------------------------------------------

def _ranking_docs():
    import numpy as np

    return {"image_score": np.array([0.5, 0.5, 0.5, np.nan], np.float32),
            PROVENANCE_FIELD: np.array(["xmp_ai", "c2pa_capture", None, "generator_metadata"], object)}


@pytest.mark.parametrize("formula", ["multiplicative", "power", "additive"])
def test_ai_factor_multiplies_only_ai_flagged_documents_in_the_mirror(formula):
    import numpy as np

    from es.boosting import Boost, search_body
    from es.function_score import search_scores

    base = {"function_score": {"query": {"match_all": {}}, "weight": 2.0, "_name": "relevance"}}
    docs = _ranking_docs()
    plain = search_scores(search_body(base, Boost(formula, 0.3)), docs)[1]
    body = search_body(base, Boost(formula, 0.3, ai_factor=0.8))
    [function] = body["query"]["bool"]["must"][0]["function_score"]["functions"]
    assert function == {"filter": {"terms": {PROVENANCE_FIELD: list(AI_PROVENANCE_VALUES)}}, "weight": 0.8}
    discounted = search_scores(body, docs)[1]
    expected = np.where([True, False, False, True], plain.astype(np.float64) * np.float32(0.8), plain)
    assert np.array_equal(discounted, expected.astype(np.float32))
    rescored = search_scores(search_body(base, Boost(formula, 0.3, ai_factor=0.8), rescore_window=10), docs)[1]
    assert rescored[0] < rescored[1] and rescored[3] < search_scores(
        search_body(base, Boost(formula, 0.3), rescore_window=10), docs)[1][3]


def test_ai_factor_of_one_leaves_the_query_unchanged_and_bad_factors_are_refused():
    from es.boosting import Boost, search_body

    assert search_body({"match_all": {}}, Boost(w=0.3)) == search_body({"match_all": {}}, Boost(w=0.3, ai_factor=1.0))
    for bad in (0, -0.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="ai_factor must be a finite number > 0"):
            Boost(ai_factor=bad)


def test_query_cli_takes_ai_factor(capsys):
    from ranking.query import run as query

    assert query(["--match", "chair", "--ai-factor", "0.8"]) == 0
    assert '"weight": 0.8' in capsys.readouterr().out


def test_rerank_eval_replays_ai_factor_from_logged_provenance(tmp_path):
    from ranking.rerank_eval import run as rerank_eval

    serps = []
    for s in range(40):
        items = [{"item_id": f"s{s}i{i}", "position": i + 1, "score": float(10 - i), "clicked": i == 1,
                  PROVENANCE_FIELD: "xmp_ai" if i == 0 else "none"} for i in range(4)]
        serps.append({"serp_id": f"s{s}", "platform": "web", "query": "q", "items": items})
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps(serp) + "\n" for serp in serps))
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"id": item["item_id"], "image_score": 0.5}) + "\n"
                              for serp in serps for item in serp["items"]))
    out = tmp_path / "out"
    assert rerank_eval(["--logs", str(logs), "--scores", str(scores), "--formula", "multiplicative", "--w", "0",
                        "--ai-factor", "0.5", "--bootstrap", "20", "--output", str(out)]) == 0
    rows = json.loads((out / "rerank.json").read_text())
    mrr = next(r for r in rows if r["platform"] == "all" and r["metric"].startswith("mrr") and r["w"] == 0)
    assert mrr["ai_factor"] == 0.5 and mrr["delta"] > 0  # the AI image at the top drops below the clicked one
    for serp in serps:
        for item in serp["items"]:
            del item[PROVENANCE_FIELD]
    logs.write_text("".join(json.dumps(serp) + "\n" for serp in serps))
    from cli_common import UsageError
    with pytest.raises(UsageError, match="needs each item's image_provenance"):
        rerank_eval(["--logs", str(logs), "--scores", str(scores), "--formula", "multiplicative", "--w", "0",
                     "--ai-factor", "0.5",
                     "--output", str(out)])


# --- reports: collect, analyze, the demo's contact sheet --------------------------------------

def _serp_line(**item_extra) -> str:
    return json.dumps({"serp_id": "s1", "query": "bag", "platform": "web", "ts": "2024-01-01T00:00:00Z", "items": [
        {"item_id": "a", "position": 1, "price": 100, "image_url": "https://x/a.jpg", "clicked": False},
        {"item_id": "b", "position": 2, "price": 100, "image_url": "https://x/b.jpg", "clicked": True,
         **item_extra}]})


def test_collect_carries_provenance_into_windows_and_refuses_a_bad_one():
    from pipelines.collect import make_window, parse_serp
    from transforms.deadletter import Rejected

    window, _ = make_window(parse_serp(_serp_line(image_provenance="xmp_ai")), min_items=1)
    by_id = {it["item_id"]: it for it in window["items"]}
    assert by_id["b"]["image_provenance"] == "xmp_ai" and "image_provenance" not in by_id["a"]
    with pytest.raises(Rejected, match="image_provenance must be a non-empty string"):
        parse_serp(_serp_line(image_provenance=3))


def test_analyze_reports_click_through_of_ai_flagged_images(tmp_path):
    from training.analyze import AI_PROVENANCE, analyze

    assert AI_PROVENANCE == AI_PROVENANCE_VALUES  # training/ keeps its own copy of es.mapping's list
    windows, labels = [], []
    for s in range(30):
        items = []
        for i, provenance in enumerate(["xmp_ai", "none", "none", None]):
            item = {"item_id": f"i{i}", "position": i + 1, "price": 10.0, "image_url": f"https://x/{s}/{i}.jpg",
                    "clicked": i == 1 + s % 2, "liked": False, "purchased": False}
            if provenance is not None:
                item["image_provenance"] = provenance
            items.append(item)
            labels.append({"serp_id": f"s{s}", "item_id": f"i{i}", "score": 9 - i, "label": 1.0 - i / 3,
                           "rationale": "a bright photo"})
        windows.append({"serp_id": f"s{s}", "platform": "web", "split": "train", "items": items})
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(w) + "\n" for w in windows))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(label) + "\n" for label in labels))
    figures = analyze([str(tmp_path / "w.jsonl")], [str(tmp_path / "l.jsonl")], str(tmp_path / "out"),
                      wordnet_dir=str(tmp_path / "no-wordnet"), permutations=10)
    provenance = figures["provenance"]
    assert provenance["items_with_provenance"] == 90 and provenance["items_without_provenance"] == 30
    assert (provenance["ai_flagged"]["items"], provenance["ai_flagged"]["clicks"]) == (30, 0)
    assert (provenance["other"]["items"], provenance["other"]["clicks"]) == (60, 30)
    assert provenance["ai_flagged"]["median_value"] == 1.0  # the judge liked them; nobody clicked them
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## AI-flagged images (image_provenance)" in report and "| ai_flagged | 30 | 0 |" in report


def test_contact_sheet_marks_ai_flagged_images(tmp_path):
    from PIL import Image

    from pipelines.demo import AI_MARK, THUMB, contact_sheet

    (tmp_path / "images").mkdir()
    catalog = {}
    for name in ("ai", "plain"):
        Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "images" / f"{name}.png")
        catalog[name] = {"image_urls": [f"http://127.0.0.1:1/images/{name}.png"], "title": name}
    scores = [{"id": "ai", "image_score": 0.9, "image_score_model": "m", PROVENANCE_FIELD: "c2pa_ai",
               PROVENANCE_DETAIL_FIELD: "Firefly"},
              {"id": "plain", "image_score": 0.5, "image_score_model": "m", PROVENANCE_FIELD: "none",
               PROVENANCE_DETAIL_FIELD: ""}]
    html_path, png_path = contact_sheet(scores, [], catalog, tmp_path, tmp_path)
    page = html_path.read_text()
    assert page.count("<figure class=ai>") == 1 and "AI: c2pa_ai Firefly" in page
    sheet = Image.open(png_path).convert("RGB")
    assert sheet.getpixel((2, 2)) == AI_MARK and sheet.getpixel((THUMB + 2, 2)) == (255, 255, 255)
