"""A marketplace update stream made from the demo catalog, with what the index must hold after it.

Rounds are published one after another; each waits until the job has accounted for
the one before, so "an update older than the indexed document" really arrives after
that document was indexed.

* Round 1: every good item's first version; bursts of price edits (published in a
  shuffled order, so versions arrive out of order); re-sent messages; the catalog's
  broken and hostile items (a valid record whose image fails is indexed without a score,
  its image dead-lettered; the rest are dead letters only); a message that is not UTF-8.
* Round 2: price-only edits (the stored score is reused), image changes (scored
  again), deletes, and updates older than the indexed version (stale).
* Round 3: an update of a deleted item that is older than its delete (stale: the
  tombstone keeps the listing deleted).

:class:`Expected` is the newest state of every item, computed from the versions alone.
"""
from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta

from es.timestamps import iso
from pipelines.catalog import CatalogEntry

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> str:
    return iso(BASE + timedelta(seconds=seconds))


@dataclasses.dataclass
class Expected:
    """What the index must hold for one item, and the dead-letter reason for a broken one.

    ``version`` None with ``unscored``: the record has no ``updated_at`` (its publish time is its version).
    """

    version: str | None = None
    image_url: str | None = None
    deleted: bool = False
    deadletter: str | None = None
    unscored: bool = False  # a valid record whose image failed: indexed without any score fields

    @property
    def indexed(self) -> bool:
        return self.deadletter is None or self.unscored


@dataclasses.dataclass
class UpdateStream:
    rounds: list[list[bytes]]
    expected: dict[str, Expected]
    kinds: dict[str, int]   # how many messages of each kind (for the demo's summary)

    @property
    def total(self) -> int:
        return sum(len(r) for r in self.rounds)


def build_update_stream(entries: list[CatalogEntry], *, seed: int = 7, burst_share: float = 0.3,
                        resend_share: float = 0.1, price_share: float = 0.4, image_share: float = 0.1,
                        delete_share: float = 0.1, stale_share: float = 0.1) -> UpdateStream:
    """The stream for ``entries`` (their ``record`` lines; ``expect`` says which are broken)."""
    rng = random.Random(seed)
    rounds: list[list[bytes]] = [[], [], []]
    expected: dict[str, Expected] = {}
    kinds: dict[str, int] = {}

    def send(round_: int, kind: str, payload: bytes) -> None:
        rounds[round_].append(payload)
        kinds[kind] = kinds.get(kind, 0) + 1

    good = [json.loads(e.record) for e in entries if e.expect in ("scored", "skipped")]
    urls = [record["image_urls"][0] for record in good]
    for entry in entries:
        if entry.expect in ("scored", "skipped"):
            continue
        record_id = _id_of(entry.record)
        if record_id:
            expected[record_id] = Expected(deadletter=entry.expect, unscored=_valid_record(entry.record))
        send(0, "broken or hostile", entry.record.encode("utf-8"))
    send(0, "not UTF-8", b'{"id": "latin-1", "title": "caf\xe9"}')

    later_round: list[tuple[int, str, bytes]] = []
    for record in good:
        item_id = record["id"]
        first = dict(record, updated_at=_at(10))
        versions = [first]
        if rng.random() < burst_share:
            versions += [dict(record, updated_at=_at(10 + k), price=record["price"] + 100 * k) for k in (1, 2, 3)]
        burst = versions[:]
        rng.shuffle(burst)
        for version in burst:
            send(0, "first version or burst edit", json.dumps(version).encode())
        newest = versions[-1]
        if rng.random() < resend_share:
            send(0, "re-sent", json.dumps(newest).encode())
        state = Expected(version=newest["updated_at"], image_url=newest["image_urls"][0])
        roll = rng.random()
        if roll < price_share:
            edit = dict(newest, updated_at=_at(100), price=newest["price"] + 1)
            later_round.append((1, "price-only edit", json.dumps(edit).encode()))
            state = Expected(version=edit["updated_at"], image_url=state.image_url)
        elif roll < price_share + image_share:
            url = rng.choice([u for u in urls if u != state.image_url])
            edit = dict(newest, updated_at=_at(100), image_urls=[url])
            later_round.append((1, "image change", json.dumps(edit).encode()))
            state = Expected(version=edit["updated_at"], image_url=url)
        elif roll < price_share + image_share + delete_share:
            later_round.append((1, "delete", json.dumps({"id": item_id, "deleted": True,
                                                         "updated_at": _at(200)}).encode()))
            stale = dict(newest, updated_at=_at(150), title="after the delete, but older than it")
            later_round.append((2, "stale after delete", json.dumps(stale).encode()))
            state = Expected(version=_at(200), deleted=True)
        elif roll < price_share + image_share + delete_share + stale_share:
            stale = dict(newest, updated_at=_at(5), title="older than the indexed version")
            later_round.append((1, "older than indexed", json.dumps(stale).encode()))
        expected[item_id] = state
    for round_, kind, payload in later_round:
        send(round_, kind, payload)
    for batch in rounds[1:]:
        rng.shuffle(batch)
    return UpdateStream([r for r in rounds if r], expected, kinds)


def _valid_record(record: str) -> bool:
    """Whether the job's parser takes ``record`` (so only its image can fail)."""
    from transforms.deadletter import Rejected
    from transforms.items import parse_item  # imports Beam: only the demo's run needs it
    try:
        parse_item(record)
    except Rejected:
        return False
    return True


def _id_of(record: str) -> str | None:
    try:
        value = json.loads(record).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
