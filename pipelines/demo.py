"""``imagescore demo``: the whole backfill, offline, on a sample catalog.

It builds a reproducible catalog (see :mod:`pipelines.catalog`), serves its
images from 127.0.0.1, runs the backfill on Beam's in-process FnApiRunner
(the local runner, :mod:`pipelines.local_runner`) with the default model into
files, and draws a contact sheet of the images ranked by score.
"""
from __future__ import annotations

import contextlib
import glob
import html
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image, ImageDraw

from cli_common import ArgumentParser, UsageError, job_main
from es.names import AI_PROVENANCE_VALUES

AI_MARK = (200, 0, 160)  # the frame and label of an image whose metadata says AI made it
THUMB = 128
COLUMNS = 12
LINE = 14  # pixel height of one text line of the broken-items list in the PNG


def read_jsonl(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as handle:
            rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def _local_image(url: str, root: Path) -> Path | None:
    path = urlparse(url).path
    candidate = root / path.lstrip("/")
    return candidate if path.startswith("/images/") and candidate.is_file() else None


def contact_sheet(scores: list[dict], dead: list[dict], catalog: dict[str, dict], root: Path, out: Path) -> tuple[Path, Path]:
    """Write ``contact_sheet.html`` and ``contact_sheet.png``: images ranked by score, then the broken items.

    An image whose ``image_provenance`` says AI made it is framed and labelled ``AI`` with the detail."""
    ranked = sorted(scores, key=lambda s: -s["image_score"])
    broken_items = sorted(dead, key=lambda d: (d["stage"], d["reason"], str(d.get("id") or "")))
    cells = []
    rows = (len(ranked) + COLUMNS - 1) // COLUMNS
    grid_height = rows * (THUMB + 16)
    sheet = Image.new("RGB", (COLUMNS * THUMB, grid_height + (len(broken_items) + 2) * LINE + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for rank, score in enumerate(ranked):
        record = catalog.get(score["id"], {})
        path = _local_image(record.get("image_urls", [""])[0], root)
        title = html.escape(record.get("title", ""))
        rel = os.path.relpath(path, out) if path else ""
        ai = score.get("image_provenance") in AI_PROVENANCE_VALUES
        flag = (f'<br><span class="ai">AI: {html.escape(score["image_provenance"])} '
                f'{html.escape(score.get("image_provenance_detail") or "")}</span>') if ai else ""
        cells.append(f'<figure{" class=ai" if ai else ""}><img src="{html.escape(rel)}" loading="lazy" '
                     f'width="{THUMB}" height="{THUMB}">'
                     f'<figcaption>#{rank + 1} <b>{score["image_score"]:.3f}</b><br>{html.escape(score["id"])}'
                     f'<br><small>{title}</small>{flag}</figcaption></figure>')
        if path:
            with Image.open(path) as img:
                thumb = img.convert("RGB")
                thumb.thumbnail((THUMB, THUMB))
            x, y = (rank % COLUMNS) * THUMB, (rank // COLUMNS) * (THUMB + 16)
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            draw.text((x + 4, y + THUMB + 2), f"#{rank + 1} {score['image_score']:.3f}", fill="black")
            if ai:
                draw.rectangle((x + 1, y + 1, x + THUMB - 2, y + THUMB - 2), outline=AI_MARK, width=3)
                draw.text((x + THUMB - 22, y + THUMB + 2), "AI", fill=AI_MARK)
    y = grid_height + 4
    draw.text((4, y), f"{len(broken_items)} broken and hostile items (id, stage, reason):", fill="black")
    for d in broken_items:
        y += LINE
        draw.text((4, y), f"{d.get('id') or '(no id)'}   {d['stage']}   {d['reason']}", fill=(170, 0, 0))
    broken = "".join(
        f"<tr><td>{html.escape(str(d.get('id') or '—'))}</td><td>{html.escape(d['stage'])}</td>"
        f"<td><code>{html.escape(d['reason'])}</code></td><td>{html.escape(d['error'])}</td></tr>"
        for d in broken_items)
    page = f"""<!doctype html><meta charset="utf-8"><title>imagescore demo: contact sheet</title>
<style>body{{font:14px sans-serif;margin:2em}} figure{{display:inline-block;width:{THUMB}px;margin:4px;vertical-align:top}}
img{{object-fit:contain;background:#eee}} figure.ai img{{outline:3px solid rgb{AI_MARK}}} .ai{{color:rgb{AI_MARK}}} figcaption{{font-size:11px}} td{{padding:2px 8px;border-bottom:1px solid #ddd;vertical-align:top;overflow-wrap:anywhere}}</style>
<h1>Images ranked by image_score</h1><p>{len(ranked)} scored by <code>{html.escape(ranked[0]['image_score_model'] if ranked else '')}</code>,
highest first. {len(dead)} items could not be scored (below). Framed <span class="ai">AI</span>: the image's metadata
says AI made it (<code>image_provenance</code>).</p>
{''.join(cells)}
<h2>Broken and hostile items</h2><table><tr><th>id</th><th>stage</th><th>reason</th><th>error</th></tr>{broken}</table>
"""
    html_path, png_path = out / "contact_sheet.html", out / "contact_sheet.png"
    html_path.write_text(page)
    sheet.save(png_path)
    return html_path, png_path


def index_catalog(entries: list, es_url: str, index: str) -> tuple[list[dict], Counter]:
    """Store the catalog's well-formed items in ``index``, as an item indexer would.

    Records an indexer would refuse (broken JSON, no id, a date that is not a
    date) stay out; the rest, hostile URLs included, go in for the backfill.
    Returns the indexed records and the refused ones counted by reason.
    """
    from elasticsearch import helpers

    from es.client import EsConfig, make_client
    from es.mapping import score_properties
    docs, refused = [], Counter()
    for entry in entries:
        try:
            record = json.loads(entry.record)
        except ValueError:
            refused["malformed_json"] += 1
            continue
        if not record.get("id"):
            refused["missing_id"] += 1
        elif entry.expect == "bad_date":
            refused["bad_date"] += 1
        else:
            docs.append({"_index": index, "_id": record["id"], "_source": record})
    client = make_client(EsConfig.from_env(url=es_url))
    try:
        if not client.indices.exists(index=index):
            client.indices.create(index=index, mappings={"properties": {
                "created_at": {"type": "date"}, "title": {"type": "text"}, **score_properties()}})
        helpers.bulk(client, docs, refresh="wait_for")
    finally:
        client.close()
    return [doc["_source"] for doc in docs], refused


def _check_cluster(es_url: str) -> None:
    """The cluster answers at ``--es-url``, before the catalog is drawn; else one usage line naming it."""
    from es.client import EsError, make_client, scrubbed_errors, usage_message
    from pipelines.options import ElasticsearchOptions, job_options
    config = job_options(["--es-url", es_url]).view_as(ElasticsearchOptions).es_config()
    client = make_client(config)
    try:
        with scrubbed_errors(f"asking {config.safe_url()} who it is"):
            client.info()
    except EsError as exc:
        raise UsageError(usage_message(exc, config)) from None
    finally:
        client.close()


def _reasons(counts: Counter | dict) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n)


def es_summary(indexed: list[dict], refused: Counter, totals: dict[str, int], since: datetime) -> list[str]:
    """Lines that account for every catalog item in the Elasticsearch run: not indexed, not read back,
    written, not found when writing, or dead-lettered (by reason)."""
    from es.timestamps import parse_iso
    read = totals.get("items_read", 0)
    old = sorted(r["id"] for r in indexed if parse_iso(r["created_at"], "created_at") < since)
    unexplained = len(indexed) - read - len(old)
    lines = [f"  catalog {len(indexed) + sum(refused.values())} items: indexed {len(indexed)}"
             + (f", not indexed {sum(refused.values())} (an item indexer refuses them: {_reasons(refused)})"
                if refused else "")]
    not_read = [f"{len(old)} created before the window, which the query filters out ({', '.join(old)})"] if old else []
    if unexplained > 0:
        not_read.append(f"{unexplained} already scored by this model, which the source skips")
    lines.append(f"  read back {read} of {len(indexed)} indexed" + (f"; not read back: {'; '.join(not_read)}"
                                                                   if not_read else ""))
    dead = {name[len("deadletter_"):]: n for name, n in totals.items() if name.startswith("deadletter_")}
    lines.append(f"  of those {read}: written {totals.get('es_written', 0)}, not found when writing "
                 f"{totals.get('es_missing', 0)}, dead-lettered {sum(dead.values())}"
                 + (f" ({_reasons(dead)})" if dead else ""))
    return lines


def run(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="imagescore demo", description=__doc__)
    parser.add_argument("--output", default="demo_output", help="where the catalog, scores and contact sheet go")
    parser.add_argument("--seed", type=int, default=7, help="catalog seed (the catalog is reproducible)")
    parser.add_argument("--products", type=int, default=160, help="procedurally drawn product photos")
    parser.add_argument("--model", default="handcrafted", help="--model passed to the backfill")
    parser.add_argument("--es-url", help="also index the catalog into this Elasticsearch and run the backfill "
                                         "against it (credentials from ES_API_KEY or ES_USERNAME/ES_PASSWORD)")
    parser.add_argument("--es-index", default="imagescore-demo", help="index for --es-url (created if missing)")
    args, beam_args = parser.parse_known_args(argv)
    # Imported once the flags are read, so --help does not wait for Beam.
    from pipelines import backfill
    from pipelines.catalog import ImageServer, build_catalog, write_catalog
    from pipelines.options import job_options
    from pipelines.report import counters
    from transforms.inference import score_model_info
    # The rest goes to the backfill: refuse a typo now, before the catalog is drawn.
    demo_flags = tuple(flag for action in parser._actions for flag in action.option_strings)
    days = job_options(beam_args, also_known=demo_flags).view_as(backfill.BackfillOptions).days
    try:
        score_model_info(args.model)  # a bad --model is refused before the catalog is drawn
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if args.es_url:
        _check_cluster(args.es_url)

    out = Path(args.output).resolve()
    root = out / "catalog"
    for pattern in ("scores*", "bulk*", "deadletter/*", "deadletter-es/*"):
        for stale in glob.glob(str(out / pattern)):
            os.remove(stale)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    with ImageServer(root) as server:
        entries = build_catalog(root, server.url, seed=args.seed, products=args.products, now=now)
        items_path = root / "items.jsonl"
        write_catalog(entries, items_path)
        print(f"catalog: {len(entries)} items ({sum(e.expect == 'scored' for e in entries)} photos, "
              f"{sum(e.expect != 'scored' for e in entries)} broken or hostile) served from {server.url}")
        file_result = backfill.run(["--source", "files", "--input", str(items_path), "--output", str(out),
                      "--es-index", args.es_index, "--model", args.model, "--allow-image-hosts", server.host_port,
                      "--now", now.isoformat(), *beam_args])
        if args.es_url:
            indexed, refused = index_catalog(entries, args.es_url, args.es_index)
            es_log = out / "backfill-es.log"
            print(f"\nindexed {len(indexed)} catalog items into {args.es_index}; scoring them from the index "
                  f"(counters: {es_log})")
            with open(es_log, "w", encoding="utf-8") as log_file, contextlib.redirect_stdout(log_file):
                es_result = backfill.run(["--source", "es", "--es-url", args.es_url, "--es-index", args.es_index,
                                          "--deadletter", str(out / "deadletter-es"), "--model", args.model,
                                          "--allow-image-hosts", server.host_port, "--now", now.isoformat(),
                                          *beam_args])
            es_lines = es_summary(indexed, refused, counters(es_result), now - timedelta(days=days))

    scores = read_jsonl(str(out / "scores*.jsonl"))
    dead = read_jsonl(str(out / "deadletter" / "deadletter*.jsonl"))
    catalog = {}
    for entry in entries:
        try:
            record = json.loads(entry.record)
        except ValueError:
            continue
        catalog[str(record.get("id"))] = record
    html_path, png_path = contact_sheet(scores, dead, catalog, root, out)
    skipped = len(entries) - len(scores) - len(dead)
    print(f"\nscored {len(scores)}, dead-lettered {len(dead)}, skipped {skipped} of {len(entries)} items")
    print(f"  scores:        {out}/scores*.jsonl")
    print(f"  bulk NDJSON:   {out}/bulk*.ndjson  (guarded score updates: store the guard script, then POST to "
          f"$ES_URL/_bulk; docs/stale-guard.md)")
    print(f"  dead letters:  {out}/deadletter/deadletter*.jsonl")
    print(f"  contact sheet: {html_path}\n                 {png_path}")
    results = [file_result]
    if args.es_url:
        print(f"\nElasticsearch: {args.es_index} at {args.es_url} (dead letters: {out}/deadletter-es/, "
              f"counters: {out}/backfill-es.log)")
        print("\n".join(es_lines))
        results.append(es_result)
    return max(getattr(result, "exit_code", 0) for result in results)


if __name__ == "__main__":
    job_main("python -m pipelines.demo", run)
