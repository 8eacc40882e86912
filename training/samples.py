"""A qualitative page like the paper's Appendix A: SERPs in their original order next to the Image Score order.

The clicked image is framed. Images are linked from their URLs; with
``embed_images`` local (``file://`` or plain path) images are inlined as data
URIs so the page can be mailed around. Remote images are never fetched here:
the browser that opens the page loads them.
"""
from __future__ import annotations

import base64
import html
import mimetypes
import os
import urllib.parse
import urllib.request

import numpy as np

from training.data import SplitData


def _local_image(url: str) -> str | None:
    """The path of a ``file://`` image URL; bare paths and non-image files are never inlined."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    path = urllib.request.url2pathname(parsed.path)
    kind = mimetypes.guess_type(path)[0] or ""
    return path if kind.startswith("image/") and os.path.isfile(path) else None


def _src(url: str, embed: bool) -> str:
    path = _local_image(url) if embed else None
    if path:
        kind = mimetypes.guess_type(path)[0]
        with open(path, "rb") as handle:
            return f"data:{kind};base64,{base64.b64encode(handle.read()).decode('ascii')}"
    return url


def _cell(split: SplitData, k: int, score: float, embed: bool) -> str:
    clicked = bool(split.clicked[k])
    style = "border:4px solid #e4002b" if clicked else "border:4px solid transparent"
    caption = (f"pos {split.position[k]} · label {split.label[k]:.2f} · score {score:.3f}"
               + (" · <b>clicked</b>" if clicked else ""))
    src = html.escape(_src(split.image_url[k], embed), quote=True)
    return (f'<figure><img src="{src}" alt="{html.escape(split.item_id[k])}" style="{style}" loading="lazy">'
            f"<figcaption>{caption}</figcaption></figure>")


def render_samples(split: SplitData, scores: np.ndarray, *, method: str, n: int = 12, seed: int = 0,
                   embed_images: bool = False) -> str:
    """The HTML page for ``n`` SERPs picked with a seeded generator; ``scores`` are image scores in [0, 1]."""
    if len(scores) != len(split.group):
        raise ValueError(f"{len(scores)} scores for {len(split.group)} images")
    if len(scores) and not (np.min(scores) >= 0.0 and np.max(scores) <= 1.0):
        raise ValueError("samples show image scores in [0, 1]; pass sigmoid(head output), not the raw head output")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(split.n_windows, size=min(n, split.n_windows), replace=False).tolist())
    sections = []
    for g in chosen:
        members = np.flatnonzero(split.group == g)
        original = members[np.argsort(split.position[members], kind="stable")]
        ranked = members[np.argsort(-scores[members], kind="stable")]
        rows = "".join(
            f'<div class="row"><div class="tag">{tag}</div>{"".join(_cell(split, k, scores[k], embed_images) for k in order)}</div>'
            for tag, order in (("original order", original), (f"by {html.escape(method)}", ranked)))
        sections.append(f"<section><h2>{html.escape(split.serp_ids[g])} — query "
                        f"“{html.escape(split.queries[g])}”</h2>{rows}</section>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Image Score samples</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; margin: 4px 0; }}
.tag {{ width: 9em; font-size: 0.85em; color: #555; padding-top: 2em; }}
figure {{ margin: 0; width: 132px; }}
img {{ width: 120px; height: 120px; object-fit: cover; }}
figcaption {{ font-size: 0.7em; color: #333; }}
h2 {{ font-size: 1em; margin-top: 1.5em; }}
</style></head><body>
<h1>Image Score: qualitative samples</h1>
<p>Each SERP twice: as the search engine ranked it, then re-ordered by {html.escape(method)} (highest first).
The clicked image has a red frame. Labels are the judge's (0–1 within the SERP); scores are the
<code>image_score</code> in [0, 1] that the served model writes.</p>
{"".join(sections)}
</body></html>
"""


def write_samples_page(path: str, split: SplitData, scores: np.ndarray, **kwargs) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_samples(split, scores, **kwargs))
    return path
