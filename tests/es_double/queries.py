"""Queries: ``bool``, ``term``, ``range``, ``exists``, ``match_all`` and ``script`` (the scripts ``painless.py``
knows), compiled to a match function.

Anything else is refused by name when the query is compiled, before any document is read.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.es_double.dates import DateFormat, date_math
from tests.es_double.errors import NOT_IMPLEMENTED, illegal_argument, parsing_error
from tests.es_double.mappings import NUMERIC_TYPES
from tests.es_double.painless import compile_script
from tests.es_double.state import Index


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", text.lower()) if t]


def _clauses(value: Any, kind: str) -> list:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise parsing_error(f"[bool] malformed [{kind}] clause")


def _single_field(body: Any, query: str) -> tuple[str, Any]:
    if not isinstance(body, dict) or len(body) != 1:
        found = sorted(body) if isinstance(body, dict) else body
        raise parsing_error(f"[{query}] query doesn't support multiple fields, found {found}")
    return next(iter(body.items()))


Matcher = Callable[[Index, dict], bool]


def compile_query(query: Any) -> Matcher:
    """Validate ``query`` and return ``match(index, source) -> bool``; anything outside the subset raises."""
    if not isinstance(query, dict) or len(query) != 1:
        raise parsing_error("query malformed, must start with a single query name")
    (kind, body), = query.items()
    if kind == "match_all":
        if not isinstance(body, dict) or set(body) - {"boost"}:
            raise parsing_error("[match_all] query malformed")
        return lambda index, source: True
    if kind == "bool":
        return _compile_bool(body)
    if kind == "term":
        return _compile_term(body)
    if kind == "range":
        return _compile_range(body)
    if kind == "exists":
        if not isinstance(body, dict) or set(body) - {"field", "boost"} or "field" not in body:
            raise parsing_error("[exists] query malformed, [field] is required")
        name = body["field"]

        def match_exists(index: Index, source: dict) -> bool:
            ref = index.field(name)
            return ref is not None and bool(ref.values(source))
        return match_exists
    if kind == "script":
        if not isinstance(body, dict) or set(body) - {"script", "boost"} or "script" not in body:
            raise parsing_error("[script] query malformed, [script] is required")
        script = compile_script(body["script"], "script")
        return lambda index, source: bool(script(index, source))
    raise parsing_error(f"unknown query [{kind}]; {NOT_IMPLEMENTED}")


def _compile_bool(body: Any) -> Matcher:
    if not isinstance(body, dict):
        raise parsing_error("[bool] query malformed")
    unknown = set(body) - {"filter", "must", "must_not", "should", "minimum_should_match", "boost"}
    if unknown:
        raise parsing_error(f"[bool] query does not support [{min(unknown)}]")
    must = [compile_query(q) for k in ("filter", "must") for q in _clauses(body.get(k, []), k)]
    must_not = [compile_query(q) for q in _clauses(body.get("must_not", []), "must_not")]
    should = [compile_query(q) for q in _clauses(body.get("should", []), "should")]
    minimum = body.get("minimum_should_match", 0 if must or must_not else 1 if should else 0)
    if isinstance(minimum, str) and minimum.isdigit():
        minimum = int(minimum)
    if not isinstance(minimum, int) or isinstance(minimum, bool):
        raise parsing_error(f"[bool] minimum_should_match [{minimum}]: only a whole number; {NOT_IMPLEMENTED}")

    def match_bool(index: Index, source: dict) -> bool:
        return (all(m(index, source) for m in must) and not any(m(index, source) for m in must_not)
                and sum(bool(m(index, source)) for m in should) >= minimum)
    return match_bool


def _compile_term(body: Any) -> Matcher:
    name, spec = _single_field(body, "term")
    insensitive = False
    if isinstance(spec, dict):
        unknown = set(spec) - {"value", "boost", "case_insensitive"}
        if unknown or "value" not in spec:
            raise parsing_error(f"[term] query does not support [{min(unknown or {'(missing value)'})}]")
        insensitive = spec.get("case_insensitive", False) is True
        spec = spec["value"]
    if isinstance(spec, (dict, list)) or spec is None:
        raise parsing_error("[term] query malformed, no start_object after query name")
    wanted = spec

    def match_term(index: Index, source: dict) -> bool:
        ref = index.field(name)
        if ref is None:
            return False  # an unmapped field is not indexed, so nothing matches
        if ref.type == "rank_feature":
            raise illegal_argument("Queries on [rank_feature] fields are not supported")
        for value in ref.values(source):
            if ref.type == "text":
                if str(wanted).lower() in _tokens(str(value)) if insensitive else str(wanted) in _tokens(str(value)):
                    return True
            elif ref.type in NUMERIC_TYPES:
                try:
                    if float(value) == float(wanted):
                        return True
                except (TypeError, ValueError):
                    raise parsing_error(f"failed to create query: For input string: \"{wanted}\"") from None
            elif ref.type == "date":
                if ref.date_format().parse(value) == date_math(wanted, ref.date_format()):
                    return True
            elif ref.type == "boolean":
                if str(value).lower() == str(wanted).lower():
                    return True
            elif (str(value).lower() == str(wanted).lower()) if insensitive else str(value) == str(wanted):
                return True
        return False
    return match_term


def _compile_range(body: Any) -> Matcher:
    name, spec = _single_field(body, "range")
    if not isinstance(spec, dict):
        raise parsing_error("[range] query malformed, no start_object after query name")
    unknown = set(spec) - {"gte", "gt", "lte", "lt", "format", "boost"}
    if unknown:
        raise parsing_error(f"[range] query does not support [{min(unknown)}]"
                            + (f"; {NOT_IMPLEMENTED}" if min(unknown) in ("time_zone", "relation") else ""))
    bounds = {k: spec[k] for k in ("gte", "gt", "lte", "lt") if spec.get(k) is not None}
    try:
        query_format = DateFormat(spec["format"]) if "format" in spec else None
    except ValueError as exc:
        raise parsing_error(f"[range] {exc}") from None

    def match_range(index: Index, source: dict) -> bool:
        ref = index.field(name)
        if ref is None:
            return False
        if ref.type == "date":
            field_format = ref.date_format()
            limits = {k: date_math(v, query_format or field_format) for k, v in bounds.items()}
            convert: Callable[[Any], float] = field_format.parse
        elif ref.type in NUMERIC_TYPES:
            try:
                limits = {k: float(v) for k, v in bounds.items()}
            except (TypeError, ValueError):
                raise parsing_error(f"[range] bounds {bounds} are not numbers for the numeric field [{name}]") from None
            convert = float
        elif ref.type == "rank_feature":
            raise illegal_argument(f"Field [{name}] of type [rank_feature] does not support range queries")
        else:
            raise parsing_error(f"[range] on a [{ref.type}] field [{name}]: {NOT_IMPLEMENTED}")
        for value in ref.values(source):
            v = convert(value)
            if all({"gte": v >= lim, "gt": v > lim, "lte": v <= lim, "lt": v < lim}[k] for k, lim in limits.items()):
                return True
        return False
    return match_range
