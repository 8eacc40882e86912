"""Replay dead letters after a fix: from a dead-letter subscription, or from backfill files.

    imagescore replay --subscription projects/P/subscriptions/DLQ --topic projects/P/topics/RAW
                      [--reason R ...] [--stage S ...] [--max N] [--dry-run]
    imagescore replay --files 'out/deadletter*.jsonl' (--output items.jsonl | --topic projects/P/topics/RAW)
                      [--reason R ...] [--stage S ...] [--max N] [--dry-run]

From a subscription, each dead letter is republished with its original payload as data,
and acknowledged only after its publish succeeded (a letter whose payload was cut to fit a
publish request, ``payload_truncated``, is never replayed: it is named and left there), so an interrupted replay loses
nothing (at worst a message is replayed twice, which the stale-update guard makes
harmless). Letters that do not match ``--reason``/``--stage``, and every letter in
``--dry-run``, are handed back unacknowledged for later. The republished message keeps
the original message id and publish time in attributes, so an item without
``updated_at`` keeps its original version and a replay cannot overtake newer data.

From files (the backfill's ``deadletter*.jsonl``), payloads are written one per line as
backfill input (``--output``; ``imagescore backfill --source files --input FILE``), or
published to a topic.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator

from cli_common import ArgumentParser, UsageError, job_main

# transforms.deadletter_topic and transforms.messages import Beam: the functions that replay import them.

PULL_BATCH = 100


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="imagescore replay", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--subscription", help="dead-letter subscription, projects/P/subscriptions/S")
    source.add_argument("--files", help="backfill dead-letter files, a glob (deadletter*.jsonl)")
    parser.add_argument("--topic", help="republish to this topic, projects/P/topics/T (the job's input topic)")
    parser.add_argument("--output", help="with --files: write the payloads to this JSONL file (backfill input)")
    parser.add_argument("--reason", action="append", default=[], help="replay only this reason (repeatable)")
    parser.add_argument("--stage", action="append", default=[], help="replay only this stage (repeatable)")
    parser.add_argument("--max", type=int, default=None, help="replay at most N letters")
    parser.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="with --subscription: stop after this long without a new letter")
    return parser


def _matches(attributes: dict, reasons: list[str], stages: list[str]) -> bool:
    return (not reasons or attributes.get("reason") in reasons) and (not stages or attributes.get("stage") in stages)


def _origin(letter: dict) -> dict[str, str]:
    """The attributes a replayed message carries: where the original came from."""
    from transforms.messages import MESSAGE_ID, PUBLISH_TIME
    return {name: str(letter[field]) for field, name in (("message_id", MESSAGE_ID), ("publish_time", PUBLISH_TIME))
            if letter.get(field)}


def replay_subscription(subscription: str, topic: str | None, *, reasons: list[str], stages: list[str],
                        limit: int | None, dry_run: bool, idle_seconds: float = 5.0,
                        out=sys.stdout) -> dict[str, int]:
    """Republish matching dead letters from ``subscription`` to ``topic``; ack each after its publish succeeded."""
    from google.cloud import pubsub_v1

    from pipelines.pubsub_emulator import check_pubsub, subscriber_client
    from transforms.deadletter_topic import TRUNCATED, to_record

    check_pubsub([("--subscription", "subscription", subscription)]
                 + ([("--topic", "topic", topic)] if topic and not dry_run else []))
    subscriber = subscriber_client()   # dead letters up to Pub/Sub's 10 MB, from the emulator too
    publisher = pubsub_v1.PublisherClient() if not dry_run else None
    totals = {"replayed": 0, "skipped": 0, "failed": 0}
    seen: set[str] = set()
    last_new = time.monotonic()
    try:
        while limit is None or totals["replayed"] < limit:
            response = subscriber.pull(subscription=subscription, max_messages=PULL_BATCH, timeout=idle_seconds)
            received = response.received_messages
            again = [m.ack_id for m in received if m.message.message_id in seen]
            if again:   # handed back earlier (other reason, dry run): leave them for later
                subscriber.modify_ack_deadline(subscription=subscription, ack_ids=again, ack_deadline_seconds=0)
            fresh = [m for m in received if m.message.message_id not in seen]
            if not fresh:
                if time.monotonic() - last_new > idle_seconds:
                    break
                continue
            last_new = time.monotonic()
            to_ack, to_nack, pending = [], [], []
            for received_message in fresh:
                message = received_message.message
                seen.add(message.message_id)
                attributes = dict(message.attributes)
                if not _matches(attributes, reasons, stages):
                    totals["skipped"] += 1
                    to_nack.append(received_message.ack_id)
                elif TRUNCATED in attributes:   # its first bytes only: replayed, it would be a new, wrong message
                    totals["skipped"] += 1
                    to_nack.append(received_message.ack_id)
                    print(f"replay: letter {message.message_id} (item {attributes.get('item_id', '?')}) holds only "
                          f"the first {len(message.data):,} of its {attributes[TRUNCATED]} bytes "
                          f"({TRUNCATED}): it cannot be replayed as it came; left on the subscription. Recover "
                          "the record from its producer and publish it again", file=sys.stderr)
                elif limit is not None and totals["replayed"] + len(pending) >= limit:
                    to_nack.append(received_message.ack_id)
                elif dry_run:
                    totals["replayed"] += 1
                    to_nack.append(received_message.ack_id)
                    print(f"would replay {attributes.get('item_id', '?')} ({attributes.get('stage')}/"
                          f"{attributes.get('reason')}): {message.data[:80]!r}", file=out)
                else:
                    letter = to_record(message.data, attributes)
                    future = publisher.publish(topic, message.data, **_origin(letter))
                    pending.append((received_message.ack_id, future))
            for ack_id, future in pending:
                try:
                    future.result(timeout=60)
                except Exception as exc:  # noqa: BLE001 -- left unacknowledged, redelivered later
                    totals["failed"] += 1
                    to_nack.append(ack_id)
                    print(f"replay: publish failed, left on the subscription: {exc}", file=sys.stderr)
                else:
                    totals["replayed"] += 1
                    to_ack.append(ack_id)
            if to_ack:
                subscriber.acknowledge(subscription=subscription, ack_ids=to_ack)
            if to_nack:
                subscriber.modify_ack_deadline(subscription=subscription, ack_ids=to_nack, ack_deadline_seconds=0)
    finally:
        subscriber.close()
    return totals


def read_letters(pattern: str) -> Iterator[dict]:
    """Dead-letter records from the backfill's JSONL files; a line that is not a record names its file and line."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise UsageError(f"no files match --files {pattern!r}")
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise UsageError(f"{path}:{number} is not a dead-letter record ({exc})") from None
                if not isinstance(record, dict) or "payload" not in record:
                    raise UsageError(f"{path}:{number} has no 'payload'; is it a deadletter*.jsonl file?")
                yield record


def replay_files(pattern: str, *, output: str | None, topic: str | None, reasons: list[str], stages: list[str],
                 limit: int | None, dry_run: bool, out=sys.stdout) -> dict[str, int]:
    """Backfill dead letters -> a JSONL file of their payloads (backfill input), or a topic."""
    from transforms.deadletter_topic import payload_bytes
    totals = {"replayed": 0, "skipped": 0, "failed": 0}
    letters = read_letters(pattern)
    first = next(letters, None)  # a glob that matches nothing is refused before anything is opened
    publisher = None
    if topic and not dry_run:
        from google.cloud import pubsub_v1

        from pipelines.pubsub_emulator import check_pubsub
        check_pubsub([("--topic", "topic", topic)])
        publisher = pubsub_v1.PublisherClient()
    if output and not dry_run:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    sink = open(output, "wb") if output and not dry_run else None
    try:
        for letter in itertools.chain([first] if first is not None else [], letters):
            if limit is not None and totals["replayed"] >= limit:
                break
            if not _matches({"reason": letter.get("reason"), "stage": letter.get("stage")}, reasons, stages):
                totals["skipped"] += 1
                continue
            data = payload_bytes(letter)
            if dry_run:
                print(f"would replay {letter.get('id') or '?'} ({letter.get('stage')}/{letter.get('reason')}): "
                      f"{data[:80]!r}", file=out)
            elif sink is not None:
                sink.write(data.rstrip(b"\n") + b"\n")
            else:
                publisher.publish(topic, data, **_origin(letter)).result(timeout=60)
            totals["replayed"] += 1
    finally:
        if sink is not None:
            sink.close()
    return totals


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max is not None and args.max < 1:
        raise UsageError("--max must be at least 1")
    if args.subscription:
        if not args.topic and not args.dry_run:
            raise UsageError("--subscription needs --topic (the job's input topic), or --dry-run")
        if args.output:
            raise UsageError("--output is for --files; from a subscription, replay to --topic")
        totals = replay_subscription(args.subscription, args.topic, reasons=args.reason, stages=args.stage,
                                     limit=args.max, dry_run=args.dry_run, idle_seconds=args.idle_seconds)
    else:
        if bool(args.output) == bool(args.topic) and not args.dry_run:
            raise UsageError("--files needs exactly one of --output FILE.jsonl and --topic")
        totals = replay_files(args.files, output=args.output, topic=args.topic, reasons=args.reason,
                              stages=args.stage, limit=args.max, dry_run=args.dry_run)
    verb = "would replay" if args.dry_run else "replayed"
    print(f"replay: {verb} {totals['replayed']:,}, skipped {totals['skipped']:,} (other reason or stage), "
          f"failed {totals['failed']:,} (left on the subscription)")
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    job_main("python -m pipelines.replay", run)
