"""The double's HTTP server: :class:`EsDouble`, its test API, and how a request reaches its endpoint.

Each request is logged (:class:`RequestRecord`), its media types are checked, then, under the
cluster's lock, authentication and injected faults are applied before the route table (the
endpoint modules' tables, joined) picks the handler.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from tests.es_double import bulk, documents, indices, info, scripts, search, templates
from tests.es_double.errors import DropConnection, EsHttpError, illegal_argument
from tests.es_double.faults import Fault, error_type_for
from tests.es_double.mappings import normalize_settings, validate_mappings
from tests.es_double.rest import Routes
from tests.es_double.state import Cluster, Index

SUPPORTED_COMPAT = (8, 9)
ROUTES = Routes.join(info.ROUTES, templates.ROUTES, indices.ROUTES, documents.ROUTES, bulk.ROUTES, search.ROUTES,
                     scripts.ROUTES)


@dataclass
class RequestRecord:
    """One request as the double saw it (the Authorization header is kept as its scheme only).

    ``status`` is 0 for a connection the double dropped on purpose; ``response`` is the JSON answer.
    """

    method: str
    path: str
    params: dict
    headers: dict
    body: bytes
    status: int = 0
    auth_scheme: str | None = None
    response: Any = None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def ndjson(self) -> list:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


class EsDouble:
    """The double: ``start()``, use ``.url`` with the real client, ``stop()``; or use it as a context manager.

    Its state is :attr:`cluster` (:class:`~tests.es_double.state.Cluster`); ``clock`` and
    ``auto_create_index`` are the cluster's. ``clock`` (seconds, monotonic) drives refresh intervals
    and PIT keep-alives; tests may swap it for a manual one. ``auto_create_index`` mirrors the cluster
    setting ``action.auto_create_index``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, compat: Iterable[int] = SUPPORTED_COMPAT,
                 clock: Callable[[], float] = time.monotonic):
        self._host, self._port = host, port
        self.cluster = Cluster(compat, clock)
        self._faults: list[Fault] = []
        self._auth: set[str] | None = None
        self._echo_credentials = False
        self.requests: list[RequestRecord] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the cluster's settings, kept here for tests
    @property
    def compat(self) -> tuple[int, ...]:
        return self.cluster.compat

    @property
    def clock(self) -> Callable[[], float]:
        return self.cluster.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.cluster.clock = clock

    @property
    def auto_create_index(self) -> bool:
        return self.cluster.auto_create_index

    @auto_create_index.setter
    def auto_create_index(self, value: bool) -> None:
        self.cluster.auto_create_index = value

    @property
    def _indices(self) -> dict[str, Index]:
        """The cluster's indices by name, for tests that check an index was not created."""
        return self.cluster.indices

    # -- lifecycle
    def start(self) -> EsDouble:
        handler = type("Handler", (_Handler,), {"double": self})
        self._server = ThreadingHTTPServer((self._host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="es-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the double first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- test API
    def reset(self) -> None:
        """Forget indices, templates, PITs, stored scripts, faults, auth and the request log."""
        with self.cluster.lock:
            self.cluster.reset()
            self._faults.clear()
            self._auth = None
            self._echo_credentials = False
            self.requests.clear()

    def create_index(self, index: str, properties: Mapping[str, Any] | None = None, dynamic: str = "true",
                     settings: Mapping[str, Any] | None = None) -> None:
        with self.cluster.lock:
            mappings = {"properties": dict(properties or {}), "dynamic": dynamic}
            self.cluster.create_index(index, validate_mappings(mappings), normalize_settings(dict(settings or {})))

    def seed(self, index: str, docs: Mapping[str, dict] | Iterable[dict], refresh: bool = True) -> None:
        """Index documents directly (type-checked like ``PUT /idx/_doc/id``); a list takes ids from ``"id"``."""
        items = docs.items() if isinstance(docs, Mapping) else ((d["id"], d) for d in docs)
        with self.cluster.lock:
            idx = self.cluster.indices.get(index) or self.cluster.create_index(index, {}, {})
            for doc_id, source in items:
                self.cluster.put_doc(idx, str(doc_id), dict(source))
            if refresh:
                idx.refresh()

    def doc(self, index: str, doc_id: str) -> dict | None:
        with self.cluster.lock:
            found = self.cluster.indices[index].docs.get(doc_id) if index in self.cluster.indices else None
            return copy.deepcopy(found.source) if found else None

    def version(self, index: str, doc_id: str) -> int | None:
        with self.cluster.lock:
            found = self.cluster.indices[index].docs.get(doc_id) if index in self.cluster.indices else None
            return found.version if found else None

    def docs(self, index: str) -> dict[str, dict]:
        with self.cluster.lock:
            return {k: copy.deepcopy(v.source) for k, v in self.cluster.indices[index].docs.items()}

    def mapping(self, index: str) -> dict:
        with self.cluster.lock:
            return copy.deepcopy(self.cluster.indices[index].mappings)

    def template(self, name: str) -> dict | None:
        with self.cluster.lock:
            return copy.deepcopy(self.cluster.templates.get(name))

    def open_pits(self) -> set[str]:
        """The first id of every point in time that is neither closed nor expired."""
        with self.cluster.lock:
            self.cluster.expire_pits()
            return {pit.ids[0] for pit in self.cluster.pits.values()}

    def fail_requests(self, status: int, times: int | None = 1, path: str | None = None,
                      method: str | None = None, error_type: str | None = None, reason: str | None = None) -> None:
        """Answer the next ``times`` requests (``None``: all) whose path matches the regex ``path`` with ``status``."""
        with self.cluster.lock:
            self._faults.append(Fault(status, times, re.compile(path) if path else None, method, None,
                                      error_type, reason))

    def unfired_faults(self) -> int:
        """How many injected request faults have not fired yet (a forever fault counts as one): lets a test
        check that the failures it injected really happened."""
        with self.cluster.lock:
            return sum(1 if f.remaining is None else f.remaining for f in self._faults)

    def fail_connections(self, times: int | None = 1, path: str | None = None, method: str | None = None) -> None:
        """Drop the connection of the next ``times`` matching requests without answering (after reading them)."""
        with self.cluster.lock:
            self._faults.append(Fault(0, times, re.compile(path) if path else None, method))

    def fail_bulk_items(self, status: int, times: int | None = 1, ids: Iterable[str] | None = None,
                        error_type: str | None = None, reason: str | None = None) -> None:
        """Fail the next ``times`` bulk items (``None``: forever), optionally only those with ``ids``.

        The default error type follows the status: 429 is ``es_rejected_execution_exception``.
        """
        with self.cluster.lock:
            self.cluster.item_faults.append(Fault(status, times, None, None, frozenset(ids) if ids else None,
                                                  error_type, reason))

    def clear_faults(self) -> None:
        with self.cluster.lock:
            self._faults.clear()
            self.cluster.item_faults.clear()

    def require_auth(self, api_key: str | None = None, basic: tuple[str, str] | None = None,
                     echo_credentials: bool = False) -> None:
        """Answer 401 unless a request carries one of these credentials (none given: no auth needed).

        ``echo_credentials`` makes the 401 reason quote the offered header, like a careless
        proxy would, so tests can prove that our side redacts it.
        """
        accepted = set()
        if api_key:
            accepted.add(f"ApiKey {api_key}")
        if basic:
            accepted.add("Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode())
        with self.cluster.lock:
            self._auth = accepted or None
            self._echo_credentials = echo_credentials

    def bulk_requests(self) -> list[RequestRecord]:
        return [r for r in list(self.requests) if r.path.endswith("/_bulk")]

    # -- serving
    def answer(self, method: str, path: str, params: dict, body: bytes, auth: str | None) -> tuple[int, Any]:
        """``(status, JSON answer)`` for one request: authentication, injected faults, then its endpoint."""
        with self.cluster.lock:
            if self._auth is not None and auth not in self._auth:
                offered = f" with [{auth}]" if self._echo_credentials and auth else ""
                reason = (f"unable to authenticate user{offered} for REST request [{path}]" if auth
                          else f"missing authentication credentials for REST request [{path}]")
                raise EsHttpError(401, "security_exception", reason,
                                  headers={"WWW-Authenticate": 'Basic realm="security", ApiKey'})
            for fault in self._faults:
                if fault.applies(method, path) and fault.take():
                    if fault.status == 0:
                        raise DropConnection()
                    type_, reason = error_type_for(fault.status)
                    raise EsHttpError(fault.status, fault.error_type or type_, fault.reason or reason)
            self.cluster.expire_pits()
            handler = ROUTES.find(method, path)
            if handler is None:
                raise illegal_argument(f"no handler found for uri [{path}] and method [{method}]")
            return handler(self.cluster, [p for p in path.split("/") if p], params, body)


def _compat_version(value: str | None, header: str) -> int | None:
    """The ``compatible-with`` version of a media type, None for plain JSON/NDJSON; raises for anything else."""
    if value is None:
        return None
    media = [p.strip() for p in value.split(";")]
    kind = media[0].lower()
    if kind in ("application/json", "application/x-ndjson", "*/*"):
        return None
    if kind in ("application/vnd.elasticsearch+json", "application/vnd.elasticsearch+x-ndjson"):
        for param in media[1:]:
            key, _, val = param.partition("=")
            if key.strip() == "compatible-with" and val.strip().isdigit():
                return int(val.strip())
    raise EsHttpError(400, "media_type_header_exception", f"Invalid media-type value on headers [{header}]")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "es-double"
    double: EsDouble

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        auth = self.headers.get("Authorization")
        record = RequestRecord(self.command, unquote(split.path), params,
                               {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
                               body, auth_scheme=auth.split(" ", 1)[0] if auth else None)
        double = self.double
        double.requests.append(record)
        compat = None
        extra_headers: dict[str, str] = {}
        try:
            compat = self._check_headers(body)
            status, payload = double.answer(self.command, record.path, params, body, auth)
        except DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        except EsHttpError as exc:
            status, payload, extra_headers = exc.status, exc.body(), exc.headers
        except Exception as exc:  # noqa: BLE001 -- a bug in the double must look like a server error, not hang the client
            status, payload = 500, EsHttpError(500, "double_internal_error", repr(exc)).body()
        record.status, record.response = status, payload
        self._respond(status, payload, compat, extra_headers)

    def _check_headers(self, body: bytes) -> int | None:
        accept = _compat_version(self.headers.get("Accept"), "Accept")
        content_type = self.headers.get("Content-Type")
        sent = _compat_version(content_type, "Content-Type") if body else None
        if body and not content_type:
            raise EsHttpError(406, "media_type_header_exception", "Content-Type header is missing")
        for version in (accept, sent):
            if version is not None and version not in self.double.compat:
                raise EsHttpError(400, "media_type_header_exception",
                                  f"A compatible version is required on both Content-Type and Accept headers if "
                                  f"either one has requested a compatible version. Accept={self.headers.get('Accept')}"
                                  f", Content-Type={content_type}; this server speaks {list(self.double.compat)}")
        if body and accept is not None and sent is not None and accept != sent:
            raise EsHttpError(400, "media_type_header_exception", "the compatible versions must match")
        return accept if accept is not None else sent

    def _respond(self, status: int, payload: Any, compat: int | None, extra_headers: dict) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        if compat is not None:
            self.send_header("Content-Type", f"application/vnd.elasticsearch+json;compatible-with={compat}")
        else:
            self.send_header("Content-Type", "application/json")
        for key, value in extra_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _dispatch
