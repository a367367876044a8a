"""The client table: longest prefix wins, no catch-all, IPv4-mapped IPv6 seen as IPv4.

RFC 2865 section 3 picks the secret by source address; an address in no listed network is
an unknown client (None), which the server silently discards (section 2).
"""

from __future__ import annotations

import pytest

from radius_proxy.protocol.clients import ClientTable

TABLE = ClientTable([
    ("10.0.0.0/8", "corp"),
    ("10.1.0.0/16", "ssh-hosts"),
    ("10.1.2.3/32", "bastion"),
    ("192.0.2.0/24", "vpn"),
    ("2001:db8::/32", "v6-wide"),
    ("2001:db8:1::/48", "v6-site"),
    ("::1/128", "v6-loopback"),
    ("127.0.0.0/8", "loopback"),
])


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.9.9.9", "corp"),
        ("10.1.9.9", "ssh-hosts"),
        ("10.1.2.4", "ssh-hosts"),
        ("10.1.2.3", "bastion"),
        ("192.0.2.200", "vpn"),
        ("192.0.3.1", None),
        ("11.0.0.1", None),
        ("0.0.0.0", None),
        ("255.255.255.255", None),
        ("127.0.0.1", "loopback"),
        ("2001:db8:2::1", "v6-wide"),
        ("2001:db8:1::1", "v6-site"),
        ("2001:db9::1", None),
        ("::1", "v6-loopback"),
        ("::2", None),
        # IPv4-mapped IPv6 (dual-stack sockets) is matched against the IPv4 networks
        ("::ffff:10.1.9.9", "ssh-hosts"),
        ("::ffff:192.0.2.1", "vpn"),
        ("::ffff:11.0.0.1", None),
        ("::ffff:127.0.0.1", "loopback"),
        # a scope id does not hide an address
        ("::1%lo", "v6-loopback"),
        ("2001:db8:1::5%eth0", "v6-site"),
        # not addresses at all: unknown, never an exception
        ("", None),
        ("localhost", None),
        ("10.1.2", None),
        ("10.1.2.3/32", None),
        ("%eth0", None),
        ("::ffff:999.1.1.1", None),
    ],
)
def test_lookup(address: str, expected: str | None) -> None:
    assert TABLE.lookup(address) == expected


def test_host_route_wins_over_every_wider_network() -> None:
    assert TABLE.lookup("10.1.2.3") == "bastion"
    assert TABLE.lookup("::ffff:10.1.2.3") == TABLE.lookup("10.1.2.3")


def test_order_of_listing_does_not_matter() -> None:
    forward = ClientTable([("10.0.0.0/8", "wide"), ("10.1.0.0/16", "narrow")])
    backward = ClientTable([("10.1.0.0/16", "narrow"), ("10.0.0.0/8", "wide")])
    for address in ("10.1.0.1", "10.2.0.1"):
        assert forward.lookup(address) == backward.lookup(address)
    assert forward.lookup("10.1.0.1") == "narrow"


def test_host_bits_in_a_network_are_ignored() -> None:
    table = ClientTable([("10.1.2.3/16", "ssh")])
    assert table.lookup("10.1.200.1") == "ssh"


def test_ipv4_network_never_matches_plain_ipv6() -> None:
    table = ClientTable([("0.0.0.0/0", "every-v4")])
    assert table.lookup("192.0.2.1") == "every-v4"
    assert table.lookup("::1") is None
    assert table.lookup("2001:db8::1") is None


def test_empty_table_knows_nobody() -> None:
    table: ClientTable[str] = ClientTable([])
    assert table.lookup("127.0.0.1") is None


def test_cached_answers_stay_right_and_the_cache_is_bounded() -> None:
    table = ClientTable([("10.0.0.0/8", "corp")], cache_size=3)
    for _ in range(2):  # second round is served from the cache (or after a clear)
        assert table.lookup("10.0.0.1") == "corp"
        assert table.lookup("10.0.0.2") == "corp"
        assert table.lookup("11.0.0.1") is None
        assert table.lookup("10.0.0.3") == "corp"
        assert table.lookup("bogus") is None
    assert len(table._cache) <= 3  # private, but "bounded" is the behaviour under test


def test_values_are_returned_as_given() -> None:
    entry = object()
    assert ClientTable([("192.0.2.0/24", entry)]).lookup("192.0.2.9") is entry


def test_ipv4_mapped_network_matches_ipv4_sources_in_either_form() -> None:
    """`::ffff:10.0.0.0/104` is 10.0.0.0/8: sources are normalised to IPv4, so is it."""
    table = ClientTable([("::ffff:10.0.0.0/104", "mapped"), ("::ffff:10.1.2.3/128", "host"),
                         ("::/96", "compat")])
    assert table.lookup("10.9.9.9") == "mapped"
    assert table.lookup("::ffff:10.9.9.9") == "mapped"
    assert table.lookup("10.1.2.3") == "host"
    assert table.lookup("11.0.0.1") is None
    assert table.lookup("::5") == "compat"  # not a mapped network: stays IPv6
