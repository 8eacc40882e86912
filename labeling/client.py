"""Client for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, ...).

The official ``openai`` package does the protocol, the timeouts and the
bounded retries with exponential backoff on 408/409/429/5xx, timeouts and
connection errors (honouring ``Retry-After``). This module adds what it lacks
for batch labelling: a shared ``--rpm`` token bucket and attempt counting,
both hooked on every HTTP attempt, and errors turned into :class:`Rejected`
reasons for dead letters. The API key is read from the environment only.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletion

from es.secrets import LLM_API_KEY_ENVS, install_log_scrubber, scrub
from labeling.ratelimit import TokenBucket
from transforms.deadletter import Rejected

# Servers without auth (a local vLLM or Ollama) ignore the key, but the openai client insists on one.
NO_KEY_PLACEHOLDER = "no-key"


def api_key_from_env() -> str | None:
    """The first of ``LLM_API_KEY`` / ``OPENAI_API_KEY`` that is set; never a flag, so it stays out of shell history."""
    for name in LLM_API_KEY_ENVS:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _rejected(reason: str, message: str) -> Rejected:
    """A Rejected whose message is scrubbed: it names the endpoint (maybe with user:pass) and quotes its answer."""
    return Rejected(reason, scrub(message))


@dataclass(frozen=True)
class ChatReply:
    content: str | None
    prompt_tokens: int
    completion_tokens: int
    retries: int
    body: dict = field(repr=False)  # the response JSON as the endpoint sent it


class ChatClient:
    """Thread-safe; one pooled HTTP client shared by all worker threads."""

    def __init__(self, base_url: str, model: str, *, timeout: float = 120.0, retries: int = 3,
                 rpm: float | None = None, temperature: float | None = 0.0, max_tokens: int | None = None,
                 api_key: str | None = None):
        if not model:
            raise ValueError("--model is required for --judge http (the model name the endpoint serves)")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._bucket = TokenBucket(rpm) if rpm else None
        self._lock = threading.Lock()
        self.attempts = 0
        self.status_counts: dict[str, int] = {}
        http_client = openai.DefaultHttpxClient(event_hooks={
            "request": [self._before_attempt], "response": [self._after_attempt]})
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or api_key_from_env() or NO_KEY_PLACEHOLDER,
            timeout=timeout, max_retries=retries, http_client=http_client)
        self.base_url = str(self._client.base_url)  # after OPENAI_BASE_URL / default resolution
        install_log_scrubber()  # openai and httpx log requests and their URLs at DEBUG

    def _before_attempt(self, request) -> None:
        if self._bucket is not None:
            self._bucket.acquire()
        with self._lock:
            self.attempts += 1

    def _after_attempt(self, response) -> None:
        with self._lock:
            key = str(response.status_code)
            self.status_counts[key] = self.status_counts.get(key, 0) + 1

    def complete(self, messages: list[dict]) -> ChatReply:
        """One chat completion; raises :class:`Rejected` once the retries are spent."""
        kwargs: dict = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        try:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
            completion = raw.parse()
        except openai.APITimeoutError as exc:
            raise _rejected("llm_timeout", f"{self.base_url} did not answer in time after retries: {exc}") from None
        except openai.APIConnectionError as exc:
            raise _rejected("llm_connection_error", f"cannot reach {self.base_url}: {exc}") from None
        except openai.APIStatusError as exc:
            body = exc.response.text[:300] if exc.response is not None else ""
            raise _rejected(f"llm_http_{exc.status_code}",
                            f"{self.base_url} answered HTTP {exc.status_code} after retries: {body}") from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise _rejected("llm_bad_body",
                            f"{self.base_url} sent a body that is not a chat completion: {exc}") from None
        if not isinstance(completion, ChatCompletion) or "choices" not in completion.model_fields_set:
            # openai hands back a str or list when the body is not a JSON object, and fills no field it lacks
            body = raw.http_response.text[:300]
            raise _rejected("llm_bad_body", f"{self.base_url} sent a body that is not a chat completion: {body!r}")
        if not completion.choices:
            raise _rejected("empty_response", f"{self.base_url} returned a completion without choices")
        usage = completion.usage
        return ChatReply(
            content=completion.choices[0].message.content,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            retries=int(getattr(raw, "retries_taken", 0) or 0),
            body=completion.model_dump(mode="json", exclude_unset=True),
        )

    def close(self) -> None:
        self._client.close()
