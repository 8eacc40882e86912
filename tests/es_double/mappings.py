"""Mappings and index settings: what the double checks, merges and stores, and how a value fits a field.

A mapping option or setting Elasticsearch knows but the double does not implement is refused by
name (``ES_*`` below lists them), so the error says which side lacks it.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from tests.es_double.dates import DEFAULT_DATE_FORMAT, ISO_RE, DateFormat, from_parts, time_value_ms
from tests.es_double.errors import NOT_IMPLEMENTED, illegal_argument, mapper_error

NUMERIC_TYPES = {"float": float, "half_float": float, "double": float, "long": int, "integer": int,
                 "short": int, "byte": int}
FIELD_TYPES = set(NUMERIC_TYPES) | {"keyword", "text", "date", "boolean", "object", "rank_feature"}
# Things Elasticsearch knows that the double refuses (so the error can say which side lacks them).
ES_FIELD_TYPES = {"nested", "flattened", "geo_point", "geo_shape", "ip", "dense_vector", "sparse_vector",
                  "scaled_float", "unsigned_long", "date_nanos", "wildcard", "match_only_text", "constant_keyword",
                  "binary", "alias", "completion", "search_as_you_type", "token_count", "version", "histogram",
                  "integer_range", "long_range", "float_range", "double_range", "date_range", "ip_range",
                  "rank_features", "semantic_text", "percolator", "join", "point", "shape",
                  "aggregate_metric_double", "counted_keyword"}
ES_FIELD_PARAMS = {"index", "doc_values", "store", "null_value", "copy_to", "analyzer", "search_analyzer",
                   "normalizer", "meta", "ignore_malformed", "scaling_factor", "subobjects", "enabled", "norms",
                   "similarity", "term_vector", "eager_global_ordinals", "index_options", "locale", "boost",
                   "position_increment_gap", "fielddata", "on_script_error", "script", "dynamic",
                   "time_series_dimension", "time_series_metric", "split_queries_on_whitespace",
                   "search_quote_analyzer", "index_prefixes", "index_phrases", "fielddata_frequency_filter"}
ES_ROOT_PARAMS = {"subobjects", "_source", "dynamic_templates", "numeric_detection", "dynamic_date_formats",
                  "runtime", "_routing", "_field_names", "enabled", "_data_stream_timestamp", "_size"}
# What each field type accepts besides ``type`` (all implemented).
FIELD_PARAMS = {"date": {"format"}, "keyword": {"ignore_above", "fields"}, "text": {"fields"},
                "boolean": set(), "object": {"properties"}, "rank_feature": {"positive_score_impact"},
                **{t: {"coerce"} for t in NUMERIC_TYPES}}
INDEX_SETTINGS = ("number_of_replicas", "number_of_shards", "refresh_interval")
DYNAMIC_TEXT = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


def _validate_field(name: str, spec: Any, path: str, multi: bool = False) -> dict:
    full = path + name
    if name == "":
        raise illegal_argument("field name cannot be an empty string")
    if "." in name:
        raise mapper_error(f"field name [{full}] has a dot: Elasticsearch expands it into objects, which the ES "
                           "double does not; write the field as an object with [properties]")
    if not isinstance(spec, dict):
        raise mapper_error(f"Expected map for property [fields] on field [{full}] but got a {type(spec).__name__}")
    type_ = spec.get("type", "object" if "properties" in spec and not multi else None)
    if type_ is None:
        raise mapper_error(f"No type specified for field [{full}]")
    if type_ not in FIELD_TYPES or (multi and type_ not in ("keyword", "text")):
        note = f"; {NOT_IMPLEMENTED}" if type_ in ES_FIELD_TYPES or multi else ""
        raise mapper_error(f"No handler for type [{type_}] declared on field [{full}]{note}")
    for key in sorted(set(spec) - {"type"} - FIELD_PARAMS[type_]):
        if key in ES_FIELD_PARAMS or key in {p for ps in FIELD_PARAMS.values() for p in ps}:
            raise mapper_error(f"parameter [{key}] on mapper [{full}] of type [{type_}]: {NOT_IMPLEMENTED}")
        raise mapper_error(f"unknown parameter [{key}] on mapper [{full}] of type [{type_}]")
    if "format" in spec:
        try:
            DateFormat(spec["format"])
        except ValueError as exc:
            raise mapper_error(f"Error parsing [format] on field [{full}]: {exc}") from None
    for flag in ("coerce", "positive_score_impact"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise mapper_error(f"Failed to parse mapping: [{flag}] on mapper [{full}] must be true or false")
    if "ignore_above" in spec and (not isinstance(spec["ignore_above"], int) or spec["ignore_above"] < 0):
        raise mapper_error(f"[ignore_above] must be positive, got [{spec['ignore_above']}] on mapper [{full}]")
    checked = dict(spec)
    if "fields" in spec:
        if multi or not isinstance(spec["fields"], dict):
            raise mapper_error(f"[fields] on mapper [{full}] must be an object of sub-fields, not nested in one")
        checked["fields"] = {sub: _validate_field(sub, s, full + ".", multi=True) for sub, s in spec["fields"].items()}
    if "properties" in spec:
        checked["properties"] = _validate_properties(spec["properties"], full + ".")
    return checked


def _validate_properties(properties: Any, path: str = "") -> dict:
    if not isinstance(properties, dict):
        raise mapper_error(f"[properties] must be an object{f' on [{path[:-1]}]' if path else ''}")
    return {name: _validate_field(name, spec, path) for name, spec in properties.items()}


def validate_mappings(mappings: Any) -> dict:
    """The mappings as sent, checked; anything the double does not implement is refused by name."""
    if mappings is None:
        return {}
    if not isinstance(mappings, dict):
        raise mapper_error("Failed to parse mapping: mappings must be an object")
    for key in sorted(set(mappings) - {"properties", "dynamic", "_meta", "date_detection"}):
        if key in ES_ROOT_PARAMS:
            raise mapper_error(f"Root mapping parameter [{key}]: {NOT_IMPLEMENTED}")
        raise mapper_error(f"Root mapping definition has unsupported parameters:  "
                           f"[{key} : {json.dumps(mappings[key])}]")
    checked = dict(mappings)
    if "dynamic" in mappings:
        value = str(mappings["dynamic"]).lower()
        if value == "runtime":
            raise mapper_error(f"[dynamic] [runtime]: {NOT_IMPLEMENTED}")
        if value not in ("true", "false", "strict"):
            raise mapper_error(f"Could not convert [dynamic.dynamic] to boolean: unknown value [{mappings['dynamic']}]")
        checked["dynamic"] = value  # Elasticsearch answers it as a string
    if "date_detection" in mappings and not isinstance(mappings["date_detection"], bool):
        raise mapper_error("[date_detection] must be true or false")
    if "_meta" in mappings and not isinstance(mappings["_meta"], dict):
        raise mapper_error("[_meta] must be an object")
    if "properties" in mappings:
        checked["properties"] = _validate_properties(mappings["properties"])
    return checked


def _merge_field(name: str, old: dict, new: dict) -> dict:
    old_type, new_type = old.get("type", "object"), new.get("type", "object")
    if old_type != new_type:
        raise illegal_argument(f"mapper [{name}] cannot be changed from type [{old_type}] to [{new_type}]")
    for key in ("format", "coerce", "ignore_above"):
        if key in old or key in new:
            if old.get(key) != new.get(key):
                raise illegal_argument(f"Mapper for [{name}] conflicts with existing mapper:\n\tCannot update "
                                       f"parameter [{key}] from [{old.get(key)}] to [{new.get(key)}]")
    merged = {**old, **new}
    if "properties" in old or "properties" in new:
        merged["properties"] = _merge_properties(old.get("properties", {}), new.get("properties", {}), name + ".")
    if "fields" in old or "fields" in new:
        merged["fields"] = _merge_properties(old.get("fields", {}), new.get("fields", {}), name + ".")
    return merged


def _merge_properties(current: dict, new: dict, path: str = "") -> dict:
    merged = dict(current)
    for name, spec in new.items():
        merged[name] = _merge_field(path + name, merged[name], spec) if name in merged else spec
    return merged


def merge_mappings(current: dict, new: dict) -> dict:
    """``new`` put onto ``current`` the way put-mapping does: fields added, a changed type refused."""
    merged = {**current, **{k: v for k, v in new.items() if k != "properties"}}
    if "properties" in current or "properties" in new:
        merged["properties"] = _merge_properties(current.get("properties", {}), new.get("properties", {}))
    return merged


def normalize_settings(settings: Any) -> dict[str, str]:
    """Index settings as Elasticsearch stores them: ``index.``-prefixed names, string values."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise illegal_argument("settings must be an object")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix if prefix.startswith("index.") else "index." + prefix] = value
    walk("", settings)
    normalized: dict[str, str] = {}
    for key, value in flat.items():
        name = key[len("index."):]
        if name not in INDEX_SETTINGS:
            raise illegal_argument(f"unknown setting [{key}] please check that any required plugins are installed, "
                                   f"or check the breaking changes documentation for removed settings (the ES "
                                   f"double knows only {['index.' + s for s in INDEX_SETTINGS]}; {NOT_IMPLEMENTED})")
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if name == "refresh_interval":
            time_value_ms(text, key)
        else:
            if not text.isdigit():
                raise illegal_argument(f"Failed to parse value [{text}] for setting [{key}]")
            if name == "number_of_shards" and text != "1":
                raise illegal_argument(f"[{key}] = [{text}]: the ES double holds every index in one shard; "
                                       f"{NOT_IMPLEMENTED}")
        normalized[name] = text
    return normalized


def nest_settings(settings: dict[str, str]) -> dict:
    """``{"index": {...}}``, the shape GET answers with."""
    return {"index": dict(settings)} if settings else {}


def dynamic_spec(value: Any, date_detection: bool) -> dict | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, str):
        match = ISO_RE.match(value)
        if date_detection and match and match.group("d"):
            try:
                from_parts(match.groupdict())
                return {"type": "date"}
            except ValueError:
                pass
        return copy.deepcopy(DYNAMIC_TEXT)
    if isinstance(value, dict):
        return {"properties": {}}
    if isinstance(value, list):
        return next((s for s in (dynamic_spec(v, date_detection) for v in value) if s), None)
    return None


def check_value(name: str, spec: dict, value: Any) -> None:
    """Raise ValueError(cause type, reason) when ``value`` cannot go into the field ``spec``."""
    type_ = spec.get("type", "object")
    if value is None:
        return
    if isinstance(value, list):
        if type_ == "rank_feature":
            raise ValueError("illegal_argument_exception", f"[rank_feature] fields do not support indexing multiple "
                             f"values for the same field [{name}] in the same document")
        for item in value:
            check_value(name, spec, item)
        return
    if type_ in NUMERIC_TYPES:
        if isinstance(value, (bool, dict)):
            raise ValueError("illegal_argument_exception", f"Current token ({type(value).__name__}) not numeric")
        if isinstance(value, str):
            if spec.get("coerce") is False:
                raise ValueError("illegal_argument_exception", "Cannot parse a string when coerce is false")
            try:
                float(value)
            except ValueError:
                raise ValueError("number_format_exception", f"For input string: \"{value}\"") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError("illegal_argument_exception", f"[{type_}] supports only finite values, but got [{value}]")
    elif type_ == "date":
        try:
            DateFormat(spec.get("format", DEFAULT_DATE_FORMAT)).parse(value)
        except ValueError as exc:
            raise ValueError("illegal_argument_exception", str(exc)) from None
    elif type_ == "rank_feature":  # Lucene's FeatureField: one finite, positive normal float per document
        if isinstance(value, float) and math.isinf(value):
            raise ValueError("illegal_argument_exception", f"featureValue must be finite, got: {value} for feature "
                             f"{name}")
        if isinstance(value, (bool, dict)) or not isinstance(value, (int, float)) or not value >= 1.1754944e-38:
            raise ValueError("illegal_argument_exception", f"featureValue must be a positive normal float, got: "
                             f"{value} for feature {name} which is less than the minimum positive normal float")
    elif type_ == "boolean":
        if not (isinstance(value, bool) or value in ("true", "false", "")):
            raise ValueError("illegal_argument_exception",
                             f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
    elif type_ in ("keyword", "text") and isinstance(value, dict):
        raise ValueError("illegal_argument_exception", "Can't get text on a START_OBJECT")


@dataclass(frozen=True)
class FieldRef:
    """A mapped field as a query sees it: its type, where its value lives in ``_source``, its mapping."""

    type: str
    path: str
    spec: dict

    def date_format(self) -> DateFormat:
        return DateFormat(self.spec.get("format", DEFAULT_DATE_FORMAT))

    def values(self, source: dict) -> list:
        values = _field_values(source, self.path)
        limit = self.spec.get("ignore_above")
        if limit is not None:  # longer strings are kept in _source but not indexed
            values = [v for v in values if not (isinstance(v, str) and len(v) > limit)]
        return values


def _field_values(source: dict, name: str) -> list:
    value: Any = source
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]
