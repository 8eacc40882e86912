"""Stored scripts (``/_scripts/<id>``) and scripted bulk updates: the stale-update guard, and nothing else.

No Painless runs here. ``PUT /_scripts/<id>`` accepts only the guard script of
``es/guard.py``, recognised by the SHA-256 of its exact source, and refuses any other
source with an Elasticsearch-shaped 400 that names it. A bulk ``update`` with
``script: {id, params}`` then runs :func:`run_guard`, a Python rendering of that script.
The hash is pinned here on purpose: changing the script in ``es/guard.py`` makes the double
refuse it until this file (and ``tests/test_es_guard.py``'s table) is changed with it.

Semantics follow Elasticsearch's ``UpdateHelper``: an existing document runs the script
with ``ctx.op = 'index'``; a missing one is a 404 ``document_missing_exception`` without
an ``upsert``, is indexed from the ``upsert`` as it is without ``scripted_upsert``, and runs
the script on a copy of the ``upsert`` with ``ctx.op = 'create'`` with it. ``ctx.op = 'noop'``
leaves everything as it was. A Painless runtime error (a stored value of the wrong type)
is a 400 ``illegal_argument_exception`` "failed to execute script" caused by
``script_exception``. ``bulk.py`` calls :func:`check_update_body` and :func:`apply_update`.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from tests.es_double.errors import EsHttpError
from tests.es_double.rest import Routes, check_params
from tests.es_double.state import Cluster

GUARD_SCRIPT_SHA256 = "1afcaa423288e8171e8e6a3eb0ad130c72ad1b715221ad63026244af4f26165c"
PUT_SCRIPT_PARAMS = {"timeout", "master_timeout", "context"}
UPDATE_FIELDS = {"script", "upsert", "scripted_upsert"}

ROUTES = Routes()


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _runtime_error(script_id: str, cause: str, reason: str) -> EsHttpError:
    return EsHttpError(400, "illegal_argument_exception", "failed to execute script", caused_by={
        "type": "script_exception", "reason": "runtime error", "script_stack": [], "script": script_id,
        "lang": "painless", "caused_by": {"type": cause, "reason": reason}})


def _java_type(value: Any) -> str:
    return {bool: "java.lang.Boolean", int: "java.lang.Long", float: "java.lang.Double", str: "java.lang.String",
            list: "java.util.ArrayList", dict: "java.util.HashMap"}.get(type(value), "java.lang.Object")


def run_guard(source: dict, params: dict, script_id: str) -> bool:
    """The guard script in Python; mutates ``source`` and returns True, or returns False for ``ctx.op = 'noop'``.

    Painless:  def s = ctx._source;
               def v = params.score ? s.image_score_version : s.updated_at;
               if (v != null && !(v instanceof String && v.length() == 27 && v.endsWith('Z')))
               { throw new IllegalArgumentException('stored version [' + v + '] is not in the canonical form'); }
               int c = v == null ? -1 : v.compareTo(params.version);
               if ((params.score && s.deleted == true) || c > 0
                   || (c == 0 && (params.score || s.deleted == true
                   || (params.fields.deleted != true && (s.image_score != null || params.fields.image_score == null)))))
               { ctx.op = 'noop'; } else { if (!params.score) { s.clear(); } s.putAll(params.fields); }

    Older or equal versions are a ``noop``, with two ties in document mode that write: a tombstone
    replaces a live document of the same version, and a document with ``image_score`` replaces a
    live one of the same version that has none.
    """
    score = params.get("score")
    if score is None:
        raise _runtime_error(script_id, "null_pointer_exception", "Cannot invoke \"Object.getClass()\" because "
                             "\"callArgs[0]\" is null (params.score)")
    if not isinstance(score, bool):
        raise _runtime_error(script_id, "class_cast_exception",
                             f"Cannot cast {_java_type(score)} to java.lang.Boolean")
    stored = source.get("image_score_version" if score else "updated_at")
    if stored is not None and not (isinstance(stored, str) and len(stored) == 27 and stored.endswith("Z")):
        text = json.dumps(stored) if not isinstance(stored, str) else stored  # Java's toString, near enough
        raise _runtime_error(script_id, "illegal_argument_exception",
                             f"stored version [{text}] is not in the canonical form")
    if score and source.get("deleted") is True:
        return False
    if stored is not None:
        version = params.get("version")
        if version is None:
            raise _runtime_error(script_id, "null_pointer_exception", "Cannot read field \"value\" because "
                                 "\"anotherString\" is null (params.version)")
        if not isinstance(version, str):
            raise _runtime_error(script_id, "class_cast_exception",
                                 f"class {_java_type(version)} cannot be cast to class java.lang.String")
        if stored > version:  # String.compareTo: the versions are ASCII, so code points order them the same
            return False
        if stored == version and (score or source.get("deleted") is True
                                  or not _wins_tie(params.get("fields"), source, script_id)):
            return False
    fields = params.get("fields")
    if not isinstance(fields, dict):
        raise _runtime_error(script_id, "null_pointer_exception" if fields is None else "class_cast_exception",
                             f"putAll needs a map, got {_java_type(fields) if fields is not None else 'null'}")
    if not score:
        source.clear()
    source.update(copy.deepcopy(fields))
    return True


def _wins_tie(fields: Any, source: dict, script_id: str) -> bool:
    """``params.fields.deleted == true || (s.image_score == null && params.fields.image_score != null)``,
    evaluated in the script's order, with Painless's errors when ``fields`` is not a map."""
    if fields is None:
        raise _runtime_error(script_id, "null_pointer_exception", "cannot read [deleted] of null (params.fields)")
    if not isinstance(fields, dict):
        raise _runtime_error(script_id, "illegal_argument_exception",
                             f"dynamic getter [{_java_type(fields)}, deleted] not found")
    if fields.get("deleted") is True:
        return True
    return source.get("image_score") is None and fields.get("image_score") is not None


KNOWN_SCRIPTS = {GUARD_SCRIPT_SHA256: run_guard}


# ---------------------------------------------------------------------------- /_scripts/<id>


def _check_params(params: dict, allowed: set[str], script_id: str) -> None:
    check_params(params, allowed | {"filter_path"}, f"/_scripts/{script_id}")


@ROUTES.route("PUT", "POST", path="/_scripts/*")
def put_script(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    script_id = parts[1]
    _check_params(params, PUT_SCRIPT_PARAMS, script_id)
    if params.get("context") not in (None, "update"):
        raise EsHttpError(400, "illegal_argument_exception",
                          f"the ES double stores scripts for the [update] context only, not [{params['context']}]")
    try:
        spec = json.loads(body) if body else None
    except ValueError as exc:
        raise EsHttpError(400, "x_content_parse_exception", f"failed to parse request body: {exc}") from None
    if not isinstance(spec, dict) or set(spec) != {"script"} or not isinstance(spec["script"], dict):
        raise EsHttpError(400, "parsing_exception", "expected one field [script] holding an object "
                          f"in the body of [PUT /_scripts/{script_id}]")
    script = spec["script"]
    unknown = sorted(set(script) - {"lang", "source"})
    if unknown:
        raise EsHttpError(400, "x_content_parse_exception",
                          f"[script] unknown field [{unknown[0]}] (the ES double supports [lang] and [source])")
    if not script.get("lang"):
        raise EsHttpError(400, "illegal_argument_exception", "must specify lang for stored script")
    if script["lang"] != "painless":
        raise EsHttpError(400, "illegal_argument_exception", f"script_lang not supported [{script['lang']}]")
    source = script.get("source")
    if not isinstance(source, str) or not source:
        raise EsHttpError(400, "illegal_argument_exception", "must specify source for stored script")
    if source_sha256(source) not in KNOWN_SCRIPTS:
        raise EsHttpError(400, "illegal_argument_exception",
                          f"the ES double runs no Painless and does not know the source of script [{script_id}] "
                          f"(sha256 {source_sha256(source)}); it knows only es/guard.py's guard script. "
                          "Teach tests/es_double/scripts.py the new script first", script=script_id)
    cluster.scripts[script_id] = {"lang": "painless", "source": source}
    return 200, {"acknowledged": True}


@ROUTES.route("GET", path="/_scripts/*")
def get_script(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    script_id = parts[1]
    _check_params(params, {"master_timeout"}, script_id)
    if script_id not in cluster.scripts:
        return 404, {"_id": script_id, "found": False}
    return 200, {"_id": script_id, "found": True, "script": dict(cluster.scripts[script_id])}


@ROUTES.route("DELETE", path="/_scripts/*")
def delete_script(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    script_id = parts[1]
    _check_params(params, {"timeout", "master_timeout"}, script_id)
    if cluster.scripts.pop(script_id, None) is None:
        raise EsHttpError(404, "resource_not_found_exception", f"stored script [{script_id}] does not exist")
    return 200, {"acknowledged": True}


# ---------------------------------------------------------------------------- bulk update


def check_update_body(body: dict, line: int) -> None:
    """Refuse a scripted-update body outside the subset: ``{script: {id, params}, upsert, scripted_upsert}``."""
    if "doc" in body and "script" in body:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: can't provide both script and doc;")
    unknown = sorted(set(body) - UPDATE_FIELDS)
    if unknown:
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [UpdateRequest] unknown field "
                          f"[{unknown[0]}] (the ES double supports [script], [upsert], [scripted_upsert] here)")
    script = body.get("script")
    if script is None:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: script or doc is missing;")
    if not isinstance(script, dict):
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [script] must be an object")
    if "source" in script:
        raise EsHttpError(400, "illegal_argument_exception",
                          "[script] with [source]: the ES double runs no inline scripts; store the script and "
                          "send [script: {id, params}]")
    if "lang" in script:
        raise EsHttpError(400, "illegal_argument_exception", "lang cannot be specified for stored scripts")
    unknown = sorted(set(script) - {"id", "params"})
    if unknown:
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [script] unknown field [{unknown[0]}]")
    if not isinstance(script.get("id"), str) or not script["id"]:
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [script] needs a string [id]")
    if not isinstance(script.get("params", {}), dict):
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [script] [params] must be an object")
    if "upsert" in body and not isinstance(body["upsert"], dict):
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [upsert] must be an object")
    if not isinstance(body.get("scripted_upsert", False), bool):
        raise EsHttpError(400, "x_content_parse_exception", f"[{line}:2] [scripted_upsert] must be a boolean")
    if body.get("scripted_upsert") and "upsert" not in body:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: the ES double needs an [upsert] document with [scripted_upsert];")


def apply_update(scripts: dict[str, dict], doc_id: str, old: dict | None, body: dict) -> tuple[str, dict | None]:
    """``("created" | "updated" | "noop", new source or None)`` for a checked scripted-update body."""
    if old is None and "upsert" not in body:
        raise EsHttpError(404, "document_missing_exception", f"[{doc_id}]: document missing")
    if old is None and not body.get("scripted_upsert"):
        return "created", copy.deepcopy(body["upsert"])
    script_id = body["script"]["id"]
    stored = scripts.get(script_id)
    if stored is None:
        raise EsHttpError(404, "resource_not_found_exception", f"unable to find script [{script_id}] in cluster state")
    source = copy.deepcopy(old if old is not None else body["upsert"])
    if not KNOWN_SCRIPTS[source_sha256(stored["source"])](source, body["script"].get("params", {}), script_id):
        return "noop", None
    return ("updated" if old is not None else "created"), source
