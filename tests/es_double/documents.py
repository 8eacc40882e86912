"""Single documents: ``PUT|POST /idx/_doc/id`` (index or create), ``GET /idx/_doc/id`` and ``_mget``.

Reads are real time by default, as in Elasticsearch: they see the latest write, refreshed or not.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Any

from tests.es_double.errors import EsHttpError, illegal_argument
from tests.es_double.rest import Routes, check_params, flag, json_body, refresh_policy, shards
from tests.es_double.state import Cluster

ROUTES = Routes()


@ROUTES.route("PUT", "POST", path="/*/_doc/*")
def index_doc(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"refresh", "timeout", "op_type", "wait_for_active_shards"}, "/" + "/".join(parts))
    refresh = refresh_policy(params)
    op_type = params.get("op_type", "index")
    if op_type not in ("index", "create"):
        raise illegal_argument(f"opType must be 'create' or 'index', found: [{op_type}]")
    name, doc_id = parts[0], parts[2]
    index = cluster.write_target(name)
    if op_type == "create" and doc_id in index.docs:
        old = index.docs[doc_id]
        raise EsHttpError(409, "version_conflict_engine_exception",
                          f"[{doc_id}]: version conflict, document already exists (current version [{old.version}])",
                          index_uuid=index.uuid, shard="0", index=name)
    doc, created = cluster.put_doc(index, doc_id, json_body(body))
    if refresh:
        index.refresh()
    return (201 if created else 200), {"_index": name, "_id": doc_id, "_version": doc.version,
                                       "result": "created" if created else "updated", "_shards": shards(),
                                       "_seq_no": doc.seq_no, "_primary_term": 1}


@ROUTES.route("GET", path="/*/_doc/*")
def get_doc(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"realtime"}, "/" + "/".join(parts))
    name, doc_id = parts[0], parts[2]
    index = cluster.existing(name)
    # GET is real time by default: it sees the latest write, refreshed or not.
    realtime = flag({"realtime": params.get("realtime", "true")}, "realtime")
    doc = index.docs.get(doc_id) if realtime else cluster.visible(index).get(doc_id)
    if doc is None:
        return 404, {"_index": name, "_id": doc_id, "found": False}
    return 200, {"_index": name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                 "_primary_term": 1, "found": True, "_source": copy.deepcopy(doc.source)}


@ROUTES.route("POST", "GET", path="/*/_mget")
def mget(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    """``POST /idx/_mget`` with ``{"ids": [...]}``, real time like GET; ``_source_includes`` keeps top-level
    fields (patterns allowed). The streaming analyzer reads stored scores this way."""
    check_params(params, {"realtime", "_source_includes"}, "/" + "/".join(parts))
    name = parts[0]
    index = cluster.existing(name)
    request = json_body(body)
    ids = request.get("ids") if isinstance(request, dict) else None
    if not isinstance(ids, list) or not ids or set(request) - {"ids"}:
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: no documents to get;")
    realtime = flag({"realtime": params.get("realtime", "true")}, "realtime")
    visible = index.docs if realtime else cluster.visible(index)
    includes = [f for f in params.get("_source_includes", "").split(",") if f]
    docs = []
    for doc_id in map(str, ids):
        doc = visible.get(doc_id)
        if doc is None:
            docs.append({"_index": name, "_id": doc_id, "found": False})
            continue
        source = copy.deepcopy(doc.source)
        if includes:
            source = {k: v for k, v in source.items() if any(fnmatch.fnmatchcase(k, p) for p in includes)}
        docs.append({"_index": name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                     "_primary_term": 1, "found": True, "_source": source})
    return 200, {"docs": docs}
