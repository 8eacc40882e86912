"""Injected faults: error answers, dropped connections and per-item bulk errors, with Elasticsearch's wording."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Fault:
    status: int  # 0: drop the connection without an answer
    remaining: int | None  # None: forever
    path: re.Pattern | None = None
    method: str | None = None
    ids: frozenset | None = None
    error_type: str | None = None
    reason: str | None = None

    def applies(self, method: str, path: str) -> bool:
        return (self.path is None or bool(self.path.search(path))) and self.method in (None, method)

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining > 0:
            self.remaining -= 1
            return True
        return False


def error_type_for(status: int) -> tuple[str, str]:
    if status == 429:
        return ("es_rejected_execution_exception",
                ("rejected execution of coordinating operation [shard_detailed_coordinating_and_primary_bytes=0, "
                 "max_coordinating_and_primary_bytes=0]"))
    if status == 503:
        return "unavailable_shards_exception", "[items][0] primary shard is not active Timeout: [1m]"
    if status >= 500:
        return "internal_server_error", f"injected failure with status {status}"
    return "illegal_argument_exception", f"injected failure with status {status}"
