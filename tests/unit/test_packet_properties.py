"""Property tests for the packet decoder: any bytes in, a value or a clean rejection out.

Three properties (STYLE.md, "Tests in three layers"):
1. whatever a peer sends, `check_structure` + `decode_request` + `decoded_attributes` (and
   the Message-Authenticator policy behind them) give a value or `MalformedPacket`, never
   another exception: one on purely random octets, one on packets whose framing is right so
   the decoder's value handling is reached;
2. a valid request built with pyrad decodes to exactly the attributes it was built from;
3. User-Password hiding round-trips for any password of 0..128 octets.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as rp

from radius_proxy.errors import MalformedPacket
from radius_proxy.protocol import packet as pk
from radius_proxy.protocol.dictionary import load_dictionary

DICT = load_dictionary()
SECRET = b"property-secret-0123"
FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def run_decoder(data: bytes) -> object:
    """The server's order of work on a datagram, up to the pipeline's input."""
    try:
        checked = pk.check_structure(data)
        pkt = pk.decode_request(checked, SECRET, DICT)
        pk.message_authenticator_drop(pkt, require=False, limit_proxy_state=True)
        return pk.decoded_attributes(pkt)
    except MalformedPacket as exc:
        return exc


# -- 1. any bytes -------------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=300))
def test_random_octets_give_a_value_or_malformed(data: bytes) -> None:
    result = run_decoder(data)
    assert isinstance(result, dict | MalformedPacket)


# Attribute types the dictionary decodes specially (ipaddr, integer, date, ipv6*, ifid,
# tagged, VSA, Message-Authenticator, User-Password) are drawn more often than the rest.
INTERESTING = [1, 2, 4, 5, 6, 24, 25, 26, 33, 55, 61, 64, 65, 76, 79, 80, 81, 95, 96, 97]
attribute = st.tuples(
    st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)),
    st.one_of(st.binary(max_size=20), st.sampled_from([bytes(4), bytes(16), bytes(6)])),
)
vsa = st.builds(
    lambda vendor, t, v: (26, struct.pack("!L", vendor) + bytes([t, len(v) + 2]) + v),
    st.sampled_from([0, 9, 311, 14122]), st.integers(0, 255), st.binary(max_size=12),
)


@st.composite
def framed_packets(draw: st.DrawFn) -> bytes:
    """Packets with a consistent Length and attribute framing, sometimes bent a little."""
    attrs = draw(st.lists(st.one_of(attribute, vsa), max_size=8))
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    code = draw(st.sampled_from([1, 2, 3, 4, 11, 12, 0, 255]))
    header = struct.pack("!BBH", code, draw(st.integers(0, 255)), 20 + len(body))
    data = header + draw(st.binary(min_size=16, max_size=16)) + body
    bend = draw(st.sampled_from(["none", "pad", "cut", "flip"]))
    if bend == "pad":
        data += draw(st.binary(max_size=10))
    elif bend == "cut" and len(data) > 20:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif bend == "flip" and len(data) > 20:
        i = draw(st.integers(20, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data


@FAST
@given(framed_packets())
def test_framed_packets_give_a_value_or_malformed(data: bytes) -> None:
    result = run_decoder(data)
    assert isinstance(result, dict | MalformedPacket)
    if isinstance(result, dict):
        assert not {"User-Password", "CHAP-Password", "Message-Authenticator"} & set(result)
        assert all(isinstance(k, str) and isinstance(v, tuple) for k, v in result.items())


# -- 2. valid packets round-trip ------------------------------------------------------------
def text(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(
        lambda s: len(s.encode()) <= max_bytes)


requests = st.fixed_dictionaries(
    {"User-Name": text(253)},
    optional={
        "NAS-Identifier": text(253),
        "Calling-Station-Id": text(253),
        "NAS-IP-Address": st.ip_addresses(v=4).map(str),
        "NAS-IPv6-Address": st.ip_addresses(v=6).map(str),
        "NAS-Port": st.integers(0, 2**32 - 1),
        "State": st.binary(min_size=1, max_size=253),
        "Class": st.binary(min_size=1, max_size=253),
        "Proxy-State": st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4),
        "Reply-Message": st.lists(text(253), min_size=1, max_size=3),
    },
)


@FAST
@given(requests, st.binary(max_size=128), st.binary(min_size=16, max_size=16),
       st.integers(0, 255), st.booleans())
def test_valid_requests_round_trip(attrs: dict[str, Any], password: bytes, auth: bytes,
                                   ident: int, sign: bool) -> None:
    pkt = rp.AuthPacket(code=pk.ACCESS_REQUEST, id=ident, secret=SECRET, authenticator=auth,
                        dict=DICT)
    for name, value in attrs.items():
        pkt.AddAttribute(name, value)
    pkt.AddAttribute("User-Password", pk.hide_password(password, SECRET, auth))
    if sign:
        pkt.add_message_authenticator()
    data = pkt.RequestPacket()

    decoded = pk.decode_request(pk.check_structure(data), SECRET, DICT)
    assert (decoded.code, decoded.id, decoded.authenticator) == (pk.ACCESS_REQUEST, ident, auth)
    assert pk.message_authenticator_drop(decoded, require=sign, limit_proxy_state=sign) is None
    got = pk.decoded_attributes(decoded)
    want = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in attrs.items()}
    assert got == want
    hidden = decoded[pk.USER_PASSWORD][0]
    assert pk.unhide_password(hidden, SECRET, auth) == password.rstrip(b"\x00")


# -- 3. hide / unhide -------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=128), st.binary(min_size=1, max_size=64),
       st.binary(min_size=16, max_size=16))
def test_hide_unhide_round_trip(password: bytes, secret: bytes, auth: bytes) -> None:
    hidden = pk.hide_password(password, secret, auth)
    assert len(hidden) % 16 == 0
    assert 16 <= len(hidden) <= 128
    # RFC 2865 section 5.2 pads with NULs and the receiver strips them: a password's own
    # trailing NULs cannot survive, everything else is byte-exact
    assert pk.unhide_password(hidden, secret, auth) == password.rstrip(b"\x00")


@FAST
@given(st.binary(min_size=1, max_size=128).filter(lambda p: not p.endswith(b"\x00")),
       st.binary(min_size=16, max_size=16))
def test_hidden_password_fits_a_user_password_attribute(password: bytes, auth: bytes) -> None:
    hidden = pk.hide_password(password, SECRET, auth)
    data = struct.pack("!BBH", 1, 1, 20 + 2 + len(hidden)) + auth + bytes(
        [pk.USER_PASSWORD, 2 + len(hidden)]) + hidden
    assert pk.check_structure(data) == data
    assert pk.unhide_password(hidden, SECRET, auth) == password
