"""The network guard (tests/fixtures/network_guard.py) can fail a test, and lets loopback through.

The failing tests run in a separate pytest process, so their refused attempts
are recorded there and not here. Nothing leaves the machine: the guard raises
before any lookup or connect.
"""
from __future__ import annotations

import os
import socket
import textwrap

import pytest

from tests.fixtures.network_guard import NetworkAccessError, is_loopback_host, resolves_locally

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("host", [None, "", "localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]",
                                  "::ffff:127.0.0.1", b"127.0.0.1", "app.localhost", "::1%lo"])
def test_loopback_hosts_are_allowed(host):
    assert is_loopback_host(host) is True


@pytest.mark.parametrize("host", ["github.com", "huggingface.co", "8.8.8.8", "10.0.0.1", "192.168.1.1",
                                  "169.254.169.254", "0.0.0.0", "::", "2001:db8::1", "localhost.evil.com",
                                  "127.0.0.1.nip.io"])
def test_other_hosts_are_refused(host):
    assert is_loopback_host(host) is False


@pytest.mark.parametrize("host,local", [("169.254.169.254", True), ("10.0.0.1", True), ("::", True),
                                        ("localhost", True), (None, True), ("github.com", False),
                                        ("10.0.0.1.example", False)])
def test_only_names_other_than_localhost_need_a_dns_server(host, local):
    assert resolves_locally(host) is local


def test_looking_up_an_address_literal_is_allowed_but_connecting_to_it_is_not():
    """The fetcher's address policy resolves literals such as the metadata address; only a connect leaves."""
    assert socket.getaddrinfo("169.254.169.254", 80, type=socket.SOCK_STREAM)[0][4] == ("169.254.169.254", 80)
    with pytest.raises(NetworkAccessError, match="resolve 'metadata.google.internal'"):
        socket.getaddrinfo("metadata.google.internal", 80)
    with pytest.raises(NetworkAccessError, match="connect to '169.254.169.254'"):
        socket.create_connection(("169.254.169.254", 80), timeout=1)
    from tests.fixtures.network_guard import RECORD
    assert len(RECORD.unreported()) == 2  # both expected here


def test_loopback_connections_work_under_the_guard():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("localhost", port), timeout=5):
            pass
        with socket.socket() as client:
            assert client.connect_ex(("127.0.0.1", port)) == 0


def test_unix_sockets_are_allowed(tmp_path):
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)


def test_a_refused_connect_raises_before_any_traffic():
    """A routable address is refused by the guard itself: the error is ours, not the kernel's."""
    with socket.socket() as sock:
        with pytest.raises(NetworkAccessError, match="203.0.113.7"):
            sock.connect(("203.0.113.7", 80))
    # the attempt is on record; take it off so this test, which expected it, passes
    from tests.fixtures.network_guard import RECORD
    assert len(RECORD.unreported()) == 1


INNER = '''
import contextlib
import os
import socket

import pytest


def test_prism_download():
    """Beam's default DirectRunner tries to download Prism from GitHub, then falls back quietly."""
    import apache_beam as beam
    with beam.Pipeline(runner="DirectRunner") as p:
        _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x + 1)


def test_hub_download(tmp_path):
    """A model-hub download with offline mode off; the hub client turns the error into its own."""
    os.environ["HF_HUB_OFFLINE"] = "0"
    from huggingface_hub import hf_hub_download
    with contextlib.suppress(Exception):
        hf_hub_download("openai/clip-vit-base-patch16", "config.json", cache_dir=str(tmp_path))


def test_real_image_url():
    """The project's own fetcher on a real URL; it turns the failure into a dead-letter reason."""
    from transforms.fetch import ImageFetcher
    with contextlib.suppress(Exception):
        ImageFetcher().fetch("https://images.example.com/photo.jpg")


def test_plain_connect_by_address():
    with socket.socket() as sock:
        sock.settimeout(1)
        sock.connect(("203.0.113.7", 443))


def test_loopback_passes():
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
'''


def test_the_guard_fails_tests_that_reach_out(pytester, monkeypatch, tmp_path):
    pytester.makeconftest('pytest_plugins = ["tests.fixtures.network_guard"]\n')
    pytester.makepyfile(test_inner=textwrap.dedent(INNER))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached Prism binary: Beam must try the download
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=4, passed=1)
    text = result.stdout.str()
    for name, host in [("test_prism_download", "github.com"), ("test_hub_download", "huggingface.co"),
                       ("test_real_image_url", "images.example.com"), ("test_plain_connect_by_address", "203.0.113.7")]:
        assert f"FAILED test_inner.py::{name}" in text
        assert f"'{host}'" in text, host
