"""The ES double's stale-update guard (``run_guard``), called directly: the cases `make mutation` showed no test
pinned (docs/testing.md, Mutation testing). tests/test_es_guard.py runs the same rules through the pipeline.

Every expected document and error is written out here; none comes from the code under test.
"""
from __future__ import annotations

import pytest

from tests.es_double.errors import EsHttpError
from tests.es_double.scripts import run_guard

OLD = "2024-01-01T00:00:00.000000Z"  # 10 + 1 + 8 + 7 + 1 = 27 characters, ending in Z: canonical
NEW = "2024-01-02T00:00:00.000000Z"
SID = "guard-id"


def _cause(source: dict, params: dict) -> tuple[int, str, str, str, str, str]:
    """(status, type, reason, script id, cause type, cause reason) of the error ``run_guard`` raises."""
    with pytest.raises(EsHttpError) as caught:
        run_guard(source, params, SID)
    error = caught.value
    inner = error.extra["caused_by"]
    assert inner["type"] == "script_exception" and inner["reason"] == "runtime error"
    assert inner["lang"] == "painless" and inner["script_stack"] == []
    return (error.status, error.type, error.reason, inner["script"], inner["caused_by"]["type"],
            inner["caused_by"]["reason"])


def _error(cause: str, reason: str) -> tuple[int, str, str, str, str, str]:
    return 400, "illegal_argument_exception", "failed to execute script", SID, cause, reason


def test_score_must_be_given_and_boolean():
    assert _cause({}, {"version": NEW, "fields": {}}) == _error(
        "null_pointer_exception", 'Cannot invoke "Object.getClass()" because "callArgs[0]" is null (params.score)')
    assert _cause({}, {"score": 1, "version": NEW, "fields": {}}) == _error(
        "class_cast_exception", "Cannot cast java.lang.Long to java.lang.Boolean")
    assert _cause({}, {"score": "true", "version": NEW, "fields": {}}) == _error(
        "class_cast_exception", "Cannot cast java.lang.String to java.lang.Boolean")


@pytest.mark.parametrize(("stored", "shown"), [
    (20240101, "20240101"),                           # not a string: its JSON text
    ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),  # 20 characters
    ("2024-01-01T00:00:00.0000000", "2024-01-01T00:00:00.0000000"),  # 27 characters, no Z
])
def test_a_stored_version_out_of_canonical_form_is_refused(stored, shown):
    assert _cause({"image_score_version": stored}, {"score": True, "version": NEW, "fields": {}}) == _error(
        "illegal_argument_exception", f"stored version [{shown}] is not in the canonical form")
    assert _cause({"updated_at": stored}, {"score": False, "version": NEW, "fields": {}}) == _error(
        "illegal_argument_exception", f"stored version [{shown}] is not in the canonical form")


def test_score_mode_reads_image_score_version_and_document_mode_updated_at():
    # Only the field of the mode is compared: the other one, newer, does not stop the write.
    source = {"updated_at": NEW, "image_score_version": OLD}
    assert run_guard(source, {"score": True, "version": NEW[:-2] + "1Z", "fields": {"image_score": 0.5}}, SID)
    assert source == {"updated_at": NEW, "image_score_version": OLD, "image_score": 0.5}
    source = {"updated_at": OLD, "image_score_version": NEW}
    assert run_guard(source, {"score": False, "version": OLD[:-2] + "1Z", "fields": {"title": "t"}}, SID)
    assert source == {"title": "t"}


def test_a_score_never_lands_on_a_tombstone():
    source = {"deleted": True, "updated_at": OLD}
    assert run_guard(source, {"score": True, "version": NEW, "fields": {"image_score": 0.5}}, SID) is False
    assert source == {"deleted": True, "updated_at": OLD}
    # "deleted": "true" (a string) is not Painless's `== true`: the score lands.
    source = {"deleted": "true"}
    assert run_guard(source, {"score": True, "version": NEW, "fields": {"image_score": 0.5}}, SID) is True
    assert source == {"deleted": "true", "image_score": 0.5}


def test_the_incoming_version_must_be_a_string_when_one_is_stored():
    stored = {"image_score_version": OLD}
    assert _cause(dict(stored), {"score": True, "fields": {}}) == _error(
        "null_pointer_exception", 'Cannot read field "value" because "anotherString" is null (params.version)')
    assert _cause(dict(stored), {"score": True, "version": 5, "fields": {}}) == _error(
        "class_cast_exception", "class java.lang.Long cannot be cast to class java.lang.String")
    # Nothing stored: no comparison, so no version is needed.
    source: dict = {}
    assert run_guard(source, {"score": True, "fields": {"image_score": 0.25}}, SID) is True
    assert source == {"image_score": 0.25}


def test_older_and_equal_versions_are_noops_and_newer_ones_write():
    for score, field in ((True, "image_score_version"), (False, "updated_at")):
        source = {field: NEW}
        assert run_guard(source, {"score": score, "version": OLD, "fields": {field: OLD}}, SID) is False
        assert source == {field: NEW}
        assert run_guard(source, {"score": score, "version": NEW, "fields": {field: NEW, "x": 1}}, SID) is False
        assert source == {field: NEW}
    source = {"image_score_version": OLD, "image_score": 0.1, "title": "kept"}
    assert run_guard(source, {"score": True, "version": NEW, "fields": {"image_score_version": NEW,
                                                                         "image_score": 0.9}}, SID) is True
    assert source == {"image_score_version": NEW, "image_score": 0.9, "title": "kept"}  # a score merges


def test_a_tombstone_wins_a_tie_in_document_mode():
    source = {"updated_at": OLD, "title": "t", "image_score": 0.5}
    tombstone = {"updated_at": OLD, "deleted": True}
    assert run_guard(source, {"score": False, "version": OLD, "fields": tombstone}, SID) is True
    assert source == {"updated_at": OLD, "deleted": True}  # a document replaces: the old fields are gone
    # ...but not over a stored tombstone, and `deleted: 1` is not a tombstone.
    assert run_guard(source, {"score": False, "version": OLD, "fields": {"updated_at": OLD, "deleted": True}},
                     SID) is False
    source = {"updated_at": OLD, "title": "t"}
    assert run_guard(source, {"score": False, "version": OLD, "fields": {"updated_at": OLD, "deleted": 1}},
                     SID) is False
    assert source == {"updated_at": OLD, "title": "t"}


def test_a_tie_needs_readable_fields():
    source = {"updated_at": OLD}
    assert _cause(dict(source), {"score": False, "version": OLD}) == _error(
        "null_pointer_exception", "cannot read [deleted] of null (params.fields)")
    assert _cause(dict(source), {"score": False, "version": OLD, "fields": "x"}) == _error(
        "illegal_argument_exception", "dynamic getter [java.lang.String, deleted] not found")


def test_fields_must_be_a_map():
    assert _cause({}, {"score": False, "version": NEW}) == _error(
        "null_pointer_exception", "putAll needs a map, got null")
    assert _cause({}, {"score": False, "version": NEW, "fields": [1]}) == _error(
        "class_cast_exception", "putAll needs a map, got java.util.ArrayList")


def test_the_stored_fields_are_a_copy():
    fields = {"updated_at": NEW, "tags": ["a"]}
    source: dict = {}
    assert run_guard(source, {"score": False, "version": NEW, "fields": fields}, SID) is True
    fields["tags"].append("b")
    assert source == {"updated_at": NEW, "tags": ["a"]}


def test_a_scored_document_wins_a_tie_over_an_unscored_one():
    # Equal version, both live: the incoming document carries image_score and the stored one has none.
    source = {"updated_at": OLD, "title": "t"}
    scored = {"updated_at": OLD, "title": "t", "image_score": 0.5}
    assert run_guard(source, {"score": False, "version": OLD, "fields": scored}, SID) is True
    assert source == {"updated_at": OLD, "title": "t", "image_score": 0.5}
    # ...but not when the stored one has a score, nor when the incoming one has none (image_score None).
    assert run_guard(source, {"score": False, "version": OLD, "fields": {"updated_at": OLD, "image_score": 0.9}},
                     SID) is False
    assert source == {"updated_at": OLD, "title": "t", "image_score": 0.5}
    source = {"updated_at": OLD, "title": "t"}
    assert run_guard(source, {"score": False, "version": OLD, "fields": {"updated_at": OLD, "image_score": None}},
                     SID) is False
    assert source == {"updated_at": OLD, "title": "t"}
