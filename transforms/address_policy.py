"""Which network addresses an image fetch may connect to (the SSRF guard's rules).

Image URLs come from sellers, so a URL is an attacker's request to make our
worker connect somewhere. These pure functions decide whether an address is
reachable from the public internet; anything else (loopback, private ranges,
the cloud metadata endpoint, ...) is refused unless an operator listed the host.
They never resolve or connect, so they can be tested on any address.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that Python's ``is_global`` does not flag on every supported version
# but that must never be reached from a worker.
_EXTRA_BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "100.64.0.0/10",    # shared address space (carrier-grade NAT), RFC 6598
    "192.0.0.0/24",     # IETF protocol assignments, RFC 6890
    "64:ff9b:1::/48",   # local-use NAT64, RFC 8215
    "2001::/23",        # IETF protocol assignments (Teredo, ORCHIDv2, ...), RFC 2928
    "2001:db8::/32",    # documentation
    "fec0::/10",        # deprecated site-local
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix, RFC 6052: last 32 bits are IPv4


def _as_ip(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip
    return ipaddress.ip_address(ip.strip().strip("[]"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries and may end up routing to (mapped, 6to4, Teredo, NAT64)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def block_reason(ip: str | IPAddress) -> str | None:
    """Why ``ip`` must not be connected to (``"loopback"``, ``"private"``, ...), or None when it is public.

    Raises ``ValueError`` when ``ip`` is not an IP address.
    """
    ip = _as_ip(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in embedded_ipv4(ip):
            inner_reason = block_reason(inner)
            if inner_reason:
                return f"{inner_reason} ({inner}) embedded in IPv6"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            # Only the IPv4 address is ever reached; DNS64 on IPv6-only workers
            # hands out 64:ff9b::a.b.c.d for every public IPv4-only host.
            return None
    for flag in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(ip, flag):
            return flag[3:].replace("_", "-")
    if any(ip in net for net in _EXTRA_BLOCKED if net.version == ip.version):
        return "special-purpose"
    if not ip.is_global:
        return "not-global"
    return None


def is_blocked_ip(ip: str | IPAddress) -> bool:
    """True unless ``ip`` is a public unicast address (see :func:`block_reason`)."""
    return block_reason(ip) is not None


def _normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _format(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def parse_allowed_hosts(spec: str | Iterable[str]) -> frozenset[str]:
    """Parse ``"h1,h2:8080,[::1]:9000"`` into normalized ``HOST`` / ``HOST:PORT`` entries.

    A bare host allows every port; ``HOST:PORT`` allows only that port. Raises
    ``ValueError`` naming the entry when a port is not a number.
    """
    parts = spec.split(",") if isinstance(spec, str) else spec
    entries: set[str] = set()
    for raw in parts:
        entry = raw.strip()
        if not entry:
            continue
        host, port = entry, None
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                raise ValueError(f"allowed image host {entry!r}: missing ']' (write IPv6 as [ADDR] or [ADDR]:PORT)")
            host, rest = entry[1:close], entry[close + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"allowed image host {entry!r}: expected [ADDR]:PORT")
                port = rest[1:]
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        elif entry.count(":") > 1:
            host = entry  # a bare IPv6 address, all ports
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"allowed image host {entry!r}: port must be a number in 1..65535 (HOST[:PORT])")
        entries.add(_format(_normalize_host(host), None if port is None else int(port)))
    return frozenset(entries)


def host_allowed(host: str, port: int | None, allowed_hosts: Iterable[str]) -> bool:
    """True when ``host`` (on ``port``) is on the operator's allow-list from :func:`parse_allowed_hosts`."""
    if not allowed_hosts:
        return False
    name = _normalize_host(host)
    return _format(name, None) in allowed_hosts or (port is not None and _format(name, port) in allowed_hosts)
