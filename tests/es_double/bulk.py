"""``_bulk``: ``index`` and ``update`` actions (``doc``, ``doc_as_upsert``, ``detect_noop``, or a stored script).

A malformed line refuses the whole request, as in Elasticsearch; a failing action is an item error
and the rest of the request goes on. Scripted updates run in ``scripts.py``.
"""
from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.es_double import scripts
from tests.es_double.errors import (
    NOT_IMPLEMENTED,
    EsHttpError,
    illegal_argument,
    index_missing,
    unknown_field,
)
from tests.es_double.faults import error_type_for
from tests.es_double.rest import Routes, check_params, flag, refresh_policy, shards, token
from tests.es_double.state import Cluster, Doc, Index

ES_UPDATE_FIELDS = ["doc", "upsert", "doc_as_upsert", "script", "scripted_upsert", "detect_noop", "_source"]

ROUTES = Routes()


@dataclass
class BulkOp:
    """One parsed bulk action: ``kind`` names its handler in :data:`BULK_ACTIONS`."""

    kind: str
    index: str
    doc_id: str | None
    body: dict
    require_alias: bool


def _check_id_lengths(operations: list[BulkOp]) -> None:
    """Elasticsearch validates every item before running any: an ``_id`` over 512 UTF-8 bytes refuses the
    whole request (``DocWriteRequest.validateDocIdLength``), one numbered message per long id."""
    errors = [f"id [{op.doc_id}] is too long, must be no longer than 512 bytes but was: {size}"
              for op in operations if op.doc_id and (size := len(op.doc_id.encode("utf-8"))) > 512]
    if errors:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: " + "".join(f"{n}: {e};" for n, e in enumerate(errors, 1)))


def _line_error(position: int, line: bytes, key: str, message: str) -> EsHttpError:
    column = max(line.decode(errors="replace").find(json.dumps(key)), 0) + 1
    return EsHttpError(400, "x_content_parse_exception", f"[1:{column}] {message}", line=position + 1)


def parse_update_body(source: dict, position: int, line: bytes) -> dict:
    """An update's body: ``doc`` with ``doc_as_upsert``/``detect_noop``, or a stored ``script`` with
    ``upsert``/``scripted_upsert`` (checked by ``scripts.py``)."""
    for key in source:
        if key not in ES_UPDATE_FIELDS:
            raise _line_error(position, line, key, unknown_field("UpdateRequest", key, ES_UPDATE_FIELDS))
        if key not in UPDATE_FIELDS:
            raise _line_error(position, line, key, f"[UpdateRequest] field [{key}]: {NOT_IMPLEMENTED}")
    scripted = sorted(set(source) & scripts.UPDATE_FIELDS)
    if scripted:
        if "script" not in source and "doc" in source:
            raise _line_error(position, line, scripted[0],
                              f"[UpdateRequest] field [{scripted[0]}] with [doc]: {NOT_IMPLEMENTED}")
        scripts.check_update_body(source, position + 1)
        return source
    if not isinstance(source.get("doc"), dict):
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: script or doc is missing;")
    for key in ("doc_as_upsert", "detect_noop"):
        if key in source and not isinstance(source[key], bool):
            raise _line_error(position, line, key, f"[UpdateRequest] failed to parse field [{key}]")
    return source


# Extension points, one entry per bulk action kind: BULK_BODY_PARSERS checks an action's body line
# (a malformed one refuses the whole request), BULK_ACTIONS applies it to one document and returns the
# item's answer. UPDATE_FIELDS is what update bodies may carry; the rest of ES_UPDATE_FIELDS is refused.
UPDATE_FIELDS = {"doc", "doc_as_upsert", "detect_noop"} | scripts.UPDATE_FIELDS
BULK_BODY_PARSERS: dict[str, Callable[[dict, int, bytes], dict]] = {"index": lambda source, *_: source,
                                                                    "update": parse_update_body}


@ROUTES.route("POST", "PUT", path="/_bulk")
@ROUTES.route("POST", "PUT", path="/*/_bulk")
def bulk(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"refresh", "timeout", "wait_for_active_shards", "require_alias"}, "/" + "/".join(parts))
    refresh = refresh_policy(params)
    default_alias = flag(params, "require_alias")
    default_index = parts[0] if parts[0] != "_bulk" else None
    if not body.endswith(b"\n"):
        raise illegal_argument("The bulk request must be terminated by a newline [\\n]")
    started = time.monotonic()
    operations = _parse_bulk(body.split(b"\n")[:-1], default_index, default_alias)
    _check_id_lengths(operations)
    items = [_bulk_item(cluster, op) for op in operations]
    if refresh:
        for name in dict.fromkeys(op.index for op in operations):
            if name in cluster.indices:
                cluster.indices[name].refresh()
    return 200, {"took": int((time.monotonic() - started) * 1000),
                 "errors": any("error" in item[next(iter(item))] for item in items), "items": items}


def _parse_bulk(lines: list[bytes], default_index: str | None, default_alias: bool) -> list[BulkOp]:
    """Every action of the request; a malformed line refuses the whole request, as in Elasticsearch."""
    operations = []
    position = 0
    while position < len(lines):
        if not lines[position].strip():
            position += 1
            continue
        try:
            action = json.loads(lines[position])
        except ValueError:
            raise EsHttpError(400, "x_content_parse_exception",
                              f"[{position + 1}:1] Malformed action/metadata line") from None
        if not isinstance(action, dict) or not action:
            raise illegal_argument(f"Malformed action/metadata line [{position + 1}], expected FIELD_NAME but found "
                                   "[END_OBJECT]")
        if len(action) != 1:
            raise illegal_argument(f"Malformed action/metadata line [{position + 1}], expected END_OBJECT but found "
                                   "[FIELD_NAME]")
        if not isinstance(next(iter(action.values())), dict):
            raise illegal_argument(f"Malformed action/metadata line [{position + 1}], expected START_OBJECT but found "
                                   f"[{token(next(iter(action.values())))}]")
        (op, meta), = action.items()
        if op in ("create", "delete"):
            raise illegal_argument(f"Malformed action/metadata line [{position + 1}]: action [{op}]: "
                                   f"{NOT_IMPLEMENTED}")
        if op not in BULK_BODY_PARSERS:
            raise illegal_argument(f"Malformed action/metadata line [{position + 1}], expected one of [create, "
                                   f"delete, index, update] but found [{op}]")
        for key in meta:
            if key not in ("_index", "_id", "require_alias", "retry_on_conflict"):
                raise illegal_argument(f"Action/metadata line [{position + 1}] contains an unknown parameter [{key}]")
        if position + 1 >= len(lines):
            raise illegal_argument(f"Validation Failed: 1: no requests added or missing source for action line "
                                   f"[{position + 1}];")
        try:
            source = json.loads(lines[position + 1])
        except ValueError:
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 2}:1] Unexpected character") from None
        if not isinstance(source, dict):
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 2}:1] expected a JSON object")
        body = BULK_BODY_PARSERS[op](source, position + 1, lines[position + 1])
        index_name = meta.get("_index", default_index)
        if not index_name:
            raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
        doc_id = meta.get("_id")
        if op == "update" and (doc_id is None or doc_id == ""):
            raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
        require_alias = meta.get("require_alias", default_alias)
        operations.append(BulkOp(op, str(index_name), None if doc_id is None else str(doc_id), body,
                                 require_alias is True or require_alias == "true"))
        position += 2
    return operations


def _bulk_item(cluster: Cluster, op: BulkOp) -> dict:
    base = {"_index": op.index, "_id": op.doc_id}
    fault = cluster.take_item_fault(op.doc_id)
    if fault is not None:
        type_, reason = error_type_for(fault.status)
        return {op.kind: {**base, "status": fault.status,
                          "error": {"type": fault.error_type or type_, "reason": fault.reason or reason}}}
    index = None
    try:
        if op.require_alias:  # the double has no aliases, so every target fails the check
            raise index_missing(op.index,
                                f" and [require_alias] request flag is [true] and [{op.index}] is not an alias")
        index = cluster.write_target(op.index)
        result = BULK_ACTIONS[op.kind](cluster, index, op)
        base["_id"] = result.pop("_id", op.doc_id)
        return {op.kind: {**base, **result}}
    except EsHttpError as exc:
        error = {"type": exc.type, "reason": exc.reason, **exc.extra}
        if index is not None:
            error.setdefault("index_uuid", index.uuid)
            error.setdefault("index", op.index)
        return {op.kind: {**base, "status": exc.status, "error": error}}


def _written(doc: Doc, result: str, status: int) -> dict:
    return {"_version": doc.version, "result": result, "_shards": shards(), "_seq_no": doc.seq_no,
            "_primary_term": 1, "status": status}


def bulk_index(cluster: Cluster, index: Index, op: BulkOp) -> dict:
    if op.doc_id == "":
        raise illegal_argument("if _id is specified it must not be empty")
    doc_id = op.doc_id if op.doc_id is not None else base64.urlsafe_b64encode(uuid.uuid4().bytes[:15]).decode()
    doc, created = cluster.put_doc(index, doc_id, op.body)
    return {"_id": doc_id, **_written(doc, "created" if created else "updated", 201 if created else 200)}


def bulk_update(cluster: Cluster, index: Index, op: BulkOp) -> dict:
    assert op.doc_id
    old = index.docs.get(op.doc_id)
    if old is None and not (op.body.get("doc_as_upsert") or "upsert" in op.body):
        raise EsHttpError(404, "document_missing_exception", f"[{op.doc_id}]: document missing",
                          index_uuid=index.uuid, shard="0", index=index.name)
    if "script" in op.body:
        return _scripted_update(cluster, index, op, old)
    if old is None:
        doc, _ = cluster.put_doc(index, op.doc_id, copy.deepcopy(op.body["doc"]))
        return _written(doc, "created", 201)
    merged = _deep_merge(old.source, op.body["doc"])
    if merged == old.source and op.body.get("detect_noop", True):
        # A noop writes nothing: no new version and no new sequence number.
        return {"_version": old.version, "result": "noop", "_shards": {**shards(), "total": 0, "successful": 0},
                "_seq_no": old.seq_no, "_primary_term": 1, "status": 200}
    doc, _ = cluster.put_doc(index, op.doc_id, merged)
    return _written(doc, "updated", 200)


def _scripted_update(cluster: Cluster, index: Index, op: BulkOp, old: Doc | None) -> dict:
    """A stored-script update (or upsert), run by ``scripts.py``."""
    assert op.doc_id
    result, source = scripts.apply_update(cluster.scripts, op.doc_id, old.source if old else None, op.body)
    if result == "noop":  # as for a doc update: no new version and no new sequence number
        return {"_version": old.version if old else -1, "result": "noop",
                "_shards": {**shards(), "total": 0, "successful": 0},
                "_seq_no": old.seq_no if old else -2, "_primary_term": 1 if old else 0, "status": 200}
    doc, created = cluster.put_doc(index, op.doc_id, source)
    return _written(doc, result, 201 if created else 200)


BULK_ACTIONS: dict[str, Callable[[Cluster, Index, BulkOp], dict]] = {"index": bulk_index, "update": bulk_update}


def _deep_merge(old: dict, new: dict) -> dict:
    merged = copy.deepcopy(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
