"""The packet checks, decoding, Message-Authenticator policy, password hiding and replies.

Every rule of radius-protocol.md sections 1.1-1.7 that `protocol/packet.py` owns is a row
here: bytes in, a value or `MalformedPacket` out. Packets are built with pyrad (the NAS's
view) or octet by octet (what an attacker can send); the authenticators are recomputed
independently from the RFC formulas rather than trusted from pyrad.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from pyrad import packet as rp

from radius_proxy.errors import MalformedPacket
from radius_proxy.protocol import packet as pk
from radius_proxy.protocol.dictionary import load_dictionary

SECRET = b"nas-secret-0123456789"
AUTH = bytes(range(16))
DICT = load_dictionary()


# -- helpers ----------------------------------------------------------------------------------
def raw_packet(code: int = pk.ACCESS_REQUEST, ident: int = 7,
               attrs: Sequence[tuple[int, bytes]] = (), *, length: int | None = None,
               auth: bytes = AUTH, tail: bytes = b"") -> bytes:
    """A packet octet by octet; `length` overrides the Length field, `tail` is appended."""
    body = b"".join(bytes([t, len(v) + 2]) + v for t, v in attrs)
    size = 20 + len(body) if length is None else length
    return struct.pack("!BBH", code, ident, size) + auth + body + tail


def request(*, code: int = pk.ACCESS_REQUEST, secret: bytes = SECRET, sign: bool = True,
            password: bytes | None = b"correct horse", **attrs: Any) -> bytes:
    """An Access-Request (or Status-Server) as a NAS encodes it with pyrad."""
    pkt = rp.AuthPacket(code=code, id=42, secret=secret, authenticator=AUTH, dict=DICT)
    for name, value in attrs.items():
        pkt.AddAttribute(name.replace("_", "-"), value)
    if password is not None and code == pk.ACCESS_REQUEST:
        pkt.AddAttribute("User-Password", pk.hide_password(password, secret, AUTH))
    if sign:
        pkt.add_message_authenticator()
    raw: bytes = pkt.RequestPacket()
    return raw


def decode(data: bytes, secret: bytes = SECRET) -> rp.AuthPacket:
    return pk.decode_request(pk.check_structure(data), secret, DICT)


def attributes_of(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 20
    while pos < len(data):
        kind, alen = data[pos], data[pos + 1]
        out.append((kind, data[pos + 2:pos + alen]))
        pos += alen
    return out


def expected_message_authenticator(data: bytes, secret: bytes, vector: bytes) -> bytes:
    """RFC 2869 section 5.14 / RFC 3579 section 3.2: HMAC-MD5 with the MA value zeroed and
    the Request Authenticator in the authenticator position."""
    pos, body = 20, bytearray(data[20:])
    while pos < len(data):
        if data[pos] == pk.MESSAGE_AUTHENTICATOR:
            body[pos - 20 + 2:pos - 20 + 18] = bytes(16)
        pos += data[pos + 1]
    return hmac.new(secret, data[:4] + vector + bytes(body), "md5").digest()


# -- check_structure: RFC 2865 sections 3 and 5 ----------------------------------------------
UP16 = (pk.USER_PASSWORD, bytes(16))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "shorter than a RADIUS header"),
        (raw_packet()[:19], "shorter than a RADIUS header"),
        (raw_packet(length=19), "outside 20..4096"),
        (raw_packet(length=0), "outside 20..4096"),
        (raw_packet(length=4097, tail=bytes(4077)), "outside 20..4096"),
        (raw_packet(length=40), "exceeds the 20 octets"),
        (raw_packet(attrs=[(1, b"alice")], length=30), "exceeds"),
        (raw_packet(length=65535), "outside 20..4096"),
    ],
    ids=["empty", "19-octets", "length-19", "length-0", "length-4097", "length-past-data",
         "length-past-data-with-attrs", "length-65535"],
)
def test_header_lengths(data: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        pk.check_structure(data)


def test_octets_past_length_are_padding_and_stripped() -> None:
    packet = raw_packet(attrs=[(1, b"alice"), UP16])
    assert pk.check_structure(packet + b"\x00garbage" * 10) == packet


def test_minimal_and_maximal_lengths_pass() -> None:
    header_only = raw_packet()
    assert pk.check_structure(header_only) == header_only
    # 4096 octets: 20 header + 15 attributes of 255 octets + 1 of 251
    attrs = [(18, bytes(253))] * 15 + [(18, bytes(249))]
    biggest = raw_packet(attrs=attrs)
    assert len(biggest) == 4096
    assert pk.check_structure(biggest) == biggest
    assert pk.decoded_attributes(decode(biggest))["Reply-Message"][0] == "\x00" * 253


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x01", "attribute header runs past the end"),
        (bytes([1, 0]), "invalid length 0"),
        (bytes([1, 1]), "invalid length 1"),
        (bytes([1, 7]) + b"abc", "invalid length 7"),
        (bytes([1, 5]) + b"abc" + bytes([4, 6]) + b"\x0a\x00", "invalid length 6"),
    ],
    ids=["lone-type-octet", "length-0", "length-1", "runs-past-end", "second-runs-past-end"],
)
def test_attribute_lengths(body: bytes, why: str) -> None:
    data = struct.pack("!BBH", 1, 1, 20 + len(body)) + AUTH + body
    with pytest.raises(MalformedPacket, match=why):
        pk.check_structure(data)


@pytest.mark.parametrize(
    "kind", [1, pk.USER_PASSWORD, pk.CHAP_PASSWORD, pk.STATE, pk.MESSAGE_AUTHENTICATOR]
)
def test_attributes_allowed_once_are_refused_twice(kind: int) -> None:
    value = bytes(16) if kind in (pk.USER_PASSWORD, pk.MESSAGE_AUTHENTICATOR) else b"x"
    with pytest.raises(MalformedPacket, match="more than once"):
        pk.check_structure(raw_packet(attrs=[(kind, value), (kind, value)]))


@pytest.mark.parametrize("kind", [pk.PROXY_STATE, 18, 25, 26, pk.EAP_MESSAGE])
def test_repeatable_attributes_may_repeat(kind: int) -> None:
    data = raw_packet(attrs=[(kind, b"one"), (4, b"\x0a\x00\x00\x01"), (kind, b"two")])
    assert pk.check_structure(data) == data


@pytest.mark.parametrize("size", [0, 1, 15, 17, 32])
def test_message_authenticator_must_be_16_octets(size: int) -> None:
    with pytest.raises(MalformedPacket, match="16 octets"):
        pk.check_structure(raw_packet(attrs=[(pk.MESSAGE_AUTHENTICATOR, bytes(size))]))


@pytest.mark.parametrize(
    ("size", "ok"),
    [(0, False), (1, False), (15, False), (16, True), (17, False), (31, False), (32, True),
     (48, True), (112, True), (128, True), (129, False), (144, False), (160, False)],
)
def test_user_password_is_16_to_128_octets_in_steps_of_16(size: int, ok: bool) -> None:
    data = raw_packet(attrs=[(pk.USER_PASSWORD, bytes(size))])
    if ok:
        assert pk.check_structure(data) == data
    else:
        with pytest.raises(MalformedPacket, match="User-Password"):
            pk.check_structure(data)


# -- decode_request ---------------------------------------------------------------------------
def test_decode_request_gives_header_and_raw_attributes() -> None:
    pkt = decode(request(User_Name="alice", NAS_Identifier="ssh-1"))
    assert pkt.code == pk.ACCESS_REQUEST
    assert pkt.id == 42
    assert pkt.authenticator == AUTH
    assert pkt[1] == [b"alice"]
    assert pkt.get(32) == [b"ssh-1"]
    assert pkt.get(24) is None
    assert 1 in pkt
    assert 24 not in pkt
    assert pkt.message_authenticator


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", raw_packet(length=19), raw_packet(attrs=[(1, b"")])[:-2] + b"\x01\x00",
     raw_packet(length=50)],
    ids=["empty", "one-octet", "length-19", "attribute-length-0", "length-past-data"],
)
def test_decode_request_turns_every_failure_into_malformed(data: bytes) -> None:
    # without check_structure in front: decode_request is a boundary of its own
    with pytest.raises(MalformedPacket):
        pk.decode_request(data, SECRET, DICT)


# -- message_authenticator_drop: RFC 2869 5.14, RFC 5997, BlastRADIUS ------------------------
PS = {"Proxy_State": b"proxy-1"}
MISSING = pk.DropReason.MISSING_MESSAGE_AUTHENTICATOR
BAD = pk.DropReason.BAD_MESSAGE_AUTHENTICATOR
PS_DROP = pk.DropReason.PROXY_STATE_WITHOUT_MA


@pytest.mark.parametrize(
    ("code", "sign", "attrs", "require", "limit", "expected"),
    [
        # signed and valid: processed whatever the client's settings
        (pk.ACCESS_REQUEST, True, {}, True, True, None),
        (pk.ACCESS_REQUEST, True, PS, True, True, None),
        (pk.ACCESS_REQUEST, True, PS, False, True, None),
        (pk.STATUS_SERVER, True, {}, False, False, None),
        # unsigned
        (pk.ACCESS_REQUEST, False, {}, True, True, MISSING),
        (pk.ACCESS_REQUEST, False, {}, True, False, MISSING),
        (pk.ACCESS_REQUEST, False, {}, False, True, None),
        (pk.ACCESS_REQUEST, False, {}, False, False, None),
        (pk.ACCESS_REQUEST, False, PS, False, True, PS_DROP),
        (pk.ACCESS_REQUEST, False, PS, False, False, None),
        (pk.ACCESS_REQUEST, False, PS, True, True, MISSING),
        # RFC 5997: Status-Server must be signed, even by a legacy client
        (pk.STATUS_SERVER, False, {}, False, False, MISSING),
    ],
)
def test_message_authenticator_policy(code: int, sign: bool, attrs: dict[str, Any],
                                      require: bool, limit: bool,
                                      expected: pk.DropReason | None) -> None:
    pkt = decode(request(code=code, sign=sign, User_Name="alice", **attrs))
    assert pk.message_authenticator_drop(pkt, require=require, limit_proxy_state=limit) \
        is expected


@pytest.mark.parametrize("require", [True, False])
def test_message_authenticator_signed_with_another_secret_is_bad(require: bool) -> None:
    pkt = decode(request(secret=b"other-secret-abcdef", User_Name="alice"))
    assert pk.message_authenticator_drop(pkt, require=require, limit_proxy_state=False) is BAD


def test_message_authenticator_over_altered_packet_is_bad() -> None:
    data = bytearray(request(User_Name="alice"))
    where = bytes(data).index(b"alice")
    data[where:where + 5] = b"mally"
    pkt = decode(bytes(data))
    assert pk.message_authenticator_drop(pkt, require=False, limit_proxy_state=False) is BAD


def test_message_authenticator_of_zeroes_is_bad() -> None:
    data = raw_packet(attrs=[(1, b"alice"), (pk.MESSAGE_AUTHENTICATOR, bytes(16))])
    pkt = decode(data)
    assert pk.message_authenticator_drop(pkt, require=True, limit_proxy_state=True) is BAD


# -- User-Password hiding: RFC 2865 section 5.2 ---------------------------------------------
def rfc_hide(password: bytes, secret: bytes, vector: bytes) -> bytes:
    """The RFC's formula written out once more, independently of the code under test."""
    padded = password + bytes(-len(password) % 16 or (16 if not password else 0))
    out, prev = b"", vector
    for i in range(0, len(padded), 16):
        b = hashlib.md5(secret + prev).digest()  # noqa: S324 - the RFC's algorithm
        c = bytes(x ^ y for x, y in zip(padded[i:i + 16], b, strict=True))
        out, prev = out + c, c
    return out


@pytest.mark.parametrize(
    "password",
    [b"", b"a", b"correct horse", bytes(range(1, 17)), b"x" * 17, b"\xff\xfe\x80 not utf-8",
     "pässwörd€".encode(), b"y" * 127, b"z" * 128],
    ids=["empty", "1", "13", "16", "17", "invalid-utf8", "utf8", "127", "128"],
)
def test_hide_matches_the_rfc_and_unhide_reverses_it(password: bytes) -> None:
    hidden = pk.hide_password(password, SECRET, AUTH)
    assert hidden == rfc_hide(password, SECRET, AUTH)
    assert len(hidden) == max(16, -(-len(password) // 16) * 16)
    assert pk.unhide_password(hidden, SECRET, AUTH) == password


def test_hide_agrees_with_pyrad_for_text() -> None:
    pkt = rp.AuthPacket(secret=SECRET, authenticator=AUTH, dict=DICT)
    assert pk.hide_password(b"secret-password!x", SECRET, AUTH) == pkt.PwCrypt("secret-password!x")


def test_hide_refuses_more_than_128_octets() -> None:
    with pytest.raises(ValueError, match="128"):
        pk.hide_password(b"x" * 129, SECRET, AUTH)


def test_unhide_with_wrong_secret_gives_garbage_not_an_error() -> None:
    hidden = pk.hide_password(b"correct horse", SECRET, AUTH)
    assert pk.unhide_password(hidden, b"wrong-secret", AUTH) != b"correct horse"


def test_unhide_depends_on_the_request_authenticator() -> None:
    hidden = pk.hide_password(b"correct horse", SECRET, AUTH)
    assert pk.unhide_password(hidden, SECRET, bytes(16)) != b"correct horse"


def test_password_from_a_decoded_packet_is_byte_exact() -> None:
    password = b"\x80\x81 caf\xc3\xa9 \xff"
    pkt = decode(request(password=password, User_Name="alice"))
    hidden = pkt[pk.USER_PASSWORD][0]
    assert pk.unhide_password(hidden, SECRET, pkt.authenticator) == password


# -- decoded_attributes -----------------------------------------------------------------------
def test_decoded_attributes_by_name_in_order_without_secrets() -> None:
    data = request(User_Name="alice", NAS_Identifier="ssh-1", NAS_IP_Address="192.0.2.10",
                   Calling_Station_Id="198.51.100.7", NAS_Port=22, State=b"\x00st\xff",
                   Proxy_State=[b"p1", b"p2"], Reply_Message=["one", "two"])
    attrs = pk.decoded_attributes(decode(data))
    assert attrs == {
        "User-Name": ("alice",),
        "NAS-Identifier": ("ssh-1",),
        "NAS-IP-Address": ("192.0.2.10",),
        "Calling-Station-Id": ("198.51.100.7",),
        "NAS-Port": (22,),
        "State": (b"\x00st\xff",),
        "Proxy-State": (b"p1", b"p2"),
        "Reply-Message": ("one", "two"),
    }


def test_decoded_attributes_leave_out_chap_password() -> None:
    data = raw_packet(attrs=[(1, b"alice"), (pk.CHAP_PASSWORD, bytes(17))])
    assert pk.decoded_attributes(decode(data)) == {"User-Name": ("alice",)}


def test_decoded_attributes_skip_attributes_outside_the_dictionary() -> None:
    vsa = b"\x00\x00\x99\x99\x01\x05abc"  # vendor 39321, not in the dictionary
    data = raw_packet(attrs=[(1, b"alice"), (250, b"unknown"), (26, vsa)])
    assert pk.decoded_attributes(decode(data)) == {"User-Name": ("alice",)}


def test_decoded_attributes_never_expose_a_user_password_value() -> None:
    data = request(password=b"correct horse", User_Name="alice")
    pkt = decode(data)
    flat = repr(pk.decoded_attributes(pkt))
    assert "correct horse" not in flat
    assert repr(pkt[pk.USER_PASSWORD][0]) not in flat


@pytest.mark.parametrize(
    ("kind", "value"),
    [(4, b"\x0a\x00\x00"), (4, b"\x0a\x00\x00\x01\x02"), (5, b"\x00\x01"), (55, b"\x01"),
     (95, bytes(17)), (96, bytes(7)), (97, b"\x00")],
    ids=["ipaddr-3", "ipaddr-5", "integer-2", "date-1", "ipv6addr-17", "ifid-7",
         "ipv6prefix-1"],
)
def test_decoded_attributes_invalid_value_is_malformed(kind: int, value: bytes) -> None:
    pkt = decode(raw_packet(attrs=[(1, b"alice"), (kind, value)]))
    with pytest.raises(MalformedPacket, match="invalid value"):
        pk.decoded_attributes(pkt)


def test_string_that_is_not_utf8_stays_bytes() -> None:
    # pyrad keeps undecodable text as bytes rather than dropping octets
    pkt = decode(raw_packet(attrs=[(32, b"nas-\xff")]))
    assert pk.decoded_attributes(pkt) == {"NAS-Identifier": (b"nas-\xff",)}


# -- build_reply: Message-Authenticator first, Proxy-State in order, authenticators -----------
def reply_for(data: bytes, code: int, attributes: Sequence[tuple[str, Any]] = ()) -> bytes:
    return pk.build_reply(decode(data), code, attributes)


@pytest.mark.parametrize("code", [pk.ACCESS_ACCEPT, pk.ACCESS_REJECT, pk.ACCESS_CHALLENGE])
def test_reply_code_id_and_message_authenticator_first(code: int) -> None:
    reply = reply_for(request(User_Name="alice"), code)
    assert reply[0] == code
    assert reply[1] == 42
    assert struct.unpack("!H", reply[2:4])[0] == len(reply)
    first_kind, first_value = attributes_of(reply)[0]
    assert first_kind == pk.MESSAGE_AUTHENTICATOR
    assert first_value == expected_message_authenticator(reply, SECRET, AUTH)


def test_reply_message_authenticator_verifies_with_pyrad() -> None:
    reply = reply_for(request(User_Name="alice"), pk.ACCESS_ACCEPT)
    decoded = rp.AuthPacket(packet=reply, secret=SECRET, dict=DICT)
    assert decoded.verify_message_authenticator(original_authenticator=AUTH,
                                                original_code=pk.ACCESS_REQUEST)


def test_reply_response_authenticator_is_md5_of_packet_and_secret() -> None:
    reply = reply_for(request(User_Name="alice"), pk.ACCESS_CHALLENGE,
                      [("Reply-Message", "hi"), ("State", b"s" * 16)])
    expected = hashlib.md5(reply[:4] + AUTH + reply[20:] + SECRET).digest()  # noqa: S324
    assert reply[4:20] == expected
    assert pk.verify_reply(reply, AUTH, SECRET)


@pytest.mark.parametrize(
    ("change", "secret", "auth"),
    [("none", b"wrong-secret", AUTH), ("none", SECRET, bytes(16)),
     ("flip-attribute", SECRET, AUTH), ("flip-code", SECRET, AUTH)],
)
def test_verify_reply_refuses(change: str, secret: bytes, auth: bytes) -> None:
    reply = bytearray(reply_for(request(User_Name="alice"), pk.ACCESS_ACCEPT,
                                [("Reply-Message", "welcome")]))
    if change == "flip-attribute":
        reply[-1] ^= 0x01
    elif change == "flip-code":
        reply[0] = pk.ACCESS_REJECT
    assert not pk.verify_reply(bytes(reply), auth, secret)


def test_reply_echoes_every_proxy_state_unmodified_and_in_order() -> None:
    states = [b"first", b"\x00second\xff", b"third"]
    reply = reply_for(request(User_Name="alice", Proxy_State=states), pk.ACCESS_REJECT)
    attrs = attributes_of(reply)
    assert [v for k, v in attrs if k == pk.PROXY_STATE] == states
    assert attrs[0][0] == pk.MESSAGE_AUTHENTICATOR


def test_proxy_state_separated_by_other_attributes_keeps_its_order() -> None:
    data = raw_packet(attrs=[(1, b"alice"), (pk.PROXY_STATE, b"a"), (32, b"nas"),
                             (pk.PROXY_STATE, b"b"), UP16])
    reply = reply_for(data, pk.ACCESS_ACCEPT)
    assert [v for k, v in attributes_of(reply) if k == pk.PROXY_STATE] == [b"a", b"b"]


def test_reply_carries_only_what_was_asked_plus_proxy_state() -> None:
    reply = reply_for(request(User_Name="alice", NAS_Identifier="ssh-1", Proxy_State=b"p"),
                      pk.ACCESS_CHALLENGE,
                      [("Reply-Message", "one"), ("Reply-Message", "two"),
                       ("State", b"token-0123456789"), ("Prompt", 1)])
    attrs = attributes_of(reply)
    assert [k for k, _ in attrs] == [pk.MESSAGE_AUTHENTICATOR, pk.PROXY_STATE, 18, 18,
                                     pk.STATE, 76]
    assert [v for k, v in attrs if k == 18] == [b"one", b"two"]
    assert (pk.STATE, b"token-0123456789") in attrs
    assert (76, b"\x00\x00\x00\x01") in attrs


def test_reply_to_unsigned_request_is_signed_anyway() -> None:
    reply = reply_for(request(sign=False, User_Name="alice"), pk.ACCESS_REJECT)
    kind, value = attributes_of(reply)[0]
    assert kind == pk.MESSAGE_AUTHENTICATOR
    assert value == expected_message_authenticator(reply, SECRET, AUTH)


def test_status_server_reply_uses_its_request_authenticator() -> None:
    # RFC 5997 section 3
    data = request(code=pk.STATUS_SERVER, NAS_Identifier="probe")
    reply = reply_for(data, pk.ACCESS_ACCEPT)
    assert reply[0] == pk.ACCESS_ACCEPT
    assert attributes_of(reply)[0] == (pk.MESSAGE_AUTHENTICATOR,
                                       expected_message_authenticator(reply, SECRET, AUTH))
    assert pk.verify_reply(reply, AUTH, SECRET)


def test_reply_is_valid_for_the_request_with_pyrad_client_checks() -> None:
    pkt = rp.AuthPacket(code=pk.ACCESS_REQUEST, id=9, secret=SECRET, authenticator=AUTH,
                        dict=DICT)
    pkt.AddAttribute("User-Name", "alice")
    pkt.AddAttribute("User-Password", pk.hide_password(b"pw", SECRET, AUTH))
    pkt.add_message_authenticator()
    data = pkt.RequestPacket()
    reply = reply_for(data, pk.ACCESS_ACCEPT, [("Class", b"cls")])
    assert pkt.VerifyReply(rp.AuthPacket(packet=reply, secret=SECRET, dict=DICT), reply,
                           enforce_ma=True)


@pytest.mark.parametrize("secret_length", [0, 1, 16, 63, 64, 65, 128, 300])
def test_hmac_md5_is_rfc_2104_for_any_secret_length(secret_length: int) -> None:
    """Our HMAC starts from cached key-pad states; a secret over 64 octets is hashed first."""
    secret = bytes(range(256)) * 2
    secret = secret[:secret_length]
    data = b"Access-Request octets" * 5
    assert pk.hmac_md5(secret, data) == hmac.digest(secret, data, "md5")
