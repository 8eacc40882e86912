"""Turn a judge's reply into exactly one 0-10 score and one rationale per image.

The reply is parsed as strict JSON first (the whole text, then a fenced
```json block, then the outermost ``{...}``); only when no JSON is found does
it fall back to ``N/10`` patterns in free text. A reply that does not give
exactly one in-range score per image is rejected, never repaired: a guessed
score would be a made-up label.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from transforms.deadletter import Rejected

SCORE_MIN, SCORE_MAX = 0.0, 10.0

# Criteria keys in the order the rationale lists them; other string fields follow.
CRITERIA = ("color_harmony", "brightness", "saturation", "composition", "perspective",
            "light_and_shadow", "detail", "visual_impact")
_META_KEYS = {"image", "index", "id", "score", "aesthetic_score", "overall", "overall_score"}
_SCORE_KEYS = ("score", "aesthetic_score", "overall_score", "overall")
_LIST_KEYS = ("images", "scores", "results")

_FENCED = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_OUT_OF_TEN = re.compile(r"(?<![\d.])(-?\d+(?:\.\d+)?)\s*/\s*10(?!\.?\d)")


@dataclass(frozen=True)
class ParsedReply:
    scores: list[float]
    rationales: list[str]
    method: str  # "json" or "n_of_10": how the scores were found


def parse_reply(text: str | None, n_images: int) -> ParsedReply:
    """Parse ``text`` for ``n_images`` images; raises :class:`Rejected` naming what is wrong."""
    if text is None or not text.strip():
        raise Rejected("empty_response", "the judge returned no text")
    data = _find_json(text)
    if data is not None:
        scores, rationales = _from_json(data, n_images)
        return ParsedReply(scores, rationales, "json")
    return _from_out_of_ten(text, n_images)


def _find_json(text: str):
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCED.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            return value
    return None


def _entries(data) -> list:
    if isinstance(data, list):
        return data
    for key in _LIST_KEYS:
        if isinstance(data.get(key), list):
            return data[key]
    raise Rejected("bad_response_shape",
                   f"JSON reply has no list of images under {' / '.join(_LIST_KEYS)}; keys: {sorted(data)[:10]}")


def _from_json(data, n_images: int) -> tuple[list[float], list[str]]:
    entries = _entries(data)
    if len(entries) != n_images:
        raise Rejected("wrong_image_count", f"the judge scored {len(entries)} images, the window has {n_images}")
    entries = _in_image_order(entries, n_images)
    scores, rationales = [], []
    for position, entry in enumerate(entries, start=1):
        if isinstance(entry, dict):
            raw = next((entry[k] for k in _SCORE_KEYS if k in entry), None)
            rationale = _rationale(entry)
        else:
            raw, rationale = entry, ""
        if raw is None:
            raise Rejected("missing_score", f"image {position} has no 'score' in the judge's reply")
        scores.append(_score(raw, position))
        rationales.append(rationale)
    return scores, rationales


def _in_image_order(entries: list, n_images: int) -> list:
    """Reorder by the 1-based ``image`` field when every entry has one; it must name each image once."""
    numbers = [e.get("image", e.get("index")) if isinstance(e, dict) else None for e in entries]
    if any(n is None for n in numbers):
        return entries
    try:
        as_ints = [int(n) for n in numbers]
    except (TypeError, ValueError):
        raise Rejected("bad_image_index", f"image numbers {numbers} are not integers") from None
    if sorted(as_ints) != list(range(1, n_images + 1)):
        raise Rejected("bad_image_index", f"image numbers {as_ints} do not name images 1..{n_images} once each")
    return [entries[as_ints.index(i)] for i in range(1, n_images + 1)]


def _score(raw, position: int) -> float:
    if isinstance(raw, bool):
        raise Rejected("score_not_a_number", f"image {position} score {raw!r} is not a number")
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*", raw)
        if not match:
            raise Rejected("score_not_a_number", f"image {position} score {raw!r} is not a number")
        raw = float(match.group(1))
    if not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise Rejected("score_not_a_number", f"image {position} score {raw!r} is not a number")
    if not SCORE_MIN <= raw <= SCORE_MAX:
        raise Rejected("score_out_of_range", f"image {position} score {raw} is outside 0-10")
    return float(raw)


def _rationale(entry: dict) -> str:
    keys = [k for k in CRITERIA if k in entry] + [k for k in entry if k not in CRITERIA and k not in _META_KEYS]
    parts = [f"{k.replace('_', ' ').capitalize()}: {str(entry[k]).strip()}" for k in keys
             if isinstance(entry[k], (str, int, float)) and str(entry[k]).strip()]
    return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts)


def _from_out_of_ten(text: str, n_images: int) -> ParsedReply:
    matches = list(_OUT_OF_TEN.finditer(text))
    if not matches:
        raise Rejected("response_not_parseable",
                       f"the judge's reply has neither JSON nor 'N/10' scores: {text[:200]!r}")
    if len(matches) != n_images:
        raise Rejected("wrong_image_count",
                       f"the judge's reply has {len(matches)} 'N/10' scores, the window has {n_images}")
    scores, rationales, previous_end = [], [], 0
    for position, match in enumerate(matches, start=1):
        scores.append(_score(float(match.group(1)), position))
        rationales.append(" ".join(text[previous_end:match.start()].split()))
        previous_end = match.end()
    return ParsedReply(scores, rationales, "n_of_10")
