"""transforms/address_policy.py: the cases `make mutation` showed no test pinned (docs/testing.md).

Expected reasons and entries are written out here; none comes from the code under test.
"""
from __future__ import annotations

import pytest

from transforms.address_policy import block_reason, host_allowed, parse_allowed_hosts


@pytest.mark.parametrize(("ip", "reason"), [
    ("169.254.1.1", "link-local"),      # is_link_local -> "link_local" -> "link-local"
    ("100.64.0.1", "special-purpose"),  # shared address space, RFC 6598
    ("fec0::1", "special-purpose"),     # deprecated site-local
])
def test_block_reason_wording(ip, reason):
    assert block_reason(ip) == reason


def test_only_brackets_and_blanks_are_stripped_from_an_address():
    assert block_reason(" [::1] ") == "loopback"
    with pytest.raises(ValueError):
        block_reason("X8.8.8.8")


def test_a_host_with_one_bracket_is_kept_as_written():
    assert host_allowed("[example.com", None, frozenset({"[example.com"}))
    assert not host_allowed("[example.com", None, frozenset({"example.co"}))


def test_empty_entries_are_skipped_not_the_end():
    assert parse_allowed_hosts("a.example,,b.example") == frozenset({"a.example", "b.example"})


def test_text_after_the_first_closing_bracket_must_be_a_port():
    with pytest.raises(ValueError, match=r"^allowed image host '\[::1\]\]': expected \[ADDR\]:PORT$"):
        parse_allowed_hosts("[::1]]")
