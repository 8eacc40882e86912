"""Connecting to Elasticsearch without ever holding a secret in a config, a flag or a message.

:class:`EsConfig` is what travels with a Beam job (it is pickled onto workers), so it
holds only the URL and TLS settings. Credentials are read from the environment at
connect time, on the worker, by :func:`make_client`. Every error this package lets out
goes through :func:`es.secrets.scrub` first, because client exceptions can carry server text.

Only client APIs that exist in both elasticsearch-py 8.x and 9.x are used here, so the
package works with whichever major matches the cluster.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from elasticsearch import ApiError, Elasticsearch, TransportError

from es.secrets import ES_API_KEY_ENV, ES_PASSWORD_ENV, ES_USERNAME_ENV, install_log_scrubber, scrub

URL_ENV = "ES_URL"
CA_CERTS_ENV = "ES_CA_CERTS"
VERIFY_CERTS_ENV = "ES_VERIFY_CERTS"
DEFAULT_URL = "http://localhost:9200"

T = TypeVar("T")


class EsError(RuntimeError):
    """An Elasticsearch failure whose message has been scrubbed of secrets.

    ``status`` is the HTTP status when the server answered, else ``None`` (connection
    trouble). It is raised ``from None`` so that no traceback carries the original text.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(scrub(message))
        self.status = status


class EsVersionMismatch(EsError):
    """The cluster runs another major version than the client; no retry or reindex helps."""


def default_es_url() -> str:
    """``$ES_URL``, else a local cluster."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class EsConfig:
    """Where the cluster is and how to trust it. Holds no secret, so it is safe to pickle and log."""

    url: str = DEFAULT_URL
    verify_certs: bool = True
    ca_certs: str | None = None
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        try:
            parts.port  # noqa: B018 -- urlsplit checks the port lazily
        except ValueError:
            raise ValueError("the Elasticsearch URL has a bad port; it must look like https://host:9200") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"Elasticsearch URL {self.safe_url()!r} must look like https://host:9200")
        if parts.username or parts.password:
            # The URL ends up in logs and error messages; credentials must not.
            raise ValueError(
                "the Elasticsearch URL must not contain credentials; set "
                f"{ES_API_KEY_ENV}, or {ES_USERNAME_ENV} and {ES_PASSWORD_ENV}, in the environment instead")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}")

    def safe_url(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")

    @classmethod
    def from_env(cls, url: str | None = None, **overrides: Any) -> EsConfig:
        """Config from ``$ES_URL`` and ``$ES_VERIFY_CERTS`` (explicit arguments win).

        ``$ES_CA_CERTS`` is not captured here: it names a file on the machine that
        connects, so :func:`make_client` reads it on the worker.
        """
        values: dict[str, Any] = {
            "url": url or default_es_url(),
            "verify_certs": _env_flag(VERIFY_CERTS_ENV, True),
        }
        values.update(overrides)
        return cls(**values)


def _credentials() -> dict[str, Any]:
    api_key = os.environ.get(ES_API_KEY_ENV)
    if api_key:
        return {"api_key": api_key}
    username = os.environ.get(ES_USERNAME_ENV)
    password = os.environ.get(ES_PASSWORD_ENV)
    if username and password:
        return {"basic_auth": (username, password)}
    if username or password:
        raise EsError(f"set both {ES_USERNAME_ENV} and {ES_PASSWORD_ENV}, or {ES_API_KEY_ENV}; only one of the pair is set")
    return {}


def make_client(config: EsConfig, *, node_class: Any = None, max_retries: int = 0) -> Elasticsearch:
    """A client for ``config`` with credentials (and ``$ES_CA_CERTS`` when the config names no CA) from the environment.

    ``max_retries`` defaults to 0: callers in this package retry themselves, with
    backoff and a time bound, which the transport's immediate retries do not give.
    """
    kwargs: dict[str, Any] = dict(
        hosts=[config.url],
        verify_certs=config.verify_certs,
        request_timeout=config.request_timeout,
        max_retries=max_retries,
        retry_on_timeout=max_retries > 0,
        **_credentials(),
    )
    ca_certs = config.ca_certs or os.environ.get(CA_CERTS_ENV)  # read on the worker, like credentials
    if ca_certs:
        kwargs["ca_certs"] = ca_certs
    if not config.verify_certs:
        kwargs["ssl_show_warn"] = False
    if node_class is not None:
        kwargs["node_class"] = node_class
    install_log_scrubber()
    return Elasticsearch(**kwargs)


def describe(exc: BaseException) -> str:
    """A short, scrubbed description of a client exception, for messages and dead letters."""
    if isinstance(exc, ApiError):
        return scrub(f"{type(exc).__name__}({exc.meta.status}, {exc.message!r}): {_api_reason(exc)}")
    # A connection error's str() is only "Connection error"; its message says refused, reset or timed out.
    detail = getattr(exc, "message", None) if isinstance(exc, TransportError) else None
    return scrub(f"{type(exc).__name__}: {detail if isinstance(detail, str) and detail else exc}")


def _api_reason(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('type')}: {error.get('reason')}"
    return str(body)[:500]


def status_of(exc: BaseException) -> int | None:
    return exc.meta.status if isinstance(exc, ApiError) else None


@contextlib.contextmanager
def scrubbed_errors(action: str) -> Iterator[None]:
    """Re-raise client exceptions as :class:`EsError` naming ``action``, with secrets removed."""
    try:
        yield
    except (ApiError, TransportError) as exc:
        mismatch = version_mismatch(exc)
        if mismatch:
            raise EsVersionMismatch(f"{action} failed: {mismatch}", 400) from None
        raise EsError(f"{action} failed: {describe(exc)}", status_of(exc)) from None


def usage_message(exc: EsError, config: EsConfig) -> str:
    """One line for the user when a job's first request failed: what happened at which URL, and what to do."""
    if exc.status is None:
        return (f"Elasticsearch is not reachable at {config.safe_url()} ({exc}); check --es-url "
                "(or $ES_URL) and that the cluster is up")
    hint = {401: "; check ES_API_KEY or ES_USERNAME/ES_PASSWORD",
            403: "; the credentials need the manage privilege on the index"}.get(exc.status, "")
    return f"Elasticsearch at {config.safe_url()}: {exc}{hint}"


def version_mismatch(exc: BaseException) -> str | None:
    """What to install when the cluster refused the client's major version, else None.

    A 9.x client sends ``compatible-with=9`` on every request; an 8.x cluster answers 400
    ``media_type_header_exception`` ("Accept version must be either version 8 or 7").
    """
    if not (isinstance(exc, ApiError) and exc.meta.status == 400 and "media_type_header_exception" in str(exc.body)):
        return None
    from elasticsearch import __versionstr__ as client_version
    major = client_version.split(".")[0]
    return (f"the cluster refused elasticsearch-py {client_version}'s compatible-with={major} headers, so it runs "
            f"another major version; install the client that matches the cluster, for an 8.x cluster: "
            f"pip install 'elasticsearch>=8.18,<9'")


RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# The cluster (or the proxy in front of it) is overloaded, restarting or gone: wait it out, within a budget.
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    """Connection trouble, timeouts, 429 and 5xx are worth another try; anything else is not."""
    if isinstance(exc, ApiError):
        return exc.meta.status in RETRYABLE_STATUSES
    return isinstance(exc, TransportError)


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with full jitter (a uniform wait up to the exponential bound), so that the
    workers of a job that all lost the cluster at once do not come back to it in step."""
    return random.uniform(0, min(maximum, initial * 2 ** attempt))


def call_with_retries(call: Callable[[], T], action: str, *, max_retries: int = 5,
                      initial_backoff: float = 0.5, max_backoff: float = 30.0,
                      max_retry_time: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``call``, retrying retryable failures with backoff, bounded in attempts and time.

    The last failure is raised as a scrubbed :class:`EsError`, so Beam retries the bundle.
    """
    deadline = time.monotonic() + max_retry_time
    attempt = 0
    while True:
        try:
            return call()
        except (ApiError, TransportError) as exc:
            delay = backoff_delay(attempt, initial_backoff, max_backoff)
            if (not is_retryable(exc) or attempt >= max_retries
                    or time.monotonic() + delay > deadline):
                tries = attempt + 1
                raise EsError(f"{action} failed after {tries} attempt(s): {describe(exc)}",
                              status_of(exc)) from None
        sleep(delay)
        attempt += 1
