"""Errors in Elasticsearch's shape, and the wording the double uses to refuse what it does not implement.

Every module of the double raises :class:`EsHttpError`; the server renders it as Elasticsearch's
``{"error": {"root_cause": [...], "type", "reason", ...}, "status"}`` body.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

NOT_IMPLEMENTED = ("the ES double does not implement it: implement it in tests/es_double/, "
                   "with a test in tests/test_es_double_conformance.py, or do not send it")


class EsHttpError(Exception):
    """An error answer, rendered in Elasticsearch's shape."""

    def __init__(self, status: int, type_: str, reason: str, headers: dict | None = None, **extra: Any):
        super().__init__(f"{status} {type_}: {reason}")
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra
        self.headers = headers or {}

    def body(self) -> dict:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


class DropConnection(Exception):
    """An injected fault: close the socket without answering."""


def parsing_error(reason: str) -> EsHttpError:
    return EsHttpError(400, "parsing_exception", reason)


def illegal_argument(reason: str) -> EsHttpError:
    return EsHttpError(400, "illegal_argument_exception", reason)


def mapper_error(reason: str) -> EsHttpError:
    return EsHttpError(400, "mapper_parsing_exception", reason)


def index_missing(index: str, why: str = "") -> EsHttpError:
    return EsHttpError(404, "index_not_found_exception", f"no such index [{index}]{why}",
                       **{"resource.type": "index_or_alias", "resource.id": index, "index": index})


def _similarity(a: str, b: str) -> float:
    """Lucene's ``LevenshteinDistance.getDistance``: 1 - edits / longer length."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b), 1)


def unknown_field(parser: str, name: str, candidates: Iterable[str]) -> str:
    """Elasticsearch's ``SuggestingErrorOnUnknown`` message: ``[parser] unknown field [x] did you mean [y]?``."""
    scored = sorted((-_similarity(name, c), c) for c in candidates if _similarity(name, c) > 0.5)
    message = f"[{parser}] unknown field [{name}]"
    if len(scored) == 1:
        return f"{message} did you mean [{scored[0][1]}]?"
    if scored:
        return f"{message} did you mean any of [{', '.join(c for _, c in scored)}]?"
    return message
