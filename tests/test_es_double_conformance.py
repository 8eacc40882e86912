"""Scenarios where the double must answer as Elasticsearch does, each citing where Elasticsearch says so.

They run against the double, and unchanged against a real cluster when ``$ES_URL`` is set
(``ES_URL=... make test-es``). Every Elasticsearch feature the project starts to use gets a
scenario here first. Each test makes its own uniquely named indices and templates and deletes
them afterwards. Where a scenario needs time to pass (refresh intervals), the double's clock is
moved by hand; against a cluster the test sleeps instead.

Each docstring names its source: a page of Elasticsearch's reference, or a REST test of
Elasticsearch's own suite (paths relative to
``rest-api-spec/src/yamlRestTest/resources/rest-api-spec/test/`` in github.com/elastic/elasticsearch),
whose requests and expected answers the scenario repeats.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from elasticsearch import ApiError, BadRequestError, NotFoundError

from tests.es_double import EsDouble


class ManualClock:
    """The double's clock, moved by hand, so a refresh interval elapses exactly when a test says."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # not earlier than indices made before the swap

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wait(es_server: EsDouble | None) -> Callable[[float], None]:
    """``wait(seconds)``: move the double's clock, or really sleep against a cluster."""
    if es_server is None:
        return time.sleep
    clock = ManualClock()
    es_server.clock = clock  # the es_url fixture puts the real clock back

    def advance(seconds: float) -> None:
        clock.now += seconds
    return advance


@pytest.fixture
def names(es_client, es_url) -> Iterator[Callable[[str], str]]:
    """``names(kind)`` gives a fresh lowercase name; indices and templates made with it are deleted afterwards."""
    made: list[str] = []
    prefix = f"imagescore-conf-{uuid.uuid4().hex[:8]}"

    def new(kind: str = "idx") -> str:
        made.append(f"{prefix}-{kind}-{len(made)}")
        return made[-1]
    yield new
    quiet = es_client.options(ignore_status=404)
    for name in made:
        quiet.indices.delete_index_template(name=name)
        quiet.indices.delete(index=name)
        quiet.indices.delete(index=name + "-1")  # indices a template made


def _error(caught: pytest.ExceptionInfo) -> dict:
    return caught.value.body["error"]


# --------------------------------------------------------------------------- bulk


def test_bulk_index_with_an_empty_id_is_an_item_error(es_client, names):
    """bulk/10_basic.yml "Empty _id": 400 illegal_argument_exception on that item only."""
    index = names()
    response = es_client.bulk(refresh=True, operations=[
        {"index": {"_index": index, "_id": ""}}, {"f": 1},
        {"index": {"_index": index, "_id": "id"}}, {"f": 2},
        {"index": {"_index": index}}, {"f": 3},
    ])
    assert response["errors"] is True
    first = response["items"][0]["index"]
    assert first["status"] == 400 and first["error"]["type"] == "illegal_argument_exception"
    assert first["error"]["reason"] == "if _id is specified it must not be empty"
    assert [i["index"]["result"] for i in response["items"][1:]] == ["created", "created"]
    assert es_client.count(index=index)["count"] == 2


def test_an_empty_action_line_refuses_the_bulk(es_client, names):
    """bulk/10_basic.yml "empty action"."""
    index = names()
    with pytest.raises(BadRequestError) as caught:
        es_client.bulk(operations=[{"index": {"_index": index, "_id": "a"}}, {"f1": "v1"}, {}])
    assert "Malformed action/metadata line [3], expected FIELD_NAME but found [END_OBJECT]" in _error(caught)["reason"]


def test_a_misspelled_update_field_is_refused_with_a_suggestion(es_client, names):
    """SuggestingErrorOnUnknown (server, org.elasticsearch.common.xcontent; its tests pin the message
    ``[test] unknown field [foo] did you mean [fop]?``) on the UpdateRequest parser, whose fields include
    ``doc``. It suggests names whose Levenshtein similarity (1 - edits / length) is above 0.5: ``docs``
    gets ``doc``; ``dco`` (two edits) gets no suggestion."""
    index = names()
    es_client.index(index=index, id="a", document={"f": 1}, refresh=True)
    for field, message in (("docs", "[UpdateRequest] unknown field [docs] did you mean [doc]?"),
                           ("dco", "[UpdateRequest] unknown field [dco]")):
        with pytest.raises(BadRequestError) as caught:
            es_client.bulk(operations=[{"update": {"_index": index, "_id": "a"}}, {field: {"f": 2}}])
        assert _error(caught)["reason"].endswith(message)
    assert es_client.get(index=index, id="a")["_source"] == {"f": 1}


def test_update_with_doc_as_upsert_creates_a_missing_index(es_client, names):
    """TransportBulkAction creates the index of every action but a delete (``action.auto_create_index``
    defaults to true: https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-index_.html#index-creation); the upsert then creates the document."""
    index = names()
    response = es_client.bulk(operations=[{"update": {"_index": index, "_id": "a"}},
                                          {"doc": {"f": 1}, "doc_as_upsert": True}])
    item = response["items"][0]["update"]
    assert response["errors"] is False and item["result"] == "created" and item["status"] == 201
    assert es_client.get(index=index, id="a")["_source"] == {"f": 1}


def test_a_plain_update_to_a_missing_index_creates_it_and_misses_the_document(es_client, names):
    """Same rule as above: the index is created first, then the update finds no document."""
    index = names()
    response = es_client.bulk(operations=[{"update": {"_index": index, "_id": "a"}}, {"doc": {"f": 1}}])
    item = response["items"][0]["update"]
    assert item["status"] == 404 and item["error"]["type"] == "document_missing_exception"
    assert es_client.indices.exists(index=index)


def test_seq_no_counts_per_index_and_a_noop_does_not_advance_it(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/optimistic-concurrency-control.html: the primary shard numbers every operation it performs;
    a noop update performs none (bulk/12_noop.yml counts it as a noop, not an index operation)."""
    first, second = names(), names()
    for index in (first, second):
        es_client.indices.create(index=index, settings={"number_of_shards": 1})
    a = es_client.index(index=first, id="a", document={"f": 1})
    b = es_client.index(index=first, id="b", document={"f": 1})
    other = es_client.index(index=second, id="x", document={"f": 1})
    assert (a["_seq_no"], b["_seq_no"], other["_seq_no"]) == (0, 1, 0)
    response = es_client.bulk(operations=[{"update": {"_index": first, "_id": "a"}}, {"doc": {"f": 1}},
                                          {"update": {"_index": first, "_id": "b"}}, {"doc": {"f": 2}}])
    noop, updated = (i["update"] for i in response["items"])
    assert noop["result"] == "noop" and noop["_seq_no"] == 0 and noop["_version"] == 1
    assert updated["result"] == "updated" and updated["_seq_no"] == 2 and updated["_version"] == 2
    assert es_client.index(index=first, id="c", document={"f": 1})["_seq_no"] == 3


def test_require_alias_refuses_an_index_that_is_not_an_alias(es_client, names):
    """bulk/10_basic.yml "When setting require_alias flag" (request flag, overridden per action)."""
    missing, created = names(), names()
    response = es_client.bulk(refresh=True, require_alias=True, operations=[
        {"index": {"_index": missing}}, {"f": 1},
        {"index": {"_index": created, "require_alias": False}}, {"f": 2},
    ])
    refused, accepted = response["items"][0]["index"], response["items"][1]["index"]
    assert refused["status"] == 404 and refused["error"]["type"] == "index_not_found_exception"
    assert refused["error"]["reason"] == (f"no such index [{missing}] and [require_alias] request flag is [true] "
                                          f"and [{missing}] is not an alias")
    assert accepted["result"] == "created"
    assert not es_client.indices.exists(index=missing)


def _guarded_update(index: str, doc_id: str, version: str, title: str) -> list[dict]:
    """A document-mode update through the stored guard script, as ``es/bulk_writer.py`` sends it."""
    from es.guard import canonical_version, guard_params, guard_script
    _, params = guard_params({"id": doc_id, "updated_at": version, "title": title}, "document")
    assert params["version"] == canonical_version(version)
    return [{"update": {"_index": index, "_id": doc_id}},
            {"script": guard_script(params), "scripted_upsert": True, "upsert": {}}]


def test_a_scripted_upsert_creates_a_missing_index_and_a_script_noop_writes_nothing(es_client, names):
    """docs-update.html#upserts ("scripted_upsert": the script runs on the ``upsert`` document when the
    document is missing) and the index creation rule above; a script that sets ``ctx.op = 'noop'`` writes
    nothing (docs-update.html "detect_noop" / bulk/12_noop.yml): no new version, no new sequence number."""
    from es.guard import ensure_guard_script
    ensure_guard_script(es_client)
    index = names()
    created = es_client.bulk(operations=_guarded_update(index, "a", "2025-01-02T00:00:00Z", "new"))["items"][0]
    assert created["update"]["result"] == "created" and created["update"]["status"] == 201
    assert es_client.get(index=index, id="a")["_source"]["title"] == "new"
    stale, newer = es_client.bulk(operations=_guarded_update(index, "a", "2025-01-01T00:00:00Z", "old")
                                  + _guarded_update(index, "a", "2025-01-03T00:00:00Z", "newer"))["items"]
    assert stale["update"]["result"] == "noop" and stale["update"]["_version"] == 1
    assert stale["update"]["_seq_no"] == created["update"]["_seq_no"]
    assert newer["update"]["result"] == "updated" and newer["update"]["_version"] == 2
    assert newer["update"]["_seq_no"] == created["update"]["_seq_no"] + 1
    assert es_client.get(index=index, id="a")["_source"]["title"] == "newer"


def test_rank_feature_takes_one_positive_value_and_no_sort(es_client, names):
    """rank-feature.html: "Rank features only support single-valued fields and strictly positive values";
    Lucene's ``FeatureField`` refuses values below the smallest normal float; the field has no doc values,
    so it cannot be sorted on (``RankFeatureFieldMapper``'s field data)."""
    index = names()
    es_client.indices.create(index=index, mappings={"properties": {
        "r": {"type": "rank_feature"}, "n": {"type": "rank_feature", "positive_score_impact": False}}})
    es_client.index(index=index, id="ok", document={"r": 0.5, "n": 2}, refresh=True)
    for bad, cause in ((0.0, "positive normal float"), (-1, "positive normal float"), ([0.5, 0.7], "multiple values")):
        with pytest.raises(BadRequestError) as caught:
            es_client.index(index=index, id="bad", document={"r": bad})
        assert cause in json.dumps(caught.value.body["error"])
    with pytest.raises(BadRequestError) as caught:
        es_client.search(index=index, sort=[{"r": "asc"}])
    assert "[rank_feature] fields do not support sorting" in json.dumps(caught.value.body["error"])
    with pytest.raises(BadRequestError) as caught:
        es_client.search(index=index, query={"term": {"r": 0.5}})
    assert "Queries on [rank_feature] fields are not supported" in json.dumps(caught.value.body["error"])
    assert es_client.count(index=index)["count"] == 1


# --------------------------------------------------------------------------- search


def _seed_ages(es_client, index: str) -> None:
    """The documents of search/90_search_after.yml and search/350_point_in_time.yml."""
    es_client.bulk(refresh=True, operations=[
        {"index": {"_index": index, "_id": "1"}}, {"id": 1, "foo": "bar", "age": 18},
        {"index": {"_index": index, "_id": "42"}}, {"id": 42, "foo": "bar", "age": 18},
        {"index": {"_index": index, "_id": "172"}}, {"id": 172, "foo": "bar", "age": 24},
    ])


def test_pit_search_after_takes_the_callers_sort_length_and_counts_every_match(es_client, names):
    """search/350_point_in_time.yml "basic": two sort fields, ``search_after`` with two values, and
    ``hits.total`` 3 on every page. SearchRequest#rewrite adds the ``_shard_doc`` tiebreaker only when
    ``search_after`` is absent or has one value more than the sort."""
    index = names()
    _seed_ages(es_client, index)
    pit = es_client.open_point_in_time(index=index, keep_alive="5m")["id"]
    try:
        sort = [{"age": "desc"}, {"id": "desc"}]
        page = es_client.search(size=1, sort=sort, pit={"id": pit, "keep_alive": "1m"})
        assert page["hits"]["total"]["value"] == 3
        (hit,) = page["hits"]["hits"]
        assert hit["_id"] == "172" and hit["sort"][:2] == [24, 172]
        assert len(hit["sort"]) == 3  # the implicit tiebreaker's value
        es_client.index(index=index, id="100", document={"id": 100, "foo": "bar", "age": 23}, refresh=True)
        seen = []
        for after in ([24, 172], [18, 42]):
            pit = page.get("pit_id", pit)
            page = es_client.search(size=1, sort=sort, search_after=after, pit={"id": pit})
            assert page["hits"]["total"]["value"] == 3  # the PIT does not see id 100
            seen.extend((h["_id"], h["sort"]) for h in page["hits"]["hits"])
        assert seen == [("42", [18, 42]), ("1", [18, 1])]
        pit = page.get("pit_id", pit)
        last = es_client.search(size=1, sort=sort, search_after=[18, 1], pit={"id": pit})
        assert last["hits"]["hits"] == [] and last["hits"]["total"]["value"] == 3
        # The hit's own sort values, tiebreaker included, page on just as well.
        pit = last.get("pit_id", pit)
        again = es_client.search(size=2, sort=sort, search_after=hit["sort"], pit={"id": pit})
        assert [h["_id"] for h in again["hits"]["hits"]] == ["42", "1"]
        pit = again.get("pit_id", pit)
    finally:
        es_client.close_point_in_time(id=pit)


def test_total_counts_every_match_with_search_after(es_client, names):
    """search/90_search_after.yml "search with search_after parameter": hits.total stays 3."""
    index = names()
    _seed_ages(es_client, index)
    sort = [{"age": "desc"}, {"id": "desc"}]
    page = es_client.search(index=index, size=1, sort=sort, search_after=[24, 172])
    assert page["hits"]["total"] == {"value": 3, "relation": "eq"}
    assert [(h["_id"], h["sort"]) for h in page["hits"]["hits"]] == [("42", [18, 42])]


def test_search_after_accepts_a_date_as_its_field_formats_it(es_client, names):
    """search/90_search_after.yml "date": a ``format``-ted date string works like its epoch millis."""
    index = names()
    es_client.indices.create(index=index, mappings={
        "properties": {"timestamp": {"type": "date", "format": "yyyy-MM-dd HH:mm:ss.SSS"}}})
    es_client.bulk(index=index, refresh=True, operations=[
        {"index": {}}, {"timestamp": "2019-10-21 00:30:04.828"},
        {"index": {}}, {"timestamp": "2019-10-21 08:30:04.828"}])
    first = es_client.search(index=index, size=1, sort=[{"timestamp": "desc"}])
    assert first["hits"]["hits"][0]["sort"] == [1571646604828]
    for after in ([1571646604828], ["2019-10-21 08:30:04.828"]):
        page = es_client.search(index=index, size=1, sort=[{"timestamp": "desc"}], search_after=after)
        assert page["hits"]["total"]["value"] == 2
        assert page["hits"]["hits"][0]["_source"] == {"timestamp": "2019-10-21 00:30:04.828"}
        assert page["hits"]["hits"][0]["sort"] == [1571617804828]


def test_a_range_uses_the_fields_date_format(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/mapping-date-format.html: the mapping's ``format`` parses documents and query bounds alike."""
    index = names()
    es_client.indices.create(index=index, mappings={"properties": {"day": {"type": "date", "format": "yyyy/MM/dd"}}})
    es_client.bulk(index=index, refresh=True, operations=[
        {"index": {"_id": "a"}}, {"day": "2024/01/05"}, {"index": {"_id": "b"}}, {"day": "2024/03/20"}])
    found = es_client.search(index=index, query={"range": {"day": {"gte": "2024/02/01"}}})
    assert [h["_id"] for h in found["hits"]["hits"]] == ["b"]
    with pytest.raises(BadRequestError):
        es_client.index(index=index, id="c", document={"day": "2024-01-05"})


def test_shard_doc_sort_needs_a_point_in_time(es_client, names):
    """search/90_search_after.yml "_shard_doc sort"."""
    index = names()
    _seed_ages(es_client, index)
    with pytest.raises(BadRequestError) as caught:
        es_client.search(index=index, size=1, sort=["_shard_doc"], search_after=[0])
    assert "[_shard_doc] sort field cannot be used without [point in time]" in json.dumps(caught.value.body)


def test_paging_a_pit_with_the_newest_id_reads_each_document_once(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/point-in-time-api.html: a search answer may carry a new id; always use the most recent one."""
    index = names()
    es_client.bulk(refresh=True, operations=[x for i in range(7) for x in
                                             ({"index": {"_index": index, "_id": str(i)}}, {"n": i})])
    pit = es_client.open_point_in_time(index=index, keep_alive="1m")["id"]
    seen, after = [], None
    while True:
        kwargs = {"search_after": after} if after else {}
        page = es_client.search(pit={"id": pit, "keep_alive": "1m"}, size=3, sort=[{"_shard_doc": "asc"}], **kwargs)
        pit = page["pit_id"]
        seen.extend(h["_id"] for h in page["hits"]["hits"])
        if len(page["hits"]["hits"]) < 3:
            break
        after = page["hits"]["hits"][-1]["sort"]
    assert sorted(seen) == [str(i) for i in range(7)]
    assert es_client.close_point_in_time(id=pit)["num_freed"] >= 1


def test_pit_slices_split_the_matches_into_disjoint_parts(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/point-in-time-api.html#search-slicing:
    the slices of one PIT together return every match, each once."""
    index = names()
    es_client.bulk(refresh=True, operations=[x for i in range(20) for x in
                                             ({"index": {"_index": index, "_id": f"d{i}"}}, {"n": i})])
    pit = es_client.open_point_in_time(index=index, keep_alive="1m")["id"]
    parts, totals = [], 0
    try:
        for slice_id in range(3):
            page = es_client.search(pit={"id": pit}, slice={"id": slice_id, "max": 3}, size=100,
                                    sort=[{"_shard_doc": "asc"}])
            pit = page["pit_id"]
            parts.append({h["_id"] for h in page["hits"]["hits"]})
            totals += page["hits"]["total"]["value"]
    finally:
        es_client.close_point_in_time(id=pit)
    assert set().union(*parts) == {f"d{i}" for i in range(20)} and sum(map(len, parts)) == 20 == totals


# --------------------------------------------------------------------------- mappings and templates


def test_a_new_string_field_is_text_with_a_keyword_sub_field(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/dynamic-field-mapping.html: a JSON
    string becomes ``text`` with a ``keyword`` sub-field (``ignore_above`` 256); a whole number ``long``."""
    index = names()
    es_client.index(index=index, id="a", document={"colour": "Red", "n": 3}, refresh=True)
    properties = es_client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert properties == {"colour": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
                          "n": {"type": "long"}}
    assert es_client.count(index=index, query={"term": {"colour.keyword": "Red"}})["count"] == 1


def test_put_mapping_refuses_an_empty_field_name(es_client, names):
    """indices.put_mapping/10_basic.yml "Create index with invalid mappings"."""
    index = names()
    es_client.indices.create(index=index)
    with pytest.raises(BadRequestError) as caught:
        es_client.indices.put_mapping(index=index, properties={"": {"type": "keyword"}})
    assert "illegal_argument_exception" in json.dumps(caught.value.body)


def test_put_mapping_refuses_a_typed_body(es_client, es_url, names):
    """indices.put_mapping/10_basic.yml "Put mappings with explicit _doc type"."""
    index = names()
    es_client.indices.create(index=index)
    with pytest.raises(BadRequestError) as caught:
        es_client.perform_request("PUT", f"/{index}/_mapping", headers={"content-type": "application/json",
                                                                        "accept": "application/json"},
                                  body={"_doc": {"properties": {"field": {"type": "keyword"}}}})
    assert _error(caught)["type"] == "illegal_argument_exception"
    assert _error(caught)["reason"] == "Types cannot be provided in put mapping requests"


def test_an_unknown_mapping_parameter_is_refused_by_name(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/mapping-params.html lists every parameter; Elasticsearch refuses others naming them."""
    index = names()
    es_client.indices.create(index=index)
    with pytest.raises(BadRequestError) as caught:
        es_client.indices.put_mapping(index=index, properties={"x": {"type": "keyword", "colour": "red"}})
    assert "unknown parameter [colour] on mapper [x] of type [keyword]" in json.dumps(caught.value.body)


def test_get_index_template_normalises_settings_and_keeps_mappings(es_client, names):
    """indices.get_index_template/10_basic.yml "Get index template"."""
    name = names("template")
    es_client.indices.put_index_template(name=name, index_patterns=[f"{name}-*"], priority=500, template={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"field": {"type": "keyword"}}}})
    (found,) = es_client.indices.get_index_template(name=name)["index_templates"]
    template = found["index_template"]
    assert found["name"] == name and template["index_patterns"] == [f"{name}-*"]
    assert template["template"]["settings"] == {"index": {"number_of_shards": "1", "number_of_replicas": "0"}}
    assert template["template"]["mappings"] == {"properties": {"field": {"type": "keyword"}}}
    es_client.indices.create(index=f"{name}-1")
    mapping = es_client.indices.get_mapping(index=f"{name}-1")[f"{name}-1"]["mappings"]
    assert mapping == {"properties": {"field": {"type": "keyword"}}}


def test_a_missing_index_template_is_a_404(es_client, names):
    """indices.get_index_template/10_basic.yml "Exceptions when no matching templates found"."""
    name = names("template")
    with pytest.raises(NotFoundError) as caught:
        es_client.indices.get_index_template(name=name)
    assert _error(caught)["reason"] == f"index template matching [{name}] not found"


# --------------------------------------------------------------------------- requests the server does not know


def test_an_unknown_url_parameter_is_refused_by_name(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/api-conventions.html: unrecognized parameters are errors, naming the parameter."""
    index = names()
    es_client.indices.create(index=index)
    with pytest.raises(BadRequestError) as caught:
        es_client.perform_request("POST", f"/{index}/_search", params={"colour": "red"},
                                  headers={"content-type": "application/json", "accept": "application/json"},
                                  body={})
    assert _error(caught)["type"] == "illegal_argument_exception"
    assert f"request [/{index}/_search] contains unrecognized parameter: [colour]" in _error(caught)["reason"]


def test_an_unknown_search_body_field_is_refused_by_name(es_client, names):
    index = names()
    es_client.indices.create(index=index)
    with pytest.raises(BadRequestError) as caught:
        es_client.perform_request("POST", f"/{index}/_search",
                                  headers={"content-type": "application/json", "accept": "application/json"},
                                  body={"colour": "red"})
    assert _error(caught)["type"] == "parsing_exception"
    assert "Unknown key for a VALUE_STRING in [colour]." in _error(caught)["reason"]


# --------------------------------------------------------------------------- refresh


def test_writes_show_within_the_default_refresh_interval(es_client, names, wait):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/index-modules.html#index-refresh-interval-setting: every 1s by default (a search-idle shard
    refreshes before it answers), so no explicit refresh is needed to see a write a moment later."""
    index = names()
    es_client.indices.create(index=index)
    es_client.index(index=index, id="a", document={"f": 1})
    wait(1.5)
    assert es_client.count(index=index)["count"] == 1


def test_refresh_interval_minus_one_shows_writes_only_on_refresh(es_client, names, wait):
    """Same page: ``-1`` disables refreshes; an explicit refresh (``?refresh`` or ``_refresh``) still works."""
    index = names()
    es_client.indices.create(index=index, settings={"index": {"refresh_interval": "-1"}})
    es_client.index(index=index, id="a", document={"f": 1})
    wait(3)
    assert es_client.count(index=index)["count"] == 0
    es_client.indices.refresh(index=index)
    assert es_client.count(index=index)["count"] == 1
    es_client.index(index=index, id="b", document={"f": 1}, refresh=True)
    assert es_client.count(index=index)["count"] == 2


def test_turning_refresh_back_on_shows_writes(es_client, names, wait):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/indices-update-settings.html: ``refresh_interval`` is a dynamic setting."""
    index = names()
    es_client.indices.create(index=index, settings={"refresh_interval": "-1"})
    es_client.index(index=index, id="a", document={"f": 1})
    es_client.indices.put_settings(index=index, settings={"index": {"refresh_interval": "1s"}})
    wait(1.5)
    assert es_client.count(index=index)["count"] == 1


def test_errors_have_elasticsearchs_shape(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/common-options.html (error responses): ``error.root_cause``, ``error.type``, ``error.reason``, ``status``."""
    with pytest.raises(ApiError) as caught:
        es_client.search(index=names())
    body = caught.value.body
    assert body["status"] == 404 and body["error"]["type"] == "index_not_found_exception"
    assert body["error"]["root_cause"][0]["type"] == "index_not_found_exception"


def test_a_backfill_rerun_a_moment_later_skips_what_the_first_scored(es_config, es_client, es_index, wait):
    """The periodic refresh (previous tests) is what lets a rerun skip the scored items without anyone
    refreshing: the writer does not refresh, and the source reads a point in time."""
    from es.bulk_writer import write_batch
    from tests.test_es_source import MODEL, read_and_check, seed_backfill_index
    expected = seed_backfill_index(es_client, es_index, n=10)
    out = write_batch(es_config, es_index, [{"id": i, "updated_at": "2025-01-01T00:00:00Z", "image_score": 0.5,
                                             "image_score_model": MODEL, "image_scored_at": "2025-01-01T00:00:00Z",
                                             "image_score_image_url": f"https://img.example/{i}.jpg"}
                                            for i in expected], mode="score")
    assert sorted(out["written"]) == sorted(expected)
    wait(1.5)
    read_and_check(es_config, es_index, set(), slices=2)


# --------------------------------------------------------------------------- aggregations (the score monitor)


def _seed_numbers(es_client, index: str, numbers: list, mapping: str = "integer") -> None:
    es_client.indices.create(index=index, mappings={"properties": {"number": {"type": mapping},
                                                                   "tag": {"type": "keyword"}}})
    es_client.bulk(refresh=True, operations=[x for i, n in enumerate(numbers)
                                             for x in ({"index": {"_index": index, "_id": str(i)}}, {"number": n})])


def test_histogram_extended_bounds_and_min_doc_count(es_client, names):
    """aggregations/histogram.yml "histogram with extended_bounds" (52, 51, 101, 150 at interval 50 over
    bounds 0..200: five buckets, empty ones included) and "histogram with min_doc_count" (1, 51, 61, 71 at
    interval 20: min_doc_count 1 drops the empty 20 bucket, 2 keeps only 60)."""
    index = names()
    _seed_numbers(es_client, index, [52, 51, 101, 150])
    histo = es_client.search(index=index, size=0, aggs={"histo": {"histogram": {
        "field": "number", "interval": 50, "extended_bounds": {"min": 0, "max": 200}}}})["aggregations"]["histo"]
    assert [(b["key"], b["doc_count"]) for b in histo["buckets"]] == [(0, 0), (50, 2), (100, 1), (150, 1), (200, 0)]
    other = names()
    _seed_numbers(es_client, other, [1, 51, 61, 71])
    for min_doc_count, expected in ((0, [(0, 1), (20, 0), (40, 1), (60, 2)]), (1, [(0, 1), (40, 1), (60, 2)]),
                                    (2, [(60, 2)])):
        histo = es_client.search(index=other, size=0, aggs={"histo": {"histogram": {
            "field": "number", "interval": 20, "min_doc_count": min_doc_count}}})["aggregations"]["histo"]
        assert [(b["key"], b["doc_count"]) for b in histo["buckets"]] == expected


def test_terms_size_missing_and_sum_other_doc_count(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/search-aggregations-bucket-terms-aggregation.html:
    buckets by doc_count (ties by key), ``size`` keeps the top ones and ``sum_other_doc_count`` counts the
    documents of the rest; ``missing`` puts documents without the field in a bucket of that key
    ("missing value" section, ``"missing": "N/A"``)."""
    index = names()
    es_client.indices.create(index=index, mappings={"properties": {"tag": {"type": "keyword"}}})
    tags = ["a", "a", "a", "b", "b", "c", None, None]
    es_client.bulk(refresh=True, operations=[x for i, t in enumerate(tags) for x in (
        {"index": {"_index": index, "_id": str(i)}}, {"tag": t} if t else {"other": 1})])
    terms = es_client.search(index=index, size=0, aggs={"t": {"terms": {"field": "tag", "size": 2, "missing": "N/A"}}})
    answer = terms["aggregations"]["t"]
    assert [(b["key"], b["doc_count"]) for b in answer["buckets"]] == [("a", 3), ("N/A", 2)]
    assert answer["sum_other_doc_count"] == 3 and answer["doc_count_error_upper_bound"] == 0
    plain = es_client.search(index=index, size=0, aggs={"t": {"terms": {"field": "tag"}}})["aggregations"]["t"]
    assert [(b["key"], b["doc_count"]) for b in plain["buckets"]] == [("a", 3), ("b", 2), ("c", 1)]


def test_percentiles_interpolate_between_the_sorted_values(es_client, names):
    """aggregations/percentiles_tdigest_metric.yml: a ``percentiles`` on a numeric field, keyed by the percent as
    ``"25.0"``; ``percents: []`` and a keyword field are bad requests ("Invalid params test"). Since 8.9 the
    default digest keeps every value of a small sample (HybridDigest, elastic/elasticsearch#96904) and answers
    ``Dist.quantile`` (libs/tdigest): linear interpolation at q * (n - 1). On 10, 20, 30, 40, 50 the 25th,
    50th and 75th percentiles fall on values (20, 30, 40) and the 10th interpolates to 14."""
    index = names()
    _seed_numbers(es_client, index, [50, 10, 40, 20, 30])
    values = es_client.search(index=index, size=0, aggs={"p": {"percentiles": {
        "field": "number", "percents": [10, 25, 50, 75, 100]}}})["aggregations"]["p"]["values"]
    assert values == {"10.0": pytest.approx(14.0), "25.0": 20.0, "50.0": 30.0, "75.0": 40.0, "100.0": 50.0}
    for body in ({"field": "number", "percents": []}, {"field": "tag"}):
        with pytest.raises(BadRequestError):
            es_client.search(index=index, size=0, aggs={"p": {"percentiles": body}})


def test_filter_value_count_min_and_max(es_client, names):
    """aggregations/filter.yml (a ``filter`` bucket counts the documents its query matches and runs its
    sub-aggregations on them), value_count_metric.yml, min_metric.yml and max_metric.yml (on 1, 51, 101,
    151: value_count 4, min 1, max 151; over a range filter >= 50: 3 values, min 51)."""
    index = names()
    _seed_numbers(es_client, index, [1, 51, 101, 151])
    aggs = es_client.search(index=index, size=0, aggs={
        "count": {"value_count": {"field": "number"}}, "low": {"min": {"field": "number"}},
        "high": {"max": {"field": "number"}},
        "big": {"filter": {"range": {"number": {"gte": 50}}}, "aggs": {
            "count": {"value_count": {"field": "number"}}, "low": {"min": {"field": "number"}}}},
        "none": {"filter": {"term": {"tag": "nothing"}}, "aggs": {"low": {"min": {"field": "number"}}}}})["aggregations"]
    assert aggs["count"]["value"] == 4 and aggs["low"]["value"] == 1.0 and aggs["high"]["value"] == 151.0
    assert aggs["big"]["doc_count"] == 3 and aggs["big"]["count"]["value"] == 3 and aggs["big"]["low"]["value"] == 51.0
    assert aggs["none"]["doc_count"] == 0 and aggs["none"]["low"]["value"] is None  # min of nothing is null


def test_a_date_max_and_percentiles_carry_epoch_millis_and_a_string(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/search-aggregations-metrics-max-aggregation.html
    (and min, percentiles): on a ``date`` field the value is epoch milliseconds, with ``value_as_string``
    in the field's format."""
    index = names()
    es_client.indices.create(index=index, mappings={"properties": {"at": {"type": "date"}}})
    es_client.bulk(refresh=True, operations=[
        {"index": {"_index": index, "_id": "1"}}, {"at": "2025-01-01T00:00:00Z"},
        {"index": {"_index": index, "_id": "2"}}, {"at": "2025-01-03T00:00:00Z"}])
    aggs = es_client.search(index=index, size=0, aggs={"newest": {"max": {"field": "at"}},
                                                       "mid": {"percentiles": {"field": "at", "percents": [50]}}})
    newest = aggs["aggregations"]["newest"]
    assert newest["value"] == 1735862400000.0 and newest["value_as_string"] == "2025-01-03T00:00:00.000Z"
    assert aggs["aggregations"]["mid"]["values"]["50.0"] == 1735776000000.0


def test_a_float_field_aggregates_the_float32_it_stores(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/number.html: ``float`` is a
    single-precision 32-bit IEEE 754 value, so 0.35 is stored (and aggregated) as 0.3499999940395355."""
    index = names()
    _seed_numbers(es_client, index, [0.35], mapping="float")
    aggs = es_client.search(index=index, size=0, aggs={"m": {"max": {"field": "number"}}})["aggregations"]
    assert aggs["m"]["value"] == pytest.approx(0.3499999940395355, abs=1e-15)


def test_the_monitors_scripts_bin_and_compare_versions(es_client, names):
    """https://www.elastic.co/guide/en/elasticsearch/reference/current/query-dsl-script-query.html (a ``script``
    query filters on a Painless expression over doc values) and
    https://www.elastic.co/guide/en/elasticsearch/reference/current/search-aggregations-bucket-histogram-aggregation.html
    (a histogram on a ``script``): the score monitor's two scripts, from es/monitoring.py, on a real cluster
    and the double alike."""
    from es.monitoring import BIN_SCRIPT, STALE_SCRIPT
    index = names()
    es_client.indices.create(index=index, mappings={"properties": {
        "image_score": {"type": "float"}, "image_score_version": {"type": "date"}, "updated_at": {"type": "date"}}})
    rows = [{"image_score": i / 20, "updated_at": "2025-01-02T00:00:00.000Z",
             "image_score_version": "2025-01-01T00:00:00.000Z" if i < 3 else "2025-01-02T00:00:00.000Z"}
            for i in range(21)]
    es_client.bulk(refresh=True, operations=[x for i, r in enumerate(rows)
                                             for x in ({"index": {"_index": index, "_id": str(i)}}, r)])
    answer = es_client.search(index=index, size=0, aggs={
        "bins": {"histogram": {"script": {"source": BIN_SCRIPT, "lang": "painless", "params": {"bins": 20}},
                               "interval": 1, "min_doc_count": 0, "extended_bounds": {"min": 0, "max": 19}}},
        "stale": {"filter": {"script": {"script": {"source": STALE_SCRIPT, "lang": "painless"}}}}})["aggregations"]
    assert [b["doc_count"] for b in answer["bins"]["buckets"]] == [1] * 19 + [2]  # 7/20 in bin 7, 1.0 in the last
    assert answer["stale"]["doc_count"] == 3
