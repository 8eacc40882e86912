"""The per-image time budget, and the watchdog that enforces it on the socket itself.

Socket timeouts bound one ``recv``, not an answer: http.client reads the status
line and every header line with its own ``recv``, and each gets the whole read
timeout again. So a fetch's budget is enforced twice. :func:`clip` shortens every
blocking step's timeout (connect, waiting for headers, each body read, retry
backoff) to what is left of the budget of the fetch running on this thread; and a
:class:`Watchdog` thread shuts the fetch's sockets down when the budget is spent,
whatever is reading from them at the time.

The connections of :mod:`transforms.address_guard` put their sockets under the
watch (:func:`watch_socket`) and take them off when they go back to the pool
(:func:`unwatch_socket`); :class:`transforms.fetch.ImageFetcher` arms one watch
per image.
"""
from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from transforms.deadletter import Rejected

# requests/urllib3 give no way to pass a per-call deadline down to the socket, so
# the fetch running on this thread publishes its deadline here (Watchdog.arm) and
# every blocking step is clipped to it.
_budget = threading.local()


def clip(timeout: Any, doing: str) -> Any:
    """``timeout`` shortened to what is left of this thread's budget; Rejected once it is spent."""
    deadline = getattr(_budget, "deadline", None)
    if deadline is None:
        return timeout
    timeout = timeout if isinstance(timeout, (int, float)) else None  # urllib3's "default" sentinel
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Rejected("fetch_timeout", f"time budget of {_budget.total:g}s spent before {doing}")
    return remaining if timeout is None else min(timeout, remaining)


def current_watch() -> Watch | None:
    """The watch of the fetch running on this thread, if any."""
    return getattr(_budget, "watch", None)


class Watch:
    """One fetch's deadline and the sockets it has used, each with the watch's own duplicate of it."""

    __slots__ = ("cut", "deadline", "done", "fired", "owner", "sockets")

    def __init__(self, deadline: float, owner: Watchdog):
        self.deadline = deadline
        self.owner = owner
        self.sockets: dict[socket.socket, socket.socket] = {}  # watched socket -> duplicate the watch owns
        self.fired = False  # the budget ran out
        self.cut = False    # ... while the fetch had a socket, which the watchdog shut down
        self.done = False   # the fetch is over; nothing of it may be touched any more


def _duplicate(sock: socket.socket) -> socket.socket | None:
    """A plain socket on a new descriptor for the same connection (below TLS); None if ``sock`` is closed.

    Shutting the duplicate down ends the connection for every descriptor of it, so a
    blocked ``recv`` on ``sock`` returns at once, and no TLS state is touched. Never
    change its timeout: the blocking flag is shared with ``sock``.
    """
    try:
        return socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
    except OSError:
        return None


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (any more): nothing to cut


class Watchdog:
    """Shuts down the sockets of a fetch that outlives its time budget.

    Clipping socket timeouts is not enough: each ``recv`` gets the whole read
    timeout again, and http.client makes one per status/header line (100 header
    lines allowed), so a server dripping lines would hold a worker for ~100 read
    timeouts. One thread per fetcher watches every fetch in flight. Fetches are
    armed in deadline order (one budget per fetcher), so a deque is the queue; the
    thread sleeps until the oldest deadline, and ends once nothing is armed.

    The watchdog never touches a fetch's own sockets: each watch holds a
    duplicate descriptor of every socket it watches, made, cut and closed only
    under the lock. A socket therefore stays watched when its connection object
    lets go of it: http.client closes the connection once the head of a
    ``Connection: close`` or HTTP/1.0 answer is in, while the body is still read
    from the socket. Whoever closes the socket itself, the watch's duplicate keeps
    the descriptor it cuts open until the fetch disarms (or the connection goes
    back to the pool), so a cut can never land on a descriptor that was reused by
    another connection.
    """

    def __init__(self, budget: float):
        self._seconds = budget
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._armed: collections.deque[Watch] = collections.deque()
        self._thread: threading.Thread | None = None

    def arm(self) -> Watch:
        """Start one fetch's budget; it applies to this thread (:func:`clip`, :func:`watch_socket`) until disarmed."""
        with self._lock:
            watch = Watch(time.monotonic() + self._seconds, self)
            self._armed.append(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imagescore-fetch-watchdog", daemon=True)
                self._thread.start()
        _budget.deadline, _budget.total, _budget.watch = watch.deadline, self._seconds, watch
        return watch

    def disarm(self, watch: Watch) -> bool:
        """End the watch (call it on the thread that armed it); True when the budget ran out first.

        Once it returns, no socket of the fetch can be cut any more.
        """
        _budget.deadline = _budget.watch = None
        with self._lock:
            watch.done = True
            for duplicate in watch.sockets.values():
                duplicate.close()
            watch.sockets.clear()
            return watch.fired

    def attach(self, watch: Watch, sock: socket.socket) -> None:
        with self._lock:
            if watch.done or sock in watch.sockets:
                return
            duplicate = _duplicate(sock)
            if duplicate is None:
                return  # already closed: nothing can be read from it
            watch.sockets[sock] = duplicate
            if watch.fired:  # connected after the budget ran out: nothing more may be read
                _cut(duplicate)

    def detach(self, watch: Watch, socks: Iterable[socket.socket]) -> bool:
        """Stop watching ``socks``; True when the budget ran out (they may have been cut)."""
        with self._lock:
            for sock in socks:
                duplicate = watch.sockets.pop(sock, None)
                if duplicate is not None:
                    duplicate.close()
            return watch.fired

    def expire(self, watch: Watch) -> None:
        """Spend ``watch``'s budget now: mark it fired and cut its sockets."""
        with self._lock:
            self._expire(watch)

    def _expire(self, watch: Watch) -> None:
        if not watch.done and not watch.fired:
            watch.fired = True
            watch.cut = bool(watch.sockets)
            for duplicate in watch.sockets.values():
                _cut(duplicate)

    def _run(self) -> None:
        with self._lock:
            while True:
                while self._armed and self._armed[0].done:
                    self._armed.popleft()
                if not self._armed:
                    self._thread = None
                    return
                first = self._armed[0]
                wait = first.deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                self._armed.popleft()
                self._expire(first)

    def close(self) -> None:
        """Let the thread end now if nothing is in flight (it also ends on its own once idle)."""
        with self._lock:
            thread = self._thread
            idle = all(watch.done for watch in self._armed)
            self._wake.notify()
        if thread is not None and idle:
            thread.join()


def watch_socket(conn: Any) -> None:
    """Put ``conn``'s socket under the watchdog of the fetch running on this thread."""
    watch = current_watch()
    if watch is None or conn.sock is None:
        return
    if conn._watch is not None and conn._watch is not watch:
        unwatch_socket(conn)
    conn._watch = watch
    conn._watched = conn._watched | {conn.sock}  # also the sockets it closed: a response may still read them
    watch.owner.attach(watch, conn.sock)


def unwatch_socket(conn: Any) -> bool:
    """Take ``conn``'s sockets off its watch; True when the budget ran out (the socket may be cut: unusable)."""
    watch: Watch | None = conn._watch
    if watch is None:
        return False
    watched, conn._watch, conn._watched = conn._watched, None, frozenset()
    return watch.owner.detach(watch, watched)

