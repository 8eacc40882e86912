"""What every endpoint module shares: its route table, and the checks of a request's parameters and body.

Each endpoint module has one ``ROUTES = Routes()`` and registers each handler beside its code::

    @ROUTES.route("GET", path="/*/_doc/*")
    def get_doc(cluster: Cluster, parts: list[str], params: dict, body: bytes) -> tuple[int, Any]: ...

A path segment ``*`` stands for a name (an index, an id, a template): any segment that does not
start with ``_``. Segments that start with ``_`` match only as written. ``server.py`` joins the
modules' tables; a request no table knows gets Elasticsearch's "no handler found" 400.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.es_double.dates import time_value_ms
from tests.es_double.errors import NOT_IMPLEMENTED, EsHttpError, illegal_argument, parsing_error
from tests.es_double.state import Cluster

COMMON_PARAMS = {"error_trace", "human", "pretty"}  # formatting only; filter_path would change answers

Handler = Callable[[Cluster, list[str], dict[str, str], bytes], tuple[int, Any]]
RouteKey = tuple[str, tuple[str, ...]]


def route_key(method: str, path: str) -> RouteKey:
    """``(method, segments)`` with every name segment (not starting with ``_``) as ``*``."""
    return method, tuple(p if p.startswith("_") else "*" for p in path.split("/") if p)


class Routes:
    """A route table: ``(method, path pattern)`` to handler."""

    def __init__(self) -> None:
        self.handlers: dict[RouteKey, Handler] = {}

    def route(self, *methods: str, path: str) -> Callable[[Handler], Handler]:
        """Register the decorated handler for each of ``methods`` on ``path``; a second handler is an error."""
        def register(handler: Handler) -> Handler:
            for method in methods:
                self.add(route_key(method, path), handler)
            return handler
        return register

    def add(self, key: RouteKey, handler: Handler) -> None:
        if key in self.handlers:
            raise ValueError(f"two ES double handlers for {key[0]} /{'/'.join(key[1])}: "
                             f"{self.handlers[key].__module__}.{self.handlers[key].__name__} and "
                             f"{handler.__module__}.{handler.__name__}")
        self.handlers[key] = handler

    @classmethod
    def join(cls, *tables: Routes) -> Routes:
        joined = cls()
        for table in tables:
            for key, handler in table.handlers.items():
                joined.add(key, handler)
        return joined

    def find(self, method: str, path: str) -> Handler | None:
        return self.handlers.get(route_key(method, path))


def json_body(body: bytes, required: bool = True) -> Any:
    if not body:
        if required:
            raise parsing_error("request body is required")
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise EsHttpError(400, "x_content_parse_exception", f"failed to parse request body: {exc}") from None
    if not isinstance(value, dict):
        raise parsing_error("request body must be a JSON object")
    return value


def check_params(params: dict, allowed: set[str], path: str) -> None:
    """Elasticsearch's answer to an unknown URL parameter; the double also refuses ones it does not implement."""
    unknown = sorted(set(params) - allowed - COMMON_PARAMS)
    if unknown:
        raise illegal_argument(f"request [{path}] contains unrecognized parameter{'s' if len(unknown) > 1 else ''}: "
                               f"[{', '.join(unknown)}]")


def token(value: Any) -> str:
    """The name of the JSON token Elasticsearch's parser reports for ``value``."""
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, bool):
        return "VALUE_BOOLEAN"
    if isinstance(value, (int, float)):
        return "VALUE_NUMBER"
    return "VALUE_NULL" if value is None else "VALUE_STRING"


def flag(params: dict, name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false", ""):
        raise illegal_argument(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
    return value in ("true", "")


def refresh_policy(params: dict) -> bool:
    """Whether ``?refresh`` asks for the write to be visible when the call returns."""
    value = params.get("refresh", "false")
    if value not in ("true", "false", "", "wait_for"):
        raise illegal_argument(f"Unknown value for refresh: [{value}].")
    return value != "false"  # wait_for: the double refreshes at once instead of waiting for the next refresh


def expand_wildcards(params: dict) -> None:
    value = params.get("expand_wildcards", "open")
    if any(v not in ("open", "all") for v in value.split(",")):
        raise illegal_argument(f"[expand_wildcards] [{value}]: the ES double has only open, non-hidden indices; "
                               f"{NOT_IMPLEMENTED}")


def keep_alive_ms(value: Any) -> float:
    milliseconds = time_value_ms(value, "keep_alive")
    if milliseconds is None:
        raise parsing_error(f"failed to parse setting [keep_alive] with value [{value}] as a time value")
    return milliseconds


def shards(total: int = 1) -> dict:
    return {"total": total, "successful": total, "skipped": 0, "failed": 0}


def aliases_refused(aliases: Any, where: str) -> None:
    if aliases not in (None, {}):
        raise illegal_argument(f"[aliases] in {where}: the ES double has no index aliases; {NOT_IMPLEMENTED}")
