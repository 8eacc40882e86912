"""The backfill against Elasticsearch (the strict double, or a real cluster with $ES_URL).

Scores must land as partial updates, a missing document must be a counted
skip, every reject a dead letter, and a rerun must skip what is already
scored by the same model.
"""
import glob
import json
from datetime import UTC, datetime

import pytest

from es.bulk_writer import write_batch
from es.guard import SCORE, canonical_version
from pipelines import backfill
from pipelines.catalog import ImageServer, build_catalog
from pipelines.report import counters
from tests.fixtures.catalog_scores import expected_scores
from tests.fixtures.es import seed_items

NOW = datetime.now(UTC)


def _jsonl(pattern):
    return [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path) if line.strip()]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A slice of the demo catalog: every entry that is not scored (each dead-letter reason, the skip) and
    12 scored ones, the first products among them; these tests check the Elasticsearch paths, not volume."""
    root = tmp_path_factory.mktemp("catalog")
    with ImageServer(root) as server:
        entries = build_catalog(root, server.url, seed=5, products=8, now=NOW)
        scored = [e for e in entries if e.expect == "scored"]
        chosen = {id(e) for e in scored[:4] + scored[4::max(1, len(scored) // 8)][:8]}
        yield server, [e for e in entries if e.expect != "scored" or id(e) in chosen]


def _seedable(entries):
    """Catalog records that an item indexer could have stored: valid JSON with an id and a date."""
    docs = {}
    for entry in entries:
        if entry.expect == "bad_date":
            continue
        try:
            record = json.loads(entry.record)
        except ValueError:
            continue
        if record.get("id"):
            docs[record["id"]] = (record, entry.expect)
    return docs


def test_files_to_elasticsearch(catalog, es_url, es_config, es_client, es_index, tmp_path):
    server, entries = catalog
    docs = _seedable(entries)
    unindexed = "prod-000"  # scored, but its document is not in the index: a counted skip
    seed_items(es_client, es_index, {i: r for i, (r, _) in docs.items() if i != unindexed})
    # Streaming already scored one item from a newer version of it: the backfill's older score must not land.
    streamed = sorted(i for i, (_, expect) in docs.items() if expect == "scored" and i != unindexed)[0]
    newer = {"id": streamed, "updated_at": NOW.isoformat(), "image_score": 0.123, "image_score_model": "stream-v9",
             "image_scored_at": NOW.isoformat(), "image_score_image_url": docs[streamed][0]["image_urls"][0]}
    assert write_batch(es_config, es_index, [newer], mode=SCORE)["written"] == [streamed]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(e.record + "\n" for e in entries))
    dead_dir = tmp_path / "dead"
    result = backfill.run(["--source", "files", "--input", str(items), "--es-url", es_url, "--es-index", es_index,
                           "--deadletter", str(dead_dir), "--allow-image-hosts", server.host_port,
                           "--now", NOW.isoformat()])
    es_client.indices.refresh(index=es_index)
    scored = {i for i, (_, expect) in docs.items() if expect == "scored"} - {unindexed, streamed}
    assert es_client.get(index=es_index, id=streamed)["_source"]["image_score_model"] == "stream-v9"
    expected = expected_scores(entries)
    for item_id in scored:
        source = es_client.get(index=es_index, id=item_id)["_source"]
        assert source["image_score"] == pytest.approx(expected[item_id], abs=1e-6)
        assert source["image_score_model"] == "handcrafted-v4"
        assert source["title"] == docs[item_id][0]["title"]  # a partial update keeps the rest
        assert source["image_score_version"] == canonical_version(docs[item_id][0]["created_at"])
    dead = _jsonl(f"{dead_dir}/deadletter*.jsonl")
    assert sorted(d["reason"] for d in dead) == sorted(e.expect for e in entries if e.expect not in ("scored", "skipped"))
    assert "bad_date" in {d["reason"] for d in dead}
    c = counters(result)
    assert c["es_written"] == len(scored) and c["es_missing"] == 1 and c["es_stale"] == 1
    assert (c["es_written"] + c["es_stale"] + c["es_missing"] + len(dead) + c["skipped_outside_window"]
            == len(entries))


def test_index_source_scores_then_rerun_skips_scored_items(catalog, es_url, es_client, es_index, tmp_path):
    server, entries = catalog
    docs = _seedable(entries)
    seed_items(es_client, es_index, {i: r for i, (r, _) in docs.items()})
    argv = ["--source", "es", "--es-url", es_url, "--es-index", es_index, "--es-slices", "3",
            "--deadletter", str(tmp_path / "dead"), "--allow-image-hosts", server.host_port]
    first = counters(backfill.run(argv))
    es_client.indices.refresh(index=es_index)
    in_window = {i for i, (_, expect) in docs.items() if expect != "skipped"}
    scored = {i for i, (_, expect) in docs.items() if expect == "scored"}
    assert first["items_read"] == len(in_window)  # the old item is outside the query's window
    assert first["es_written"] == len(scored)
    second = counters(backfill.run(argv[:-4] + ["--deadletter", str(tmp_path / "dead2"),
                                                "--allow-image-hosts", server.host_port]))
    # Only the items that could not be scored are read again.
    assert second.get("items_read", 0) == len(in_window) - len(scored)
    assert second.get("es_written", 0) == 0


def test_demo_against_elasticsearch(es_url, es_client, tmp_path, capsys):
    """The laptop walkthrough: the demo indexes its catalog and scores it from the index."""
    from pipelines import demo
    index = f"imagescore-demo-{tmp_path.name[-8:].lower()}"
    try:
        assert demo.run(["--output", str(tmp_path / "out"), "--products", "6", "--es-url", es_url,
                         "--es-index", index]) == 0
        es_client.indices.refresh(index=index)
        scored = es_client.search(index=index, query={"exists": {"field": "image_score"}}, size=1000)["hits"]["hits"]
        files = _jsonl(str(tmp_path / "out" / "scores*.jsonl"))
        assert {h["_id"] for h in scored} == {s["id"] for s in files}  # the same items as the file run
        dead = _jsonl(str(tmp_path / "out" / "deadletter-es" / "deadletter*.jsonl"))
        assert {d["reason"] for d in dead} >= {"blocked_address", "blocked_scheme", "not_an_image"}
        assert "Elasticsearch:" in capsys.readouterr().out
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)
