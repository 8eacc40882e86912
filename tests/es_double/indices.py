"""Indices: create, delete and check one; put and get its mapping; update its settings; refresh.

Creating an index goes through ``Cluster.create_index``, the one place that applies templates.
"""
from __future__ import annotations

import copy
from typing import Any

from tests.es_double.errors import illegal_argument, index_missing, parsing_error
from tests.es_double.mappings import merge_mappings, normalize_settings, validate_mappings
from tests.es_double.rest import Routes, aliases_refused, check_params, flag, json_body, shards
from tests.es_double.state import Cluster

ROUTES = Routes()


@ROUTES.route("PUT", path="/*")
def put_index(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"wait_for_active_shards", "timeout", "master_timeout"}, "/" + parts[0])
    spec = json_body(body, required=False)
    for key in spec:
        if key not in ("mappings", "settings", "aliases"):
            raise parsing_error(f"unknown key [{key}] for create index")
    aliases_refused(spec.get("aliases"), f"create index [{parts[0]}]")
    cluster.create_index(parts[0], validate_mappings(spec.get("mappings")), normalize_settings(spec.get("settings")))
    return 200, {"acknowledged": True, "shards_acknowledged": True, "index": parts[0]}


@ROUTES.route("DELETE", path="/*")
def delete_index(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"ignore_unavailable", "timeout", "master_timeout"}, "/" + parts[0])
    if any(c in parts[0] for c in "*?") or parts[0] == "_all":  # action.destructive_requires_name
        raise illegal_argument("Wildcard expressions or all indices are not allowed")
    for index in cluster.resolve(parts[0], must_exist=not flag(params, "ignore_unavailable")):
        del cluster.indices[index.name]
    return 200, {"acknowledged": True}


@ROUTES.route("HEAD", path="/*")
def index_exists(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, set(), "/" + parts[0])
    return (200 if cluster.resolve(parts[0], must_exist=False) else 404), None


@ROUTES.route("PUT", "POST", path="/*/_mapping")
def put_mapping(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"timeout", "master_timeout", "write_index_only"}, "/" + "/".join(parts))
    indices = cluster.resolve(parts[0])
    if not indices:
        raise index_missing(parts[0])
    spec = json_body(body)
    if list(spec) == ["_doc"]:
        raise illegal_argument("Types cannot be provided in put mapping requests")
    mappings = validate_mappings(spec)
    merged = [(index, merge_mappings(index.mappings, mappings)) for index in indices]  # check all, then change
    for index, new in merged:
        index.mappings = new
    return 200, {"acknowledged": True}


@ROUTES.route("GET", path="/*/_mapping")
def get_mapping(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"master_timeout", "local"}, "/" + "/".join(parts))
    return 200, {i.name: {"mappings": copy.deepcopy(i.mappings)} for i in cluster.resolve(parts[0])}


@ROUTES.route("PUT", path="/*/_settings")
def put_settings(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"timeout", "master_timeout"}, "/" + "/".join(parts))
    indices = cluster.resolve(parts[0])
    settings = normalize_settings(json_body(body))
    if "number_of_shards" in settings:
        raise illegal_argument(f"Can't update non dynamic settings [[index.number_of_shards]] for open indices "
                               f"[{', '.join(f'[{i.name}/{i.uuid}]' for i in indices)}]")
    now = cluster.clock()
    for index in indices:
        if "refresh_interval" in settings:
            index.scheduled_refresh(now)  # what the old interval made visible stays visible
            index.refresh_base = now
        index.settings.update(settings)
    return 200, {"acknowledged": True}


@ROUTES.route("POST", "GET", path="/_refresh")
@ROUTES.route("POST", "GET", path="/*/_refresh")
def refresh(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, set(), "/" + "/".join(parts))
    indices = cluster.resolve(parts[0]) if parts[0] != "_refresh" else list(cluster.indices.values())
    for index in indices:
        index.refresh()
    return 200, {"_shards": shards(len(indices))}
