"""The address guard, inside the connection: an image fetch connects only where it may.

:mod:`transforms.address_policy` says which addresses are public (pure rules,
no network). This module applies them at connection time: a connection resolves
the host once, checks every answer, and connects to exactly the checked address,
so a DNS answer that changes between check and connect (DNS rebinding) gains
nothing, and every retry and redirect hop is checked again. Hosts on the
operator's ``--allow-image-hosts`` list skip the check.

:class:`GuardedAdapter` plugs the guard into a ``requests`` session. Its
connections also put their sockets under the fetch's :mod:`transforms.watchdog`.
"""
from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterable
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from transforms.address_policy import block_reason, host_allowed
from transforms.deadletter import Rejected
from transforms.watchdog import Watch, clip, unwatch_socket, watch_socket


def resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    """``(family, sockaddr)`` for each address of ``host``. A seam so tests can fake DNS."""
    return [(family, sockaddr) for family, _, _, _, sockaddr in
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def open_socket(family: int, sockaddr: tuple, timeout: float | None,
                source_address: tuple | None, socket_options: Iterable[tuple] | None) -> socket.socket:
    """Connect a TCP socket to exactly ``sockaddr``. A seam so tests can prove no connection was made."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(sockaddr)
        return sock
    except BaseException:
        sock.close()
        raise


@dataclasses.dataclass(frozen=True)
class AddressGuard:
    """Resolve, check every address, then connect to one of those same addresses."""

    allowed_hosts: frozenset[str]

    def connect(self, host: str, port: int, timeout: float | None, source_address: tuple | None = None,
                socket_options: Iterable[tuple] | None = None) -> socket.socket:
        timeout = clip(timeout, f"connecting to {host}")
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise Rejected("dns_error", f"cannot resolve image host {host!r}: {exc}") from None
        if not addresses:
            raise Rejected("dns_error", f"image host {host!r} has no addresses")
        if not host_allowed(host, port, self.allowed_hosts):
            # Refuse when any answer is non-public: a mixed answer is a rebinding attempt.
            for _, sockaddr in addresses:
                why = block_reason(sockaddr[0])
                if why:
                    raise Rejected("blocked_address", (
                        f"image host {host!r} resolves to {sockaddr[0]} ({why}); only public addresses are "
                        f"fetched unless the operator lists the host with --allow-image-hosts {host}:{port}"))
        last_error: OSError | None = None
        for family, sockaddr in addresses:
            try:
                return open_socket(family, sockaddr, timeout, source_address, socket_options)
            except OSError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error


class _GuardedConnectionMixin:
    """Replaces urllib3's ``_new_conn`` (which resolves and connects in one call) with the guard.

    TLS still wraps the socket with ``server_hostname=self.host``, so SNI and
    certificate checks use the URL's host while the TCP peer is the checked address.
    The connection also puts its socket under the fetch's watchdog, until the fetch
    ends or the connection goes back to the pool. Closing the connection does not end
    the watch: the response of an answer that ends its connection reads on from the socket.
    """

    guard: AddressGuard
    _watch: Watch | None = None
    _watched: frozenset[socket.socket] = frozenset()

    def _new_conn(self) -> socket.socket:
        try:
            return self.guard.connect(self._dns_host, self.port, self.timeout,
                                      self.source_address, self.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect to {self.host}: {exc}") from exc

    def connect(self) -> None:
        super().connect()  # for https this includes the handshake, bounded by the (clipped) connect timeout
        watch_socket(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch_socket(self)  # a pooled connection: connected by an earlier fetch
        super().request(*args, **kwargs)

    def getresponse(self):
        self.timeout = clip(self.timeout, f"the response headers from {self.host}")
        return super().getresponse()


class _GuardedPoolMixin:
    """Never pools a connection whose socket the watchdog shut down."""

    def _put_conn(self, conn: Any) -> None:
        if conn is not None and unwatch_socket(conn):
            conn.close()  # cut as the answer ended: the next fetch opens a fresh connection
        super()._put_conn(conn)


def _guarded_pool_classes(guard: AddressGuard) -> dict[str, type]:
    def pool(base_pool: type, base_conn: type) -> type:
        conn = type(f"Guarded{base_conn.__name__}", (_GuardedConnectionMixin, base_conn), {"guard": guard})
        return type(f"Guarded{base_pool.__name__}", (_GuardedPoolMixin, base_pool), {"ConnectionCls": conn})
    return {"http": pool(HTTPConnectionPool, HTTPConnection), "https": pool(HTTPSConnectionPool, HTTPSConnection)}


class GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose every new connection (first try, retry, redirect hop) passes the guard."""

    def __init__(self, guard: AddressGuard, **kwargs: Any):
        self._pool_classes = _guarded_pool_classes(guard)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes
