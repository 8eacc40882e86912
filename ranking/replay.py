"""Replay logged SERPs under a boosting formula, ranking each window as Elasticsearch would.

The logs hold, per shown item, the engine's ``score`` and (when the query
named its relevance clause) the ``relevance_score``, and, when known, the
item's ``image_provenance`` (what an ``ai_factor`` below 1 discounts). The replay builds the
real query with :mod:`es.boosting` around stand-ins that return those logged
figures, and evaluates it with the scoring mirror :mod:`es.function_score`:

* multiplicative / power: the base query's score is the logged ``score``;
* additive / rank_feature: the relevance clause scores the logged
  ``relevance_score`` and the other factors are ``score / relevance_score``
  (freshness and other dynamic factors are taken as logged).

Every SERP is ranked by the new score, ties broken by logged position. The
logs should come from searches without the boost (the control arm).
"""
from __future__ import annotations

import dataclasses
import glob
import json

import numpy as np
from elasticsearch.dsl import Q
from elasticsearch.dsl import function as F

from es.boosting import (
    RANK_FEATURE_FIELD,
    RELEVANCE_NAME,
    SCORE_FIELD,
    Boost,
    build_query,
    rescore_search,
)
from es.function_score import evaluate, search_scores
from es.mapping import PROVENANCE_FIELD, RANK_FEATURE_FLOOR

LOGGED_SCORE, LOGGED_RELEVANCE, OTHER_FACTORS = "_logged_score", "_logged_relevance", "_other_factors"


@dataclasses.dataclass
class Logs:
    """Logged SERPs as flat arrays, one row per shown item, rows grouped by SERP and sorted by position."""

    serp_ids: list[str]
    platforms: np.ndarray   # per SERP (object)
    queries: np.ndarray     # per SERP (object)
    serp: np.ndarray        # per item: SERP index
    item_ids: np.ndarray    # per item (object)
    position: np.ndarray    # per item: logged position (int)
    clicked: np.ndarray     # per item (bool)
    score: np.ndarray       # per item: logged engine score (float64 holding float32 values)
    relevance: np.ndarray   # per item: logged relevance_score, NaN where the log has none
    image_urls: np.ndarray  # per item (object), for the sample page
    image_score: np.ndarray | None = None  # per item: float32, NaN where no score is known
    image_provenance: np.ndarray | None = None  # per item (object): the logged image_provenance, None where unknown

    @property
    def n_serps(self) -> int:
        return len(self.serp_ids)

    def logged_rank(self) -> np.ndarray:
        """1-based rank of each item in its logged SERP (positions may start at 0 or skip)."""
        starts = np.searchsorted(self.serp, np.arange(self.n_serps))
        return np.arange(len(self.serp)) - starts[self.serp] + 1


def _files(pattern: str, flag: str) -> list[str]:
    """The files a comma-separated list of globs matches; a ValueError naming the flag when none does."""
    files = sorted({f for part in pattern.split(",") if part for f in glob.glob(part.strip())})
    if not files:
        raise ValueError(f"{flag} {pattern!r} matches no files; check the path, and quote the glob so the "
                         "shell does not expand it")
    return files


def _number(value, where: str, name: str, required: bool) -> float:
    if value is None:
        if required:
            raise ValueError(f"{where} has no {name!r}; log the engine score of every shown item "
                             f"(hit._score) to replay it")
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


_COLUMNS = ("serp_ids", "platforms", "queries", "serp", "item_ids", "position", "clicked", "score", "relevance",
            "urls", "provenance")


def _read_lines(path: str) -> dict[str, list]:
    """One log file, line by line, naming the line (and item) of the first bad input."""
    out: dict[str, list] = {name: [] for name in _COLUMNS}
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
                items = sorted(raw["items"], key=lambda it: it["position"])
                sid, platform = str(raw["serp_id"]), str(raw.get("platform", "unknown"))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{where}: not a SERP log line ({type(exc).__name__}: {exc}); expected "
                                 f"serp_id, platform, items[] with item_id, position, clicked, score") from None
            index = len(out["serp_ids"])
            out["serp_ids"].append(sid)
            out["platforms"].append(platform)
            out["queries"].append(str(raw.get("query", "")))
            for it in items:
                at = f"{where} (SERP {sid!r}, item {it.get('item_id')!r})"
                out["serp"].append(index)
                out["item_ids"].append(it["item_id"])
                out["position"].append(it["position"])
                out["clicked"].append(bool(it.get("clicked", False)))
                out["score"].append(_number(it.get("score"), at, "score", True))
                out["relevance"].append(_number(it.get("relevance_score"), at, "relevance_score", False))
                out["urls"].append(it.get("image_url", ""))
                provenance = it.get(PROVENANCE_FIELD)
                out["provenance"].append(None if provenance is None else str(provenance))
    return out


def _read_columnar(path: str) -> dict[str, list | np.ndarray] | None:
    """The same file through pyarrow's JSON reader (tens of times faster); None when anything looks off,
    so that :func:`_read_lines` reads it again and names the bad line."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pa_json
    try:
        table = pa_json.read_json(path)
        items = table["items"].combine_chunks()
        flat = pc.list_flatten(items)
        fields = {f.name for f in flat.type}
        if not {"item_id", "position", "score"} <= fields or table["serp_id"].null_count or items.null_count:
            return None
        parent = pc.list_parent_indices(items).to_numpy()
        score = flat.field("score").cast(pa.float64())
        relevance = (flat.field("relevance_score").cast(pa.float64()) if "relevance_score" in fields
                     else pa.nulls(len(flat), pa.float64()))
        position = flat.field("position").cast(pa.int64())
        clicked = flat.field("clicked").cast(pa.bool_()) if "clicked" in fields else pa.nulls(len(flat), pa.bool_())
        urls = flat.field("image_url").cast(pa.string()) if "image_url" in fields else pa.nulls(len(flat), pa.string())
        item_ids = flat.field("item_id").cast(pa.string())
        provenance = (flat.field(PROVENANCE_FIELD).cast(pa.string()) if PROVENANCE_FIELD in fields
                      else pa.nulls(len(flat), pa.string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError):
        return None
    if score.null_count or position.null_count or item_ids.null_count:
        return None
    score_np = score.to_numpy(zero_copy_only=False)
    rel_np = relevance.fill_null(np.nan).to_numpy(zero_copy_only=False)
    if not (np.isfinite(score_np).all() and (score_np >= 0).all()
            and (np.isnan(rel_np) | (np.isfinite(rel_np) & (rel_np >= 0))).all()):
        return None
    position_np = position.to_numpy()
    order = np.lexsort((position_np, parent))  # items by position inside each SERP
    n = table.num_rows
    column = (lambda name, default: table[name].cast(pa.string()).fill_null(default).to_pylist()
              if name in table.column_names else [default] * n)
    return {"serp_ids": table["serp_id"].cast(pa.string()).to_pylist(), "platforms": column("platform", "unknown"),
            "queries": column("query", ""), "serp": parent[order], "item_ids": np.array(item_ids.to_pylist(), object)[order],
            "position": position_np[order], "clicked": clicked.fill_null(False).to_numpy(zero_copy_only=False)[order],
            "score": score_np[order], "relevance": rel_np[order],
            "urls": np.array(urls.fill_null("").to_pylist(), object)[order],
            "provenance": np.array(provenance.to_pylist(), object)[order]}


def load_logs(pattern: str) -> Logs:
    """Read search-log JSONL (one SERP per line, the simulate/collect log format) from a glob."""
    parts = []
    for path in _files(pattern, "--logs"):
        parts.append(_read_columnar(path) or _read_lines(path))
    if not sum(len(p["serp_ids"]) for p in parts):
        raise ValueError(f"--logs {pattern!r} holds no SERPs (the files are empty); point it at the search "
                         "logs, one JSON object per SERP and line")
    offsets = np.cumsum([0] + [len(p["serp_ids"]) for p in parts])
    cat = {name: (np.concatenate([np.asarray(p[name]) for p in parts]) if parts else np.array([]))
           for name in _COLUMNS if name not in ("serp_ids", "serp")}
    serp = np.concatenate([np.asarray(p["serp"], np.int64) + off for p, off in zip(parts, offsets)])
    provenance = np.concatenate([np.asarray(p["provenance"], object) for p in parts])
    return Logs([sid for p in parts for sid in p["serp_ids"]], cat["platforms"].astype(object),
                cat["queries"].astype(object), serp, cat["item_ids"].astype(object),
                cat["position"].astype(np.int64), cat["clicked"].astype(bool), cat["score"].astype(np.float64),
                cat["relevance"].astype(np.float64), cat["urls"].astype(object),
                image_provenance=provenance if any(v is not None for v in provenance.tolist()) else None)


def load_scores(pattern: str) -> dict[str, float]:
    """``id`` -> ``image_score`` from JSONL files such as the backfill's ``scores*.jsonl``."""
    scores: dict[str, float] = {}
    for path in _files(pattern, "--scores"):
        with open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    key, value = str(raw["id"]), raw["image_score"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: expected a JSON object with id and image_score "
                                     f"({type(exc).__name__}: {exc})") from None
                scores[key] = _number(value, f"{path}:{lineno} (id {key!r})", "image_score", True)
    return scores


def attach_scores(logs: Logs, scores: dict[str, float]) -> Logs:
    """Set each item's image score (float32, as the index stores it); NaN where none is known."""
    logs.image_score = np.array([scores.get(i, np.nan) for i in logs.item_ids.tolist()], dtype=np.float32)
    return logs


def _logged_field_query(field: str, name: str | None = None) -> Q:
    """A query whose score is a logged figure: ``function_score`` replacing match_all's score by the field."""
    kwargs = {"_name": name} if name else {}
    return Q("function_score", query=Q("match_all"), functions=[F.SF("field_value_factor", field=field)],
             boost_mode="replace", **kwargs)


def replay_query(boost: Boost, rescore_window: int | None = None) -> dict:
    """The search body the replay evaluates: the real builder around stand-ins for the logged scores."""
    if boost.formula in ("multiplicative", "power"):
        base = _logged_field_query(LOGGED_SCORE)
    else:
        base = Q("function_score", query=_logged_field_query(LOGGED_RELEVANCE, RELEVANCE_NAME),
                 functions=[F.SF("field_value_factor", field=OTHER_FACTORS)], boost_mode="multiply")
    if rescore_window:
        return rescore_search(base, boost, rescore_window).to_dict()
    return {"query": build_query(base, boost).to_dict()}


def replay_docs(logs: Logs, boost: Boost) -> dict[str, np.ndarray]:
    """The document fields the mirror reads; errors clearly when the formula needs what the logs lack."""
    if logs.image_score is None:
        raise ValueError("attach image scores (attach_scores) before replaying")
    docs = {LOGGED_SCORE: logs.score, SCORE_FIELD: logs.image_score}
    if boost.ai_factor != 1:
        if logs.image_provenance is None:
            raise ValueError(f"ai_factor {boost.ai_factor:g} needs each item's image_provenance in the logs, and "
                             "no logged item has one; log the indexed image_provenance with each shown item, "
                             "or replay with ai_factor 1")
        docs[PROVENANCE_FIELD] = logs.image_provenance
    if boost.formula in ("additive", "rank_feature"):
        lacking = np.isnan(logs.relevance)
        if lacking.any():
            i = int(np.argmax(lacking))
            raise ValueError(f"the {boost.formula} formula needs each item's relevance_score, but SERP "
                             f"{logs.serp_ids[logs.serp[i]]!r} item {logs.item_ids[i]!r} (and {int(lacking.sum()) - 1} "
                             f"more) has none; name the relevance clause and log it with include_named_queries_score,"
                             f" or replay the multiplicative formula")
        zero = logs.relevance == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            docs[OTHER_FACTORS] = np.where(zero, 0.0, logs.score / logs.relevance)
        docs[LOGGED_RELEVANCE] = logs.relevance
    if boost.formula == "rank_feature":  # as the indexing jobs write it: max(score, floor); none when unscored
        docs[RANK_FEATURE_FIELD] = np.maximum(logs.image_score, np.float32(RANK_FEATURE_FLOOR)).astype(np.float32)
    return docs


def replay_scores(logs: Logs, boost: Boost, rescore_window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rescored)`` of every logged item under ``boost``.

    With a rescore window, the items a SERP showed within its first
    ``rescore_window`` logged ranks are rescored and the rest keep the logged score.
    """
    body = replay_query(boost, rescore_window)
    docs = replay_docs(logs, boost)
    if not rescore_window:
        _, scores = evaluate(body["query"], docs)
        return scores, np.zeros(len(scores), bool)
    spec = dict(body["rescore"])
    spec["window_size"] = len(logs.serp)  # every row is rescored here; the per-SERP window is applied below
    _, scores, _ = search_scores({**body, "rescore": spec}, docs)
    in_window = logs.logged_rank() <= rescore_window
    return np.where(in_window, scores, logs.score.astype(np.float32)), in_window


def new_ranks(logs: Logs, scores: np.ndarray, rescored: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each item in its SERP under ``scores``; ties keep the logged order.

    One stable sort of a 64-bit key (SERP, rescored first, score descending):
    rows are already in (SERP, logged position) order, so equal keys keep it.
    Scores are non-negative float32, whose bit patterns sort like their values.
    """
    s = np.asarray(scores, np.float32)
    if (s < 0).any() or np.isnan(s).any():
        raise ValueError("scores must be non-negative numbers (Elasticsearch refuses anything else)")
    bits = np.where(s == 0, np.float32(0), s).view(np.int32).astype(np.int64)
    outside = np.zeros(len(s), np.int64) if rescored is None else (~rescored).astype(np.int64)
    key = (logs.serp.astype(np.int64) << 33) | (outside << 32) | (np.int64(0x7FFFFFFF) - bits)
    order = np.argsort(key, kind="stable")
    ranks = np.empty(len(order), np.int64)
    starts = np.searchsorted(logs.serp, np.arange(logs.n_serps))
    ranks[order] = np.arange(len(order)) - starts[logs.serp[order]] + 1
    return ranks
