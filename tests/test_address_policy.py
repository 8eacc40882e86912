"""The SSRF guard's address rules, as pure functions: nothing here resolves or connects."""
from __future__ import annotations

import ipaddress

import pytest

from transforms.address_policy import block_reason, embedded_ipv4, host_allowed, is_blocked_ip, parse_allowed_hosts

BLOCKED = [
    "10.0.0.1", "10.255.255.255",                    # 10/8
    "172.16.0.1", "172.31.255.254",                  # 172.16/12, both ends
    "192.168.1.1",                                   # 192.168/16
    "127.0.0.1", "127.8.9.10", "::1",                # loopback
    "169.254.169.254", "169.254.0.1", "fe80::1", "fe80::1%eth0",  # link-local, cloud metadata
    "fc00::1", "fd12:3456::1",                       # unique local
    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "0.0.0.0", "::",                                 # unspecified
    "224.0.0.1", "239.255.255.250", "ff02::1",       # multicast
    "100.64.0.1", "100.127.255.254",                 # CGNAT shared space
    "2002:0a00:0001::", "2002:7f00:0001::1",         # 6to4 of 10.0.0.1 / 127.0.0.1
    "64:ff9b::10.0.0.1", "64:ff9b::127.0.0.1",      # NAT64 of private / loopback
    "64:ff9b:1::8.8.8.8",                            # local-use NAT64
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",          # Teredo, client 10.0.0.1
    "240.0.0.1", "255.255.255.255",                  # reserved, broadcast
    "192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1",  # documentation
    "198.18.0.1", "192.0.0.170",                     # benchmarking, protocol assignments
    "::127.0.0.1", "fec0::1",                        # IPv4-compatible, site-local
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "100.128.0.1", "2606:4700::1111",
          "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:0808:0808::"]


@pytest.mark.parametrize("ip", BLOCKED)
def test_non_public_addresses_are_blocked(ip):
    assert is_blocked_ip(ip), f"{ip} must be refused"
    assert block_reason(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_are_allowed(ip):
    assert not is_blocked_ip(ip), f"{ip} is public: {block_reason(ip)}"


def test_accepts_ipaddress_objects_and_brackets():
    assert is_blocked_ip(ipaddress.ip_address("10.1.2.3"))
    assert is_blocked_ip("[::1]")
    assert not is_blocked_ip(ipaddress.ip_address("8.8.4.4"))


def test_embedded_address_is_named_in_the_reason():
    assert block_reason("::ffff:127.0.0.1") == "loopback (127.0.0.1) embedded in IPv6"
    assert "10.0.0.1" in block_reason("2002:0a00:0001::")
    assert ipaddress.ip_address("10.0.0.1") in embedded_ipv4(ipaddress.ip_address("64:ff9b::10.0.0.1"))


def test_not_an_address_raises():
    with pytest.raises(ValueError):
        is_blocked_ip("images.example.com")


def test_parse_allowed_hosts_normalizes():
    hosts = parse_allowed_hosts(" Images.Example.com., 127.0.0.1:8080,[::1]:9000, ::1 ,,")
    assert hosts == frozenset({"images.example.com", "127.0.0.1:8080", "[::1]:9000", "[::1]"})
    assert parse_allowed_hosts("") == frozenset()
    assert parse_allowed_hosts(["a.test", "b.test:1"]) == frozenset({"a.test", "b.test:1"})


@pytest.mark.parametrize("bad", ["host:http", "host:0", "host:70000", "[::1", "[::1]x"])
def test_parse_allowed_hosts_rejects_bad_entries(bad):
    with pytest.raises(ValueError, match="allowed image host"):
        parse_allowed_hosts(bad)


def test_host_allowed_matches_host_and_port():
    allowed = parse_allowed_hosts("127.0.0.1:8080,cdn.internal,[::1]:9000")
    assert host_allowed("127.0.0.1", 8080, allowed)
    assert not host_allowed("127.0.0.1", 8081, allowed), "a HOST:PORT entry allows only that port"
    assert host_allowed("CDN.internal.", 443, allowed), "a bare host allows every port, case-insensitive"
    assert host_allowed("::1", 9000, allowed) and host_allowed("[::1]", 9000, allowed)
    assert not host_allowed("::1", 80, allowed)
    assert not host_allowed("localhost", 8080, allowed), "names are not resolved to match an allowed IP"
    assert not host_allowed("127.0.0.1", 8080, frozenset())
