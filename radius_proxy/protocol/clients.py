"""The client table: which NAS a source address belongs to, by longest prefix match.

RFC 2865 section 3 picks the shared secret by the packet's source address, and a request
from an address without a secret is silently discarded (section 2). There is no catch-all:
a network must be listed to be trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientTable(Generic[T]):
    """Maps a source IP to the entry of the most specific network containing it."""

    def __init__(self, entries: Sequence[tuple[str, T]], cache_size: int = 4096) -> None:
        nets = [(_as_ipv4(ipaddress.ip_network(n, strict=False)), v) for n, v in entries]
        # most specific first, so the first match is the longest prefix
        self._nets: list[tuple[IPNetwork, T]] = sorted(nets, key=lambda nv: -nv[0].prefixlen)
        self._cache: dict[str, T | None] = {}
        self._cache_size = cache_size

    def lookup(self, address: str) -> T | None:
        """The entry for address, or None for an unknown client."""
        if address in self._cache:
            return self._cache[address]
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found = next((v for net, v in self._nets if ip.version == net.version and ip in net),
                     None)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[address] = found
        return found


def _as_ipv4(net: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it means.

    Sources arrive normalised to IPv4 (a dual-stack socket reports an IPv4 NAS as
    ::ffff:a.b.c.d), so a network written in the mapped form must be compared as IPv4 too,
    or it would never match anything.
    """
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is None or net.prefixlen < 96:
        return net
    return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
