"""The image fetcher against a real HTTP server on 127.0.0.1.

Loopback is blocked by default, so each test that needs the server allows
exactly ``127.0.0.1:PORT``. Private-range behaviour is tested through a faked
resolver and a socket opener that fails the test if it is ever called: these
tests never connect anywhere but 127.0.0.1.
"""
from __future__ import annotations

import json
import pickle
import socket
import threading
import time
from datetime import UTC, datetime

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from urllib3.response import HTTPResponse

from pipelines.local_runner import local_runner
from tests.fixtures.image_server import TINY_PNG, ImageServer
from transforms import address_guard, watchdog
from transforms import fetch as fetch_module
from transforms.deadletter import DEAD_LETTER, Rejected
from transforms.fetch import FetchImages, FetchPolicy, ImageFetcher
from transforms.items import Item

JPEG_ISH = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


def policy_for(server: ImageServer, **overrides) -> FetchPolicy:
    settings = {"allowed_hosts": frozenset({server.host_port}), "backoff": 0.01, "retries": 2,
                "connect_timeout": 2.0, "read_timeout": 2.0, "total_timeout": 5.0}
    settings.update(overrides)
    return FetchPolicy(**settings)


def rejected(fetcher: ImageFetcher, url: str) -> Rejected:
    with pytest.raises(Rejected) as info:
        fetcher.fetch(url)
    return info.value


@pytest.fixture
def fetcher(image_server):
    with ImageFetcher(policy_for(image_server)) as f:
        yield f


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if the fetcher opens any socket."""
    opened = []

    def refuse(family, sockaddr, *args, **kwargs):
        opened.append(sockaddr)
        raise AssertionError(f"the fetcher tried to connect to {sockaddr}")

    monkeypatch.setattr(address_guard, "open_socket", refuse)
    return opened


def pooled_connections(fetcher: ImageFetcher, url: str) -> list:
    """The idle connections the fetcher's pool keeps for ``url``'s host (None slots are never-made ones)."""
    manager = fetcher._session.get_adapter(url).poolmanager
    port = int(url.split(":")[2].split("/")[0])
    pools = [manager.pools[key] for key in manager.pools.keys() if key.key_port == port]  # noqa: SIM118 - no __iter__
    assert len(pools) == 1, f"expected the pool for port {port}, found {len(pools)}"
    return [conn for conn in list(pools[0].pool.queue) if conn is not None]


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("imagescore-fetch")]


def fake_dns(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """Answer lookups from ``answers``; returns the list of looked-up hosts."""
    asked: list[str] = []

    def resolve(host, port):
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(address_guard, "resolve", resolve)
    return asked


# --- the address guard ------------------------------------------------------------

def test_loopback_is_blocked_by_default_and_allowed_by_host_port(image_server):
    url = image_server.route("photo.jpg", body=JPEG_ISH, content_type="image/jpeg")
    with ImageFetcher(FetchPolicy()) as default:
        exc = rejected(default, url)
    assert exc.reason == "blocked_address"
    assert "127.0.0.1" in str(exc) and "--allow-image-hosts" in str(exc)
    assert image_server.hits["/photo.jpg"] == 0, "a blocked address must not be connected to"

    with ImageFetcher(FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{image_server.port + 1}"}))) as other_port:
        assert rejected(other_port, url).reason == "blocked_address"

    with ImageFetcher(FetchPolicy(allowed_hosts=frozenset({image_server.host_port}))) as allowed:
        assert allowed.fetch(url) == JPEG_ISH


def test_ipv4_mapped_loopback_literal_is_blocked(no_connections):
    with ImageFetcher(FetchPolicy()) as f:
        assert rejected(f, "http://[::ffff:127.0.0.1]:8080/x.jpg").reason == "blocked_address"
    assert no_connections == []


@pytest.mark.parametrize("answer", [["10.0.0.1"], ["169.254.169.254"], ["fd00::1"], ["100.64.0.1"],
                                    ["93.184.216.34", "192.168.0.10"]])
def test_hostname_resolving_to_a_private_address_is_blocked(monkeypatch, no_connections, answer):
    fake_dns(monkeypatch, {"images.seller.example": answer})
    with ImageFetcher(FetchPolicy()) as f:
        exc = rejected(f, "http://images.seller.example/p.jpg")
    assert exc.reason == "blocked_address"
    assert any(ip in str(exc) for ip in answer)
    assert no_connections == [], "nothing may be connected to once any answer is non-public"


def test_unresolvable_host_is_a_dns_error(monkeypatch, no_connections):
    fake_dns(monkeypatch, {})
    with ImageFetcher(FetchPolicy()) as f:
        exc = rejected(f, "https://no-such-host.example/p.jpg")
    assert exc.reason == "dns_error" and "no-such-host.example" in str(exc)


def test_the_checked_address_is_the_connected_address(monkeypatch, image_server):
    """One lookup per connection, by the guard; urllib3 must not resolve the name again (DNS rebinding)."""
    image_server.route("p.png")
    asked = fake_dns(monkeypatch, {"cdn.test": ["127.0.0.1"]})
    connected = []
    real_open = address_guard.open_socket

    def spy(family, sockaddr, *args):
        connected.append(sockaddr[0])
        return real_open(family, sockaddr, *args)

    def no_second_lookup(*args, **kwargs):
        raise AssertionError(f"unguarded DNS lookup {args}")

    monkeypatch.setattr(address_guard, "open_socket", spy)
    monkeypatch.setattr(socket, "getaddrinfo", no_second_lookup)
    with ImageFetcher(FetchPolicy(allowed_hosts=frozenset({f"cdn.test:{image_server.port}"}))) as f:
        assert f.fetch(f"http://cdn.test:{image_server.port}/p.png") == TINY_PNG
    assert asked == ["cdn.test"] and connected == ["127.0.0.1"]


def test_redirect_to_a_blocked_host_is_refused(fetcher, image_server):
    # localhost is the same server, but only 127.0.0.1:PORT is allowed: each hop is checked on its own.
    url = image_server.route("hop", redirect=f"http://localhost:{image_server.port}/p.png")
    image_server.route("p.png")
    exc = rejected(fetcher, url)
    assert exc.reason == "blocked_address" and "localhost" in str(exc)
    assert image_server.hits["/p.png"] == 0


def test_redirect_to_metadata_endpoint_never_connects(monkeypatch, image_server):
    url = image_server.route("meta", redirect="http://169.254.169.254/latest/meta-data/")
    real_open = address_guard.open_socket
    connected = []

    def loopback_only(family, sockaddr, *args):
        connected.append(sockaddr[0])
        assert sockaddr[0] == "127.0.0.1", f"connected to {sockaddr}"
        return real_open(family, sockaddr, *args)

    monkeypatch.setattr(address_guard, "open_socket", loopback_only)
    with ImageFetcher(policy_for(image_server)) as f:
        exc = rejected(f, url)
    assert exc.reason == "blocked_address" and "169.254.169.254" in str(exc)
    assert connected == ["127.0.0.1"]


def test_redirects_are_followed_within_the_limit(fetcher, image_server):
    image_server.route("final.png")
    image_server.route("r2", redirect="/final.png", status=301)
    url = image_server.route("r1", redirect=image_server.url("r2"), status=307)
    assert fetcher.fetch(url) == TINY_PNG


def test_redirect_loop_is_too_many_redirects(image_server):
    url = image_server.route("loop", redirect="/loop")
    with ImageFetcher(policy_for(image_server, max_redirects=3)) as f:
        exc = rejected(f, url)
    assert exc.reason == "too_many_redirects"
    assert image_server.hits["/loop"] == 4, "the first request plus max_redirects hops, then stop"


def test_redirect_to_a_storage_scheme_is_refused_even_when_enabled(image_server, tmp_path):
    target = tmp_path / "secret.png"
    target.write_bytes(TINY_PNG)
    url = image_server.route("to-file", redirect=target.as_uri())
    with ImageFetcher(policy_for(image_server, allowed_schemes=frozenset({"file"}))) as f:
        assert rejected(f, url).reason == "blocked_scheme"


# --- connection failures ------------------------------------------------------------

def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_refused_connection_is_connection_refused():
    port = closed_port()
    url = f"http://127.0.0.1:{port}/p.png"
    with ImageFetcher(FetchPolicy(allowed_hosts=f"127.0.0.1:{port}", backoff=0.01, retries=2)) as f:
        exc = rejected(f, url)
    assert exc.reason == "connection_refused", exc
    assert url in str(exc) and "refused" in str(exc) and "2 retries" in str(exc)


def test_a_refusal_with_no_time_left_for_a_retry_is_still_connection_refused():
    """The backoff (5 s) would pass the 1 s budget, so the fetcher gives up at once: the refusal is the cause."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}/p.png"
    with ImageFetcher(FetchPolicy(allowed_hosts=f"127.0.0.1:{port}", backoff=5.0, retries=2,
                                  total_timeout=1.0)) as f:
        exc = rejected(f, url)
    assert exc.reason == "connection_refused", exc
    assert url in str(exc) and "Connection refused" in str(exc)


def test_an_unreachable_host_is_a_connection_error(monkeypatch):
    """No route to a public address (faked: this test never leaves the machine); every try is made."""
    import errno
    fake_dns(monkeypatch, {"images.seller.example": ["93.184.216.34"]})
    tried = []

    def unreachable(family, sockaddr, *args, **kwargs):
        tried.append(sockaddr)
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    monkeypatch.setattr(address_guard, "open_socket", unreachable)
    with ImageFetcher(FetchPolicy(backoff=0.01, retries=2)) as f:
        exc = rejected(f, "http://images.seller.example/p.jpg")
    assert exc.reason == "connection_error", exc
    assert "No route to host" in str(exc) and "images.seller.example" in str(exc)
    assert tried == [("93.184.216.34", 80)] * 3, "one try plus retries=2"


def test_a_connect_timeout_is_a_fetch_timeout():
    """A real loopback listener whose accept queue is full: the kernel drops the SYN, so connect hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        try:
            url = f"http://127.0.0.1:{port}/p.png"
            with ImageFetcher(FetchPolicy(allowed_hosts=f"127.0.0.1:{port}", connect_timeout=0.5, retries=1,
                                          backoff=0.01, total_timeout=30.0)) as f:
                start = time.monotonic()
                exc = rejected(f, url)
                elapsed = time.monotonic() - start
        finally:
            for sock in queued:
                sock.close()
    assert exc.reason == "fetch_timeout", exc
    assert url in str(exc) and "connect 0.5s" in str(exc)
    assert elapsed < 2 * 0.5 + 2, f"took {elapsed:.1f}s; the 30 s budget alone would allow 30 s"


def test_no_addresses_is_a_dns_error(monkeypatch, no_connections):
    fake_dns(monkeypatch, {"empty.example": []})
    with ImageFetcher(FetchPolicy()) as f:
        exc = rejected(f, "https://empty.example/p.jpg")
    assert exc.reason == "dns_error" and "'empty.example' has no addresses" in str(exc)
    assert no_connections == []


def test_a_redirect_without_location_is_refused(fetcher, image_server):
    url = image_server.route("moved", status=302, body=b"", content_type=None)
    exc = rejected(fetcher, url)
    assert exc.reason == "http_302" and "without a Location" in str(exc) and url in str(exc)
    assert image_server.hits["/moved"] == 1


def test_a_body_that_stalls_past_the_read_timeout_is_a_fetch_timeout(image_server):
    """One byte, then 30 s of silence: the 0.5 s read timeout ends it (the 10 s budget never comes into it)."""
    url = image_server.route("stall.jpg", body=JPEG_ISH, content_type="image/jpeg", drip=30.0)
    with ImageFetcher(policy_for(image_server, read_timeout=0.5, total_timeout=10.0)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
        elapsed = time.monotonic() - start
    assert exc.reason == "fetch_timeout", exc
    assert "sent nothing for 0.5s after 1 bytes" in str(exc) and url in str(exc)
    assert elapsed < 0.5 + 2, f"took {elapsed:.1f}s"
    assert image_server.hits["/stall.jpg"] == 1, "a body already under way is not retried"


# --- HTTP failures ------------------------------------------------------------------

def test_404_is_http_404(fetcher, image_server):
    exc = rejected(fetcher, image_server.url("missing.jpg"))
    assert exc.reason == "http_404" and "missing.jpg" in str(exc)


def test_500_then_200_is_retried(fetcher, image_server):
    url = image_server.route("flaky.png", fail_first=1)
    assert fetcher.fetch(url) == TINY_PNG
    assert image_server.hits["/flaky.png"] == 2


def test_persistent_503_gives_up_after_the_retries(fetcher, image_server):
    url = image_server.route("down", status=503, body=b"busy", content_type="text/plain")
    assert rejected(fetcher, url).reason == "http_503"
    assert image_server.hits["/down"] == 3, "one try plus retries=2"


@pytest.mark.timeout(30)
def test_retried_error_with_an_endless_body_is_not_drained(fetcher, image_server):
    url = image_server.route("endless-503", status=503, content_type="text/plain", stream_bytes=10**12)
    start = time.monotonic()
    assert rejected(fetcher, url).reason == "http_503"  # a drain would run into the 5 s budget: fetch_timeout
    assert time.monotonic() - start < 5.0, "the body of a retried answer was drained"
    assert image_server.hits["/endless-503"] == 3


def test_slow_server_is_a_fetch_timeout(image_server):
    url = image_server.route("slow.png", delay=3.0)
    with ImageFetcher(policy_for(image_server, read_timeout=0.3, retries=1)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
    assert exc.reason == "fetch_timeout"
    assert time.monotonic() - start < 2 * 0.3 + 2, "two tries of 0.3 s; waiting for the server would take 6 s"
    assert image_server.hits["/slow.png"] == 2, "a read timeout is retried"


def test_total_budget_stops_a_slow_drip(image_server):
    """Each byte arrives within the read timeout, so only the per-image budget can stop it."""
    url = image_server.route("drip.png", body=JPEG_ISH, content_type="image/jpeg", drip=0.05)
    with ImageFetcher(policy_for(image_server, read_timeout=2.0, total_timeout=0.8)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
    assert exc.reason == "fetch_timeout" and "budget" in str(exc)
    assert time.monotonic() - start < 0.8 + 2, "the whole drip would take 8 minutes"


def test_retries_stop_at_the_total_budget(image_server):
    """Eleven tries of 0.8 s would take 8.8 s; the 1 s budget ends them (retries, backoff and all)."""
    url = image_server.route("slower.png", delay=30.0)
    with ImageFetcher(policy_for(image_server, read_timeout=0.8, total_timeout=1.0, retries=10)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
    assert exc.reason == "fetch_timeout"
    assert time.monotonic() - start < 1.0 + 2
    assert image_server.hits["/slower.png"] == 2


def test_backoff_never_sleeps_past_the_budget(image_server):
    url = image_server.route("busy", status=503, body=b"busy", content_type="text/plain")
    with ImageFetcher(policy_for(image_server, backoff=5.0, total_timeout=1.0, retries=3)) as f:
        exc = rejected(f, url)
    assert exc.reason == "fetch_timeout" and "retry" in str(exc)
    # Unbounded, it would try 4 times and sleep 5 + 10 + 20 s. urllib3 retries the first 503 at once and would
    # then sleep 10 s, past the budget: two tries, then it gives up (counted, not timed, so load cannot fail it).
    assert image_server.hits["/busy"] == 2, "must give up instead of sleeping 10 + 20 s"


def test_budget_left_after_slow_headers_bounds_the_body_reads(image_server):
    """Headers take 0.6 s of a 1 s budget; a body read then may wait only the 0.4 s left, not a fresh 10 s."""
    url = image_server.route("late.png", body=JPEG_ISH, content_type="image/png", delay=0.6, drip=30.0)
    with ImageFetcher(policy_for(image_server, read_timeout=10.0, total_timeout=1.0, retries=0)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
    assert exc.reason == "fetch_timeout" and "budget" in str(exc)
    assert time.monotonic() - start < 1.0 + 2, "the read timeout alone would allow 10.6 s"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unit,drip,lines", [("line", 0.2, 40), ("byte", 0.1, 5)])
def test_a_dripped_status_line_and_headers_cannot_outlast_the_budget(image_server, unit, drip, lines):
    """Every piece arrives well within the read timeout, and http.client gives each line its own recv:
    only a deadline on the socket itself ends it (8 s and ~12 s of head here, against a 1.5 s budget)."""
    url = image_server.route("head-drip.png", head_drip=drip, head_drip_unit=unit, head_lines=lines)
    good = image_server.route("after.png")
    with ImageFetcher(policy_for(image_server, read_timeout=1.0, total_timeout=1.5, retries=2)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
        elapsed = time.monotonic() - start
        assert exc.reason == "fetch_timeout", exc
        assert "budget of 1.5s" in str(exc) and url in str(exc)
        assert elapsed < 1.5 + 2, f"took {elapsed:.1f}s; the whole head takes 8 s or more"
        assert image_server.hits["/head-drip.png"] == 1, "no retry once the budget is spent"
        assert all(conn.sock is None or conn.is_connected for conn in pooled_connections(f, url)), \
            "a cut socket went back into the pool"
        assert f.fetch(good) == TINY_PNG, "the same fetcher still works"
    assert image_server.hits["/after.png"] == 1


@pytest.mark.timeout(30)
def test_a_dripped_head_over_tls_is_cut_below_tls(tls_image_server):
    """Over https the cut must reach the socket under the TLS layer that http.client reads through."""
    server = tls_image_server
    url = server.route("head-drip.png", head_drip=0.2, head_lines=40)
    good = server.route("after.png")
    with ImageFetcher(policy_for(server, read_timeout=1.0, total_timeout=1.5)) as f:
        f._session.verify = server.ca_file  # trust the throwaway certificate, nothing else changes
        assert f.fetch(good) == TINY_PNG, "https works at all"
        start = time.monotonic()
        exc = rejected(f, url)
        elapsed = time.monotonic() - start
        assert exc.reason == "fetch_timeout" and "budget of 1.5s" in str(exc)
        assert elapsed < 1.5 + 2, f"took {elapsed:.1f}s; the whole head takes 8 s or more"
        assert f.fetch(good) == TINY_PNG
    assert server.hits["/head-drip.png"] == 1 and server.hits["/after.png"] == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("drip", ["size", "trailers"])
def test_an_answer_that_ends_its_connection_stays_under_the_watchdog(image_server, drip):
    """``Connection: close`` or HTTP/1.0 makes http.client close its connection object once the head is in,
    while the body is still read from the socket: that socket must stay watched until the fetch ends.
    Here a chunk-size line (or endless trailer lines) drips for 10 s, each piece well within the read timeout."""
    url = image_server.route(f"{drip}.png", chunked_drip=drip, drip=0.2, drip_pieces=50)
    good = image_server.route("after.png")
    with ImageFetcher(policy_for(image_server, read_timeout=1.0, total_timeout=1.5, retries=0)) as f:
        start = time.monotonic()
        exc = rejected(f, url)
        elapsed = time.monotonic() - start
        assert elapsed < 1.5 + 2, f"took {elapsed:.1f}s of the 10 s drip ({exc.reason}: {exc})"
        assert exc.reason == "fetch_timeout", exc
        assert "budget of 1.5s" in str(exc) and url in str(exc) and "connection was shut down" in str(exc)
        assert f.fetch(good) == TINY_PNG, "the same fetcher still works"
    assert image_server.hits[f"/{drip}.png"] == 1 and image_server.hits["/after.png"] == 1


@pytest.mark.parametrize("drip", ["size", "trailers"])
def test_an_answer_that_ends_its_connection_in_time_is_read_whole(image_server, drip):
    """The same answers, quickly: the framing is valid, so only the clock made the test above fail them."""
    url = image_server.route(f"{drip}.png", chunked_drip=drip, drip=0.01, drip_pieces=3)
    with ImageFetcher(policy_for(image_server, read_timeout=1.0, total_timeout=1.5, retries=0)) as f:
        assert f.fetch(url) == b"X"
        assert f.fetch(url) == b"X", "a fresh connection replaces the one the answer ended"
    assert image_server.hits[f"/{drip}.png"] == 2


def test_a_budget_spent_before_connecting_says_so_and_sends_nothing(monkeypatch, image_server):
    """A slow DNS lookup is not the server's fault: the message must not blame a connection."""
    url = image_server.route("late-dns.png")
    real_resolve = address_guard.resolve

    def slow_resolve(host, port):
        time.sleep(0.8)
        return real_resolve(host, port)

    monkeypatch.setattr(address_guard, "resolve", slow_resolve)
    with ImageFetcher(policy_for(image_server, total_timeout=0.5, retries=0)) as f:
        exc = rejected(f, url)
        assert exc.reason == "fetch_timeout" and "budget of 0.5s" in str(exc) and url in str(exc)
        assert "no connection was open" in str(exc) and "shut down" not in str(exc), exc
        monkeypatch.undo()
        assert f.fetch(url) == TINY_PNG
    assert image_server.hits["/late-dns.png"] == 1, "the request after the budget was never sent"


def test_a_connection_cut_as_its_answer_ends_is_closed_not_pooled(monkeypatch, image_server):
    """The budget may run out just as the body is complete and urllib3 hands the connection back."""
    url = image_server.route("edge.png")
    real_release = HTTPResponse.release_conn

    def spend_the_budget_then_release(self):
        watch = watchdog.current_watch()
        if watch is not None and self._connection is not None:
            watch.owner.expire(watch)
        return real_release(self)

    monkeypatch.setattr(HTTPResponse, "release_conn", spend_the_budget_then_release)
    with ImageFetcher(policy_for(image_server)) as f:
        exc = rejected(f, url)
        assert exc.reason == "fetch_timeout" and url in str(exc)
        pooled = pooled_connections(f, url)
        assert pooled and all(conn.sock is None for conn in pooled), "the cut connection must be closed"
        monkeypatch.undo()
        assert f.fetch(url) == TINY_PNG
    assert image_server.hits["/edge.png"] == 2


def test_the_watchdog_leaves_finished_fetches_alone(image_server):
    """A fetch that ends in time is not cut later: its kept-alive connection still serves the next fetch."""
    url = image_server.route("ok.png", delay=0.2)
    with ImageFetcher(policy_for(image_server, total_timeout=0.6)) as f:
        assert f.fetch(url) == TINY_PNG
        time.sleep(0.8)  # past the first fetch's deadline
        pooled = pooled_connections(f, url)
        assert len(pooled) == 1 and pooled[0].is_connected, "the watchdog cut a finished fetch's connection"
        assert f.fetch(url) == TINY_PNG
        assert pooled_connections(f, url)[0] is pooled[0], "the kept-alive connection was reused"


def test_no_thread_is_left_behind_per_fetch(image_server):
    urls = [image_server.route(f"t{i}.png", body=TINY_PNG + bytes([i])) for i in range(10)]
    before = threading.active_count()
    existing = set(threading.enumerate())
    with ImageFetcher(policy_for(image_server, concurrency=4)) as f:
        for url in urls:
            f.fetch(url)
        assert len(fetch_threads()) == 1, f"one watchdog per fetcher, got {fetch_threads()}"
        results = f.fetch_many(urls * 4)
        assert results == [TINY_PNG + bytes([i]) for i in range(10)] * 4
        assert len(fetch_threads()) <= 4 + 1, "the pool's workers and one watchdog"
    assert fetch_threads() == []
    deadline = time.monotonic() + 5  # the server's per-connection threads end once the pool's sockets close
    while set(threading.enumerate()) - existing and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) <= existing and threading.active_count() <= before


def test_declared_content_length_over_the_cap_is_refused_before_reading(fetcher, image_server):
    # The server declares 10 GB and sends nothing: reading would end in fetch_timeout, so only an early refusal
    # gives too_large.
    url = image_server.route("liar.jpg", body=b"", content_type="image/jpeg", content_length=10_000_000_000)
    exc = rejected(fetcher, url)
    assert exc.reason == "too_large" and "Content-Length" in str(exc)


def test_body_over_the_cap_with_content_length(image_server):
    url = image_server.route("big.jpg", body=JPEG_ISH, content_type="image/jpeg")
    with ImageFetcher(policy_for(image_server, max_bytes=len(JPEG_ISH) - 1)) as f:
        assert rejected(f, url).reason == "too_large"
    with ImageFetcher(policy_for(image_server, max_bytes=len(JPEG_ISH))) as f:
        assert f.fetch(url) == JPEG_ISH, "exactly the cap is allowed"


def test_streamed_body_without_content_length_is_cut_at_the_cap(image_server):
    # An endless body: reading on would end in the 5 s budget (fetch_timeout), so too_large means it stopped at the cap.
    url = image_server.route("endless.jpg", content_type="image/jpeg", stream_bytes=10**12)
    with ImageFetcher(policy_for(image_server, max_bytes=100_000)) as f:
        exc = rejected(f, url)
    assert exc.reason == "too_large" and "streaming" in str(exc)


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream", None])
def test_non_image_content_type_is_refused(fetcher, image_server, content_type):
    url = image_server.route("page", body=b"<html>hi</html>", content_type=content_type)
    assert rejected(fetcher, url).reason == "bad_content_type"


def test_image_content_type_with_parameters_is_accepted(fetcher, image_server):
    url = image_server.route("p.webp", body=JPEG_ISH, content_type="IMAGE/webp; q=1")
    assert fetcher.fetch(url) == JPEG_ISH


# --- schemes and storage paths ----------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://example.com/p.jpg", "gopher://example.com/", "data:image/png;base64,AAAA",
                                 "gs://bucket/p.jpg", "file:///etc/passwd", "/etc/passwd", "photo.jpg"])
def test_non_http_schemes_are_blocked_by_default(url, no_connections):
    with ImageFetcher(FetchPolicy()) as f:
        exc = rejected(f, url)
    assert exc.reason == "blocked_scheme" and "--allow-image-schemes" in str(exc)


@pytest.mark.parametrize("url", ["", "   ", "http://", "http:///p.jpg", "http://[::1/p.jpg", "http://host:99999/p.jpg"])
def test_malformed_urls_are_bad_url(url, no_connections):
    with ImageFetcher(FetchPolicy()) as f:
        assert rejected(f, url).reason == "bad_url"


def test_local_files_need_the_file_scheme(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(TINY_PNG)
    with ImageFetcher(FetchPolicy()) as default:
        assert rejected(default, str(photo)).reason == "blocked_scheme"
        assert rejected(default, photo.as_uri()).reason == "blocked_scheme"
    with ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"file"}), max_bytes=len(TINY_PNG))) as f:
        assert f.fetch(str(photo)) == TINY_PNG
        assert f.fetch(photo.as_uri()) == TINY_PNG
        assert rejected(f, str(tmp_path / "missing.png")).reason == "file_not_found"
        assert rejected(f, "file://otherhost/etc/passwd").reason == "bad_url"
        big = tmp_path / "big.png"
        big.write_bytes(TINY_PNG + b"\0")
        assert rejected(f, str(big)).reason == "too_large"


@pytest.mark.parametrize("url", ["gs:/../../../../etc/hostname", "gs:etc/hostname", "GS://bucket/p.jpg"])
def test_a_storage_url_beam_would_read_as_something_else_is_refused(monkeypatch, tmp_path, url):
    """urlsplit reads "gs:/.." as a gs URL, Beam as a local path: refuse before anything is opened (or GCS asked)."""
    (tmp_path / "gs:").mkdir()  # so that the relative path "gs:/../etc/hostname" would really resolve
    opened = []

    def no_storage(path, *args, **kwargs):
        opened.append(path)
        raise AssertionError(f"storage was asked about {path!r}")

    monkeypatch.setattr(fetch_module.FileSystems, "open", no_storage)
    monkeypatch.setattr(fetch_module, "_exists", no_storage)
    monkeypatch.chdir(tmp_path)
    with ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"gs"}))) as f:
        exc = rejected(f, url)
    assert exc.reason == "bad_url", exc
    assert "gs://" in str(exc) and url in str(exc)
    assert opened == []


@pytest.mark.parametrize("url", ["file:/etc/hostname", "file:etc/hostname"])
def test_a_file_url_without_slashes_is_refused(tmp_path, url):
    with ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"file"}))) as f:
        exc = rejected(f, url)
    assert exc.reason == "bad_url" and "file:///" in str(exc)


def test_scheme_mismatch_when_the_scheme_is_not_enabled_stays_blocked(no_connections):
    with ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"file"}))) as f:
        assert rejected(f, "gs:/../../etc/hostname").reason == "blocked_scheme"


def test_policy_normalizes_and_validates():
    policy = FetchPolicy(allowed_hosts="Images.Example.com, 127.0.0.1:80", allowed_schemes="GS, file, https")
    assert policy.allowed_hosts == frozenset({"images.example.com", "127.0.0.1:80"})
    assert policy.allowed_schemes == frozenset({"gs", "file"})
    for bad in ({"max_bytes": 0}, {"total_timeout": 0}, {"retries": -1}, {"concurrency": 0},
                {"allowed_schemes": "g s"}, {"allowed_content_types": frozenset()}):
        with pytest.raises(ValueError):
            FetchPolicy(**bad)
    with pytest.raises(ValueError, match="allowed image host"):
        FetchPolicy(allowed_hosts="host:port")


# --- batches and Beam ------------------------------------------------------------

def test_fetch_many_keeps_order_and_loses_nothing(image_server):
    good = [image_server.route(f"ok-{i}.png", body=TINY_PNG + bytes([i]), delay=2.0) for i in range(6)]
    bad = {
        "404": image_server.url("nope.png"),
        "html": image_server.route("page.html", body=b"<html/>", content_type="text/html"),
        "scheme": "file:///etc/passwd",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "empty": "",
    }
    urls = [good[0], bad["404"], good[1], bad["html"], good[2], bad["scheme"], good[3],
            bad["metadata"], good[4], bad["empty"], good[5]]
    with ImageFetcher(policy_for(image_server, concurrency=16, read_timeout=10.0, total_timeout=20.0)) as f:
        start = time.monotonic()
        results = f.fetch_many(urls)
        elapsed = time.monotonic() - start
    assert len(results) == len(urls)
    assert [r for r in results if isinstance(r, bytes)] == [TINY_PNG + bytes([i]) for i in range(6)]
    reasons = [r.reason for r in results if isinstance(r, Rejected)]
    assert reasons == ["http_404", "bad_content_type", "blocked_scheme", "blocked_address", "bad_url"]
    assert image_server.max_in_flight >= 4, f"at most {image_server.max_in_flight} requests overlapped"
    assert elapsed < 2.0 + 2, f"six 2 s images took {elapsed:.2f}s; one after another they take 12 s"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_fetch_images_transform_routes_every_item(image_server, concurrency):
    urls = {
        "good-1": image_server.route("g1.png", body=TINY_PNG + b"1"),
        "good-2": image_server.route("g2.png", body=TINY_PNG + b"2"),
        "good-3": image_server.route("g3.png", body=TINY_PNG + b"3"),
        "missing": image_server.url("missing.png"),
        "private": "http://10.0.0.7/photo.jpg",
        "local-file": "/etc/passwd",
        "html": image_server.route("page.html", body=b"<html/>", content_type="text/html"),
    }
    now = datetime(2026, 1, 1, tzinfo=UTC)
    items = [Item(id=i, image_urls=(u, "http://unused.example/second.jpg"), created_at=now,
                  payload=json.dumps({"id": i, "image_urls": [u]})) for i, u in urls.items()]
    policy = policy_for(image_server, concurrency=concurrency)
    p = test_pipeline.TestPipeline(runner=local_runner())
    out = p | beam.Create(items) | FetchImages(policy)
    fetched = out[FetchImages.MAIN] | "ids" >> beam.Map(lambda pair: (pair[0].id, pair[1]))
    dead = out[DEAD_LETTER] | "dl" >> beam.Map(
        lambda d: (d["id"], d["stage"], d["reason"], json.loads(d["payload"])["id"]))
    assert_that(fetched, equal_to([("good-1", TINY_PNG + b"1"), ("good-2", TINY_PNG + b"2"),
                                   ("good-3", TINY_PNG + b"3")]), label="fetched")
    assert_that(dead, equal_to([("missing", "fetch", "http_404", "missing"),
                                ("private", "fetch", "blocked_address", "private"),
                                ("local-file", "fetch", "blocked_scheme", "local-file"),
                                ("html", "fetch", "bad_content_type", "html")]), label="dead")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                if c.key.metric.namespace == "imagescore"}
    assert counters["fetch_fetched"] == 3
    assert counters["fetch_bytes"] == 3 * (len(TINY_PNG) + 1)
    assert counters["deadletter_fetch_http_404"] == 1 and counters["deadletter_fetch_blocked_address"] == 1
    assert image_server.hits["/g1.png"] == 1


def test_fetch_dofn_pickles_before_setup(image_server):
    transform = FetchImages(policy_for(image_server))
    fn = fetch_module._FetchBatchFn(transform._policy, "fetch")
    clone = pickle.loads(pickle.dumps(fn))
    clone.setup()
    try:
        item = Item(id="x", image_urls=(image_server.route("x.png"),), created_at=datetime.now(UTC))
        assert list(clone.process([item])) == [(item, TINY_PNG)]
    finally:
        clone.teardown()
