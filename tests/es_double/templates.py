"""Composable index templates (``/_index_template/<name>``): settings and mappings a new index starts from.

``Cluster.create_index`` applies the best-matching template; only ``index_patterns``, ``priority``,
``version``, ``_meta`` and a ``template`` of ``settings`` and ``mappings`` are implemented.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Any

from tests.es_double.errors import NOT_IMPLEMENTED, EsHttpError, illegal_argument, unknown_field
from tests.es_double.mappings import nest_settings, normalize_settings, validate_mappings
from tests.es_double.rest import Routes, aliases_refused, check_params, flag, json_body
from tests.es_double.state import Cluster

ROUTES = Routes()


@ROUTES.route("PUT", "POST", path="/_index_template/*")
def put_template(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"create", "master_timeout", "cause"}, "/" + "/".join(parts))
    name = parts[1]
    spec = json_body(body)
    known = ["index_patterns", "template", "priority", "composed_of", "version", "_meta", "data_stream",
             "allow_auto_create", "ignore_missing_component_templates", "deprecated"]
    for key in spec:
        if key not in known:
            raise EsHttpError(400, "x_content_parse_exception",
                              "[1:2] " + unknown_field("index_template", key, known))
        if key in ("data_stream", "allow_auto_create", "ignore_missing_component_templates", "deprecated") or (
                key == "composed_of" and spec[key]):
            raise EsHttpError(400, "x_content_parse_exception", f"[index_template] [{key}]: {NOT_IMPLEMENTED}")
    patterns = spec.get("index_patterns")
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: index patterns are missing;")
    template = spec.get("template") or {}
    if not isinstance(template, dict):
        raise EsHttpError(400, "x_content_parse_exception", "[template] must be an object")
    for key in template:
        if key not in ("mappings", "settings", "aliases", "lifecycle", "data_stream_options"):
            raise EsHttpError(400, "x_content_parse_exception",
                              "[1:2] " + unknown_field("template", key, ["mappings", "settings", "aliases"]))
        if key not in ("mappings", "settings", "aliases"):
            raise EsHttpError(400, "x_content_parse_exception", f"[template] [{key}]: {NOT_IMPLEMENTED}")
    aliases_refused(template.get("aliases"), f"index template [{name}]")
    stored_template: dict[str, Any] = {}
    if "settings" in template:
        stored_template["settings"] = nest_settings(normalize_settings(template["settings"]))
    if "mappings" in template:
        stored_template["mappings"] = validate_mappings(template["mappings"])
    priority = spec.get("priority")
    if priority is not None and (not isinstance(priority, int) or priority < 0):
        raise illegal_argument(f"index template priority requires a non-negative integer, got [{priority}]")
    if flag(params, "create") and name in cluster.templates:
        raise illegal_argument(f"index template [{name}] already exists")
    for other_name, other in cluster.templates.items():
        if other_name != name and other.get("priority", 0) == (priority or 0) and any(
                fnmatch.fnmatchcase(p, q) or fnmatch.fnmatchcase(q, p)
                for p in patterns for q in other["index_patterns"]):
            raise illegal_argument(f"index template [{name}] has index patterns {patterns} matching patterns from "
                                   f"existing templates [{other_name}] with patterns ({other_name} => "
                                   f"{other['index_patterns']}) that have the same priority [{priority or 0}], "
                                   "multiple index templates may not match during index creation, please use a "
                                   "different priority")
    stored: dict[str, Any] = {"index_patterns": list(patterns), "template": stored_template,
                              "composed_of": list(spec.get("composed_of", []))}
    for key in ("priority", "version", "_meta"):
        if key in spec:
            stored[key] = spec[key]
    cluster.templates[name] = stored
    return 200, {"acknowledged": True}


@ROUTES.route("GET", path="/_index_template/*")
@ROUTES.route("GET", path="/_index_template")
def get_template(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"master_timeout", "local"}, "/" + "/".join(parts))
    pattern = parts[1] if len(parts) > 1 else "*"
    names = [n for n in sorted(cluster.templates) if fnmatch.fnmatchcase(n, pattern)]
    if not names and not any(c in pattern for c in "*?"):
        raise EsHttpError(404, "resource_not_found_exception", f"index template matching [{pattern}] not found")
    return 200, {"index_templates": [{"name": n, "index_template": copy.deepcopy(cluster.templates[n])}
                                     for n in names]}


@ROUTES.route("DELETE", path="/_index_template/*")
def delete_template(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"master_timeout", "timeout"}, "/" + "/".join(parts))
    if cluster.templates.pop(parts[1], None) is None:
        raise EsHttpError(404, "resource_not_found_exception", f"index_template [{parts[1]}] missing")
    return 200, {"acknowledged": True}
