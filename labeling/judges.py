"""The judges that score a window's images 0-10.

``HttpJudge`` is the real one: a vision LLM behind an OpenAI-compatible
endpoint. The two offline judges exist so the whole pipeline runs without an
endpoint; they are named for what they are and their rationales say so:
``HandcraftedJudge`` is the weight-free handcrafted scorer (a baseline, not a
preference model) and ``SimulatedJudge`` reads the latent quality that
``imagescore simulate`` drew (ground truth of a synthetic world, only for
checking that the rest of the pipeline recovers it).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from es.secrets import scrub
from labeling.cache import WindowCache, cache_key
from labeling.images import fetch_all, window_data_urls
from labeling.parse import ParsedReply, parse_reply
from labeling.prompt import PromptTemplate, image_label
from labeling.windows import Window
from transforms.deadletter import Rejected
from transforms.decode import decode_image
from transforms.fetch import ImageFetcher

if TYPE_CHECKING:  # the openai package is only needed by the http judge
    from labeling.client import ChatClient, ChatReply


@dataclass
class RepeatResult:
    repeat: int
    scores: list[float]
    rationales: list[str]


@dataclass
class WindowOutcome:
    """What judging one window produced: results per repeat, or the error that sends it to dead letters."""

    window: Window
    repeats: list[RepeatResult] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)  # rows for responses.jsonl, paid or cached
    error: Rejected | None = None


class HttpJudge:
    name = "http"

    def __init__(self, client: ChatClient, prompt: PromptTemplate, fetcher: ImageFetcher, image_size: int,
                 cache: WindowCache | None, malformed_retries: int = 1):
        self.client, self.prompt, self.fetcher = client, prompt, fetcher
        self.image_size, self.cache, self.malformed_retries = image_size, cache, malformed_retries
        self.model = client.model
        self.prompt_version = prompt.version

    def messages(self, data_urls: list[str]) -> list[dict]:
        """One user turn: the instructions, then every image of the window labelled in page order."""
        content: list[dict] = [{"type": "text", "text": self.prompt.render(len(data_urls))}]
        for index, url in enumerate(data_urls):
            content.append({"type": "text", "text": image_label(index)})
            content.append({"type": "image_url", "image_url": {"url": url}})
        return [{"role": "user", "content": content}]

    def _key(self, window: Window, repeat: int) -> str:
        return cache_key(prompt_version=self.prompt.version, prompt_sha256=self.prompt.sha256, model=self.model,
                         image_urls=window.image_urls, image_size=self.image_size, repeat=repeat,
                         endpoint=self.client.base_url,
                         sampling={"temperature": None if self.client.temperature is None
                                   else float(self.client.temperature),  # 0 and 0.0 are one setting
                                   "max_tokens": self.client.max_tokens})

    def _response_row(self, window: Window, repeat: int, reply: ChatReply | None, cached: bool,
                      error: Rejected | None, content: str | None = None, usage: dict | None = None,
                      parsed_as: str | None = None) -> dict:
        """One ``responses.jsonl`` row; ``parsed_as`` says how the scores were read (``json`` or ``n_of_10``)."""
        if reply is not None:
            content = reply.content
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
        return {
            "serp_id": window.serp_id, "repeat": repeat, "judge": self.name, "model": self.model,
            "prompt_version": self.prompt.version, "cached": cached,
            "retries": reply.retries if reply is not None else 0,
            "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0},
            "content": scrub(content) if content is not None else None,
            "error": None if error is None else {"reason": error.reason, "message": scrub(str(error))},
            "parsed_as": parsed_as,
        }

    def judge(self, window: Window, repeats: int) -> WindowOutcome:
        outcome = WindowOutcome(window)
        n = len(window.items)
        data_urls: list[str] | None = None
        for repeat in range(repeats):
            key = self._key(window, repeat)
            entry = self.cache.get(key) if self.cache is not None else None
            if entry is not None:
                try:
                    parsed = parse_reply(entry.get("content"), n)
                except Rejected:
                    entry = None  # a stale entry the parser no longer accepts: judge again
                else:
                    outcome.responses.append(self._response_row(
                        window, repeat, None, True, None, entry.get("content"), entry.get("usage"), parsed.method))
                    outcome.repeats.append(RepeatResult(repeat, parsed.scores, parsed.rationales))
                    continue
            try:
                if data_urls is None:
                    data_urls = window_data_urls(self.fetcher, window.image_urls, self.image_size)
                parsed, reply = self._ask(window, repeat, data_urls, outcome)
            except Rejected as exc:
                outcome.error = exc
                return outcome
            if self.cache is not None:
                self.cache.put(key, {
                    "serp_id": window.serp_id, "repeat": repeat, "model": self.model,
                    "prompt_version": self.prompt.version, "image_urls": window.image_urls,
                    "image_size": self.image_size, "content": reply.content,
                    "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
                    "response": reply.body,
                })
            outcome.repeats.append(RepeatResult(repeat, parsed.scores, parsed.rationales))
        return outcome

    def _ask(self, window: Window, repeat: int, data_urls: list[str],
             outcome: WindowOutcome) -> tuple[ParsedReply, ChatReply]:
        """Ask, and ask again (bounded) when the reply cannot be parsed; every paid reply is recorded."""
        messages = self.messages(data_urls)
        for attempt in range(1 + self.malformed_retries):
            reply = self.client.complete(messages)
            try:
                parsed = parse_reply(reply.content, len(window.items))
            except Rejected as exc:
                outcome.responses.append(self._response_row(window, repeat, reply, False, exc))
                if attempt == self.malformed_retries:
                    raise
                continue
            outcome.responses.append(self._response_row(window, repeat, reply, False, None,
                                                        parsed_as=parsed.method))
            return parsed, reply
        raise AssertionError("unreachable: the loop returns or raises")


class HandcraftedJudge:
    """Labels with the weight-free handcrafted scorer: score = 10 x model score. A baseline, not an LLM."""

    name = "handcrafted"
    prompt_version = None

    def __init__(self, fetcher: ImageFetcher, model):
        self.fetcher, self.score_model = fetcher, model
        self.model = model.model_id
        self._lock = threading.Lock()  # one forward at a time: the CPU is already saturated by one

    def judge(self, window: Window, repeats: int) -> WindowOutcome:
        outcome = WindowOutcome(window)
        try:
            blobs = fetch_all(self.fetcher, window.image_urls)
            arrays = []
            for url, data in zip(window.image_urls, blobs):
                try:
                    arrays.append(decode_image(data, self.score_model.input_size))
                except Rejected as exc:
                    raise Rejected(exc.reason, f"image {url}: {exc}") from None
        except Rejected as exc:
            outcome.error = exc
            return outcome
        batch = torch.from_numpy(np.stack(arrays))
        device = next(iter(self.score_model.parameters()), torch.empty(0)).device
        with self._lock, torch.inference_mode():
            values = self.score_model(batch.to(device)).float().cpu().tolist()
        scores = [10.0 * float(v) for v in values]
        rationales = [f"Handcrafted baseline scorer {self.model} (classic signal measures, no LLM): "
                      f"model score {v:.3f} x 10." for v in values]
        outcome.repeats = [RepeatResult(r, scores, rationales) for r in range(repeats)]
        return outcome


def load_quality(path: str) -> dict[str, dict]:
    """``quality.jsonl`` from ``imagescore simulate`` keyed by item_id; a bad line is a usage error."""
    table: dict[str, dict] = {}
    if not os.path.isfile(path):
        raise ValueError(f"--quality {path!r} is not a file; pass quality.jsonl from `imagescore simulate`")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                quality = float(row["quality"])
                item_id = str(row["item_id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number} is not a quality row with item_id and quality: {exc}") from None
            if not 0.0 <= quality <= 1.0:
                raise ValueError(f"{path}:{number}: quality {quality} is outside 0-1")
            table[item_id] = row
    if not table:
        raise ValueError(f"--quality {path} has no rows; pass the quality.jsonl that `imagescore simulate` wrote")
    return table


class SimulatedJudge:
    """Reads the simulator's latent quality: score = 10 x quality. Only meaningful on simulated data."""

    name = "simulated"
    prompt_version = None

    def __init__(self, quality: dict[str, dict], source: str):
        self.quality = quality
        self.model = f"simulator-latent-quality:{source}"

    def judge(self, window: Window, repeats: int) -> WindowOutcome:
        outcome = WindowOutcome(window)
        scores, rationales = [], []
        for item in window.items:
            row = self.quality.get(item.item_id)
            if row is None:
                outcome.error = Rejected("no_quality", f"item {item.item_id} is not in the --quality file")
                return outcome
            quality = float(row["quality"])
            scores.append(10.0 * quality)
            degradations = row.get("degradations") or {}
            applied = ", ".join(f"{k} {v}" for k, v in sorted(degradations.items())) if isinstance(
                degradations, dict) else str(degradations)
            rationales.append(f"Simulated judge: latent quality {quality:.3f} drawn by `imagescore simulate`"
                              f" (degradations: {applied or 'none'}).")
        outcome.repeats = [RepeatResult(r, scores, rationales) for r in range(repeats)]
        return outcome
