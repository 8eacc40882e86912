"""Safe image fetching: seller-supplied URLs are hostile input.

A listing's image URL is a request, written by a stranger, for our worker to
connect somewhere and read something. The limits are a :class:`FetchPolicy`;
:class:`ImageFetcher` enforces them, and :class:`FetchImages` is its Beam
transform. A fetch:

* allows only http(s), plus the Beam ``FileSystems`` schemes an operator
  enabled (``--allow-image-schemes gs,file``); a bare ``/etc/passwd`` or a
  ``file://`` URL is refused by default;
* connects only to public addresses unless the host is listed in
  ``--allow-image-hosts``, checked inside every connection (first try, retry,
  redirect hop) by :mod:`transforms.address_guard`;
* follows redirects itself, checking each hop, at most ``max_redirects``;
* caps the bytes while streaming (and refuses early on a large
  Content-Length) and accepts only ``image/*`` content types;
* caps the seconds per image, retries included, down to the socket
  (:mod:`transforms.watchdog`).

Every refusal raises :class:`~transforms.deadletter.Rejected` with a reason
(``blocked_address``, ``http_404``, ``too_large``, ...) that the Beam transform
turns into a dead letter carrying the item's original payload.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import http.cookiejar
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self
from urllib.parse import unquote, urljoin, urlsplit

import apache_beam as beam
import requests
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.util.retry import Retry

from transforms.address_guard import AddressGuard, GuardedAdapter
from transforms.address_policy import parse_allowed_hosts
from transforms.deadletter import DEAD_LETTER, DEADLETTERED, Rejected, to_dead_letter
from transforms.watchdog import Watchdog, clip

HTTP_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Transient answers worth another try; other 4xx/5xx will not change on retry.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK_BYTES = 64 * 1024
USER_AGENT = "imagescore-fetch/1 (+https://github.com/imagescore/imagescore)"


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """The limits of one worker's image fetches. Picklable: it travels with the DoFn.

    ``allowed_hosts`` (``HOST`` or ``HOST:PORT``) may be reached even when they resolve
    to non-public addresses; ``allowed_schemes`` are extra Beam FileSystems schemes
    (``gs``, ``file``, ...). Both are empty by default. ``total_timeout`` bounds one
    image, retries, backoff and redirects included.
    """

    allowed_hosts: frozenset[str] = frozenset()
    allowed_schemes: frozenset[str] = frozenset()
    max_bytes: int = 20_000_000
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    retries: int = 2
    backoff: float = 0.5
    concurrency: int = 16
    allowed_content_types: frozenset[str] = frozenset({"image/*"})

    def __post_init__(self) -> None:
        # Accept "a,b" strings and any iterable, and store one normalized spelling.
        object.__setattr__(self, "allowed_hosts", parse_allowed_hosts(self.allowed_hosts))
        object.__setattr__(self, "allowed_schemes", frozenset(_split(self.allowed_schemes)) - HTTP_SCHEMES)
        object.__setattr__(self, "allowed_content_types", frozenset(_split(self.allowed_content_types)))
        for scheme in self.allowed_schemes:
            if not scheme.replace("-", "").replace("+", "").replace(".", "").isalnum():
                raise ValueError(f"allowed image scheme {scheme!r} is not a URL scheme (e.g. gs, file, s3)")
        positive = {"max_bytes": self.max_bytes, "connect_timeout": self.connect_timeout,
                    "read_timeout": self.read_timeout, "total_timeout": self.total_timeout,
                    "concurrency": self.concurrency}
        not_negative = {"max_redirects": self.max_redirects, "retries": self.retries, "backoff": self.backoff}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"FetchPolicy.{name} must be > 0, got {value!r}")
        for name, value in not_negative.items():
            if not value >= 0:
                raise ValueError(f"FetchPolicy.{name} must be >= 0, got {value!r}")
        if not self.allowed_content_types:
            raise ValueError("FetchPolicy.allowed_content_types is empty: no image could ever be fetched")


def _split(value: str | Iterable[str]) -> Iterator[str]:
    parts = value.split(",") if isinstance(value, str) else value
    return (part.strip().lower() for part in parts if part.strip())


# --- the fetcher ------------------------------------------------------------------

class _BudgetRetry(Retry):
    """urllib3's retry policy, except that a backoff never sleeps past the image's time budget."""

    def increment(self, method=None, url=None, response=None, *args: Any, **kwargs: Any):
        if response is not None:
            # urllib3 drains a retried answer's body to reuse the connection, but a hostile
            # 503 may stream forever: drop the connection instead (the next try reconnects through the guard).
            response.close()
            response.release_conn()
        return super().increment(method, url, response, *args, **kwargs)

    def sleep(self, response=None) -> None:
        backoff = self.get_backoff_time()
        if backoff > 0 and clip(backoff, "retrying") < backoff:  # less time left than the backoff
            last = self.history[-1].error if self.history else None
            reason = _failure_reason(last) if last is not None else "fetch_timeout"
            if reason != "fetch_timeout":  # e.g. a refused connection: that, not the clock, is the cause
                raise Rejected(reason, f"{last}; no retry: the next one (after {backoff:g}s) would pass the "
                                       f"time budget")
            raise Rejected("fetch_timeout", f"the next retry (after {backoff:g}s) would pass the time budget")
        super().sleep(response)


def _split_url(url: str):
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise Rejected("bad_url", f"{url!r} is not a valid URL: {exc}") from None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests' and urllib3's ``reason``/first argument, else ``__cause__``."""
    seen: BaseException | None = exc
    for _ in range(32):  # wrappers nest a handful deep; never loop on a cycle
        if seen is None:
            return
        yield seen
        reason = getattr(seen, "reason", None)
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = reason if isinstance(reason, BaseException) else nested if nested is not None else seen.__cause__


def _failure_reason(exc: BaseException) -> str:
    """``connection_refused``, ``fetch_timeout`` or ``connection_error`` for a request that failed."""
    for seen in _causes(exc):
        if isinstance(seen, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(seen, NewConnectionError):
            continue  # urllib3 makes it a ConnectTimeoutError subclass, but only its cause says what happened
        if isinstance(seen, (requests.Timeout, TimeoutError, ReadTimeoutError, ConnectTimeoutError)):
            return "fetch_timeout"
    return "connection_error"


class ImageFetcher:
    """Fetches image bytes under a :class:`FetchPolicy`. Thread-safe; one per worker (create it in ``setup``)."""

    def __init__(self, policy: FetchPolicy = FetchPolicy()):
        self.policy = policy
        for scheme in policy.allowed_schemes - {"file"}:
            try:
                FileSystems.get_filesystem(f"{scheme}://bucket/object")
            except ValueError:
                raise ValueError(f"--allow-image-schemes {scheme}: Beam has no filesystem for {scheme}:// here; "
                                 f"install its extra (e.g. apache-beam[gcp] for gs)") from None
        self._session = self._new_session()
        self._watchdog = Watchdog(policy.total_timeout)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _new_session(self) -> requests.Session:
        p = self.policy
        session = requests.Session()
        # No proxies from the environment (the guard must see the real peer) and no
        # ~/.netrc credentials or cookies handed to seller-controlled hosts.
        session.trust_env = False
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        # identity: compressed bodies could expand past the byte cap after it was checked.
        session.headers.update({"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"})
        retry = _BudgetRetry(total=p.retries, connect=p.retries, read=p.retries, status=p.retries, other=0,
                             allowed_methods=frozenset({"GET"}), status_forcelist=RETRY_STATUSES,
                             backoff_factor=p.backoff, backoff_max=p.total_timeout, raise_on_status=False,
                             respect_retry_after_header=False)
        adapter = GuardedAdapter(AddressGuard(p.allowed_hosts), pool_connections=p.concurrency,
                                 pool_maxsize=p.concurrency, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        self._session.close()
        self._watchdog.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public API --

    def fetch(self, url: str) -> bytes:
        """The bytes at ``url``, or :class:`Rejected` naming the cause and the URL."""
        watch = self._watchdog.arm()  # this thread's budget: clips every blocking step until disarmed
        try:
            data = self._fetch(url)
        except Exception as exc:  # noqa: BLE001 - re-raised below, unless the watchdog explains it
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            expired = self._watchdog.disarm(watch)  # after this no socket of this fetch can be cut
        if expired:
            # Whatever the cut caused (a parse error, headers or a body that "ended" early) is not the answer.
            why = ("the server answered too slowly, so its connection was shut down at the deadline" if watch.cut
                   else "the budget ran out while no connection was open (e.g. during the DNS lookup)")
            raise Rejected("fetch_timeout", (
                f"{url} did not finish within the time budget of {self.policy.total_timeout:g}s "
                f"(--fetch-timeout); {why}")) from None
        if isinstance(failure, Rejected):
            message = str(failure) if str(url) in str(failure) else f"{url}: {failure}"
            raise Rejected(failure.reason, message) from None
        if failure is not None:
            raise failure
        return data

    def fetch_many(self, urls: Iterable[str]) -> list[bytes | Exception]:
        """Fetch concurrently (``policy.concurrency`` threads); bytes or the exception per URL, in input order."""
        urls = list(urls)
        if not urls:
            return []
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.policy.concurrency, thread_name_prefix="imagescore-fetch")
            executor = self._executor
        return list(executor.map(self._fetch_or_error, urls))

    def _fetch_or_error(self, url: str) -> bytes | Exception:
        try:
            return self.fetch(url)
        except Exception as exc:  # noqa: BLE001 - returned, not raised: one bad URL must not cost the batch
            return exc

    # -- internals --

    def _fetch(self, url: str) -> bytes:
        if not isinstance(url, str) or not url.strip():
            raise Rejected("bad_url", f"image URL must be a non-empty string, got {url!r}")
        url = url.strip()
        written = _split_url(url).scheme.lower()
        if written in HTTP_SCHEMES:
            return self._fetch_http(url)
        # Beam sees a scheme only when "://" follows it; anything else is a local path to it.
        scheme = written or "file"
        if written and FileSystems.get_scheme(url) != written and written in self.policy.allowed_schemes:
            raise _scheme_mismatch(url, written, url)
        if scheme in self.policy.allowed_schemes:
            return self._fetch_storage(url, scheme)
        allowed = ", ".join(sorted(HTTP_SCHEMES | self.policy.allowed_schemes))
        raise Rejected("blocked_scheme", f"scheme {scheme!r} is not fetched (allowed: {allowed}); storage schemes "
                                         f"such as gs or file must be enabled with --allow-image-schemes")

    def _fetch_http(self, url: str) -> bytes:
        current = url
        for _ in range(self.policy.max_redirects + 1):
            response = self._get(current)
            try:
                status = response.status_code
                if status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise Rejected(f"http_{status}", f"{current} redirected (HTTP {status}) without a Location")
                    target = urljoin(current, location)
                    if _split_url(target).scheme.lower() not in HTTP_SCHEMES:
                        raise Rejected("blocked_scheme", f"{current} redirected to {target!r}; redirects may "
                                                         f"only lead to http(s)")
                    current = target
                    continue
                if status != 200:
                    raise Rejected(f"http_{status}", f"{current} answered HTTP {status} {response.reason or ''}".rstrip())
                self._check_content_type(response, current)
                return self._read_capped(response, current)
            finally:
                response.close()
        raise Rejected("too_many_redirects", f"more than {self.policy.max_redirects} redirects (last: {current})")

    def _get(self, url: str) -> requests.Response:
        parts = _split_url(url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise Rejected("bad_url", f"{url!r}: {exc}") from None
        if not parts.hostname:
            raise Rejected("bad_url", f"{url!r} has no host")
        timeout = (clip(self.policy.connect_timeout, f"requesting {url}"),
                   clip(self.policy.read_timeout, f"requesting {url}"))
        try:
            return self._session.get(url, stream=True, allow_redirects=False, timeout=timeout)
        except Rejected:
            raise
        except (requests.exceptions.InvalidURL, requests.exceptions.URLRequired,
                requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
            raise Rejected("bad_url", f"{url!r} is not a valid URL: {exc}") from None
        except requests.RequestException as exc:
            reason = _failure_reason(exc)
            if reason == "fetch_timeout":
                raise Rejected("fetch_timeout", f"{url} timed out (connect {self.policy.connect_timeout:g}s, "
                                                f"read {self.policy.read_timeout:g}s, retries {self.policy.retries})") from None
            if reason == "connection_refused":
                raise Rejected(reason, f"{url}: {parts.hostname} refused the connection (nothing listens on that "
                                       f"port), also on {self.policy.retries} retries: {exc}") from None
            raise Rejected("connection_error", f"{url} could not be fetched: {exc}") from None

    def _check_content_type(self, response: requests.Response, url: str) -> None:
        header = response.headers.get("Content-Type", "")
        media = header.split(";")[0].strip().lower()
        if not media or not any(fnmatch.fnmatchcase(media, pattern) for pattern in self.policy.allowed_content_types):
            shown = f"Content-Type {header!r}" if header else "no Content-Type"
            raise Rejected("bad_content_type", f"{url} has {shown}; expected one of "
                                               f"{', '.join(sorted(self.policy.allowed_content_types))}")

    def _too_large(self, url: str, size: str) -> Rejected:
        return Rejected("too_large", f"{url} is {size}, over the cap of {self.policy.max_bytes} bytes "
                                     f"(--max-image-bytes)")

    def _read_capped(self, response: requests.Response, url: str) -> bytes:
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise self._too_large(url, f"{int(declared)} bytes by its Content-Length")
        raw = response.raw

        def read(total: int) -> bytes:
            timeout = clip(self.policy.read_timeout, f"{url} finished downloading after {total} bytes")
            connection = raw.connection
            if connection is not None and connection.sock is not None:
                connection.sock.settimeout(timeout)  # each read waits at most what is left of the budget
            try:
                return raw.read1(CHUNK_BYTES)
            except (TimeoutError, ReadTimeoutError):
                cause = (f"hit the time budget of {self.policy.total_timeout:g}s" if timeout < self.policy.read_timeout
                         else f"sent nothing for {self.policy.read_timeout:g}s")
                raise Rejected("fetch_timeout", f"{url} {cause} after {total} bytes") from None
            except (ProtocolError, Urllib3HTTPError, OSError) as exc:
                raise Rejected("connection_error", f"{url} body was cut off after {total} bytes: {exc}") from None

        return self._read_up_to_cap(read, url)

    def _read_up_to_cap(self, read: Callable[[int], bytes], name: str) -> bytes:
        """Call ``read(bytes so far)`` until it returns nothing; abort as soon as the byte cap is passed."""
        chunks: list[bytes] = []
        total = 0
        while True:
            data = read(total)
            if not data:
                return b"".join(chunks)
            total += len(data)
            if total > self.policy.max_bytes:
                raise self._too_large(name, f"at least {total} bytes (aborted while streaming)")
            chunks.append(data)

    def _fetch_storage(self, url: str, scheme: str) -> bytes:
        path = url
        if scheme == "file" and "://" in url:
            parts = _split_url(url)
            if parts.netloc not in ("", "localhost"):
                raise Rejected("bad_url", f"{url!r}: file URLs must not name a host (file:///path)")
            path = unquote(parts.path)
        # What FileSystems.open will read must be the scheme that was allowed, nothing else.
        if (FileSystems.get_scheme(path) or "file") != scheme:
            raise _scheme_mismatch(url, scheme, path)
        try:
            handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as exc:  # noqa: BLE001 - each filesystem raises its own "not found" type
            if not _exists(path):
                raise Rejected("file_not_found", f"{path} does not exist") from None
            raise Rejected("connection_error", f"{path} could not be opened: {exc}") from None

        def read(total: int) -> bytes:
            clip(None, f"{path} finished reading after {total} bytes")
            try:
                return handle.read(CHUNK_BYTES)
            except Exception as exc:  # noqa: BLE001 - any storage error, named in the reason
                raise Rejected("connection_error", f"{path} could not be read after {total} bytes: {exc}") from None
        with handle:
            return self._read_up_to_cap(read, path)


def _scheme_mismatch(url: str, scheme: str, path: str) -> Rejected:
    beam = FileSystems.get_scheme(path)
    read_as = f"a {beam}:// URL" if beam else "a local file path"
    return Rejected("bad_url", f"{url!r} is written as a {scheme} URL, but Beam's FileSystems would read "
                               f"{path!r} as {read_as}; write {scheme}://... (file: file:///absolute/path or "
                               f"a bare absolute path)")


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001
        return True  # cannot tell: report the open error itself


# --- Beam ------------------------------------------------------------------------

class _FetchBatchFn(beam.DoFn):
    """Fetch a batch of items' thumbnails concurrently, so one slow server does not serialise the bundle."""

    def __init__(self, policy: FetchPolicy, stage: str, total: str = DEADLETTERED):
        self._policy = policy
        self._stage = stage
        self._total = total
        self._fetcher: ImageFetcher | None = None  # sessions and threads do not pickle: built in setup()
        self._fetched = beam.metrics.Metrics.counter("imagescore", f"{stage}_fetched")
        self._bytes = beam.metrics.Metrics.counter("imagescore", f"{stage}_bytes")

    def setup(self) -> None:
        self._fetcher = ImageFetcher(self._policy)

    def teardown(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def process(self, batch: list) -> Iterator:
        assert self._fetcher is not None, "setup() was not called"
        urls = [item.image_urls[0] if item.image_urls else "" for item in batch]
        for item, result in zip(batch, self._fetcher.fetch_many(urls)):
            if isinstance(result, bytes):
                self._fetched.inc()
                self._bytes.inc(len(result))
                yield item, result
            else:  # to_dead_letter counts deadletter_<stage>_<reason>
                yield to_dead_letter(self._stage, result, item.payload, id=item.id, total=self._total)


class FetchImages(beam.PTransform):
    """``Item`` -> ``(Item, bytes)`` of its thumbnail (``image_urls[0]``), plus a tagged ``deadletter`` output.

    Read ``result[FetchImages.MAIN]`` (or ``result.images``) and ``result[DEAD_LETTER]``.
    Items are batched (``BatchElements``) and each batch is fetched by
    ``policy.concurrency`` threads; every item leaves on exactly one of the two outputs.
    ``total`` is the counter its dead letters add to (:func:`transforms.deadletter.count_dead_letter`).
    """

    MAIN = "images"

    def __init__(self, policy: FetchPolicy = FetchPolicy(), stage: str = "fetch", total: str = DEADLETTERED):
        super().__init__()
        self._policy = policy
        self._stage = stage
        self._total = total

    def expand(self, items):
        return (items
                | f"Batch[{self._stage}]" >> beam.BatchElements(
                    min_batch_size=1, max_batch_size=max(1, 4 * self._policy.concurrency))
                | f"Fetch[{self._stage}]" >> beam.ParDo(_FetchBatchFn(self._policy, self._stage, self._total)).with_outputs(
                    DEAD_LETTER, main=self.MAIN))
