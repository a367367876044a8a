"""Checking, decoding and answering RADIUS packets (RFC 2865, 2869, 3579, 5080, 5997).

Rules of this module:
1. Bytes in, values out; no I/O, no clock. pyrad is the codec; this module adds what pyrad
   leaves to its caller: strict structure checks before any decoding, the
   Message-Authenticator policy (BlastRADIUS, CVE-2024-3596), byte-exact password hiding,
   and replies whose first attribute is Message-Authenticator.
2. Anything a peer can send that we refuse raises `MalformedPacket`, or is named by a
   `DropReason`; nothing else escapes for bad input.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from pyrad import packet as rp
from pyrad import tools
from pyrad.dictionary import Dictionary

from radius_proxy.errors import MalformedPacket

ACCESS_REQUEST = rp.AccessRequest
ACCESS_ACCEPT = rp.AccessAccept
ACCESS_REJECT = rp.AccessReject
ACCESS_CHALLENGE = rp.AccessChallenge
STATUS_SERVER = rp.StatusServer

HEADER_LENGTH = 20
MAX_PACKET_LENGTH = 4096  # RFC 2865 section 3
MAX_ATTRIBUTE_VALUE = 253

USER_PASSWORD = 2
CHAP_PASSWORD = 3
STATE = 24
VENDOR_SPECIFIC = 26
PROXY_STATE = 33
EAP_MESSAGE = 79
MESSAGE_AUTHENTICATOR = 80

#: Attributes that may appear at most once in a request (RFC 2865 section 5.44, RFC 3579).
_AT_MOST_ONCE = frozenset({1, USER_PASSWORD, CHAP_PASSWORD, STATE, MESSAGE_AUTHENTICATOR})


class DropReason(enum.Enum):
    """Why a packet was silently discarded; also the label of the drop counter."""

    UNKNOWN_CLIENT = "unknown_client"
    MALFORMED = "malformed"
    UNSUPPORTED_CODE = "unsupported_code"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    PROXY_STATE_WITHOUT_MA = "proxy_state_without_message_authenticator"
    DUPLICATE_IN_FLIGHT = "duplicate_in_flight"
    OVERLOAD = "overload"


def check_structure(data: bytes) -> bytes:
    """Validate header and attribute lengths; return the packet without padding.

    RFC 2865 section 3: Length runs from 20 to 4096, octets past it are padding, a packet
    shorter than its Length is discarded. Section 5: every attribute is at least 2 octets
    and must end inside the packet. pyrad would quietly truncate an attribute that runs past
    the end, so this walk happens first.
    """
    return _walk(data)[0]


def _walk(data: bytes) -> tuple[bytes, list[tuple[int, bytes]], int, dict[int, bytes]]:
    """One pass over a packet: (packet without padding, attributes in order, offset of the
    Message-Authenticator attribute or -1, the first value of each attribute type present).

    This runs for every datagram, so the per-attribute rules are inlined rather than calls.
    """
    if len(data) < HEADER_LENGTH:
        raise MalformedPacket(f"{len(data)} octets is shorter than a RADIUS header")
    length = (data[2] << 8) | data[3]
    if not HEADER_LENGTH <= length <= MAX_PACKET_LENGTH:
        raise MalformedPacket(f"Length field {length} is outside 20..4096")
    if len(data) < length:
        raise MalformedPacket(f"Length field {length} exceeds the {len(data)} octets received")
    if len(data) > length:
        data = data[:length]
    firsts: dict[int, bytes] = {}
    attributes: list[tuple[int, bytes]] = []
    ma_offset = -1
    pos = HEADER_LENGTH
    while pos < length:
        if pos + 2 > length:
            raise MalformedPacket("attribute header runs past the end of the packet")
        kind, alen = data[pos], data[pos + 1]
        if alen < 2 or pos + alen > length:
            raise MalformedPacket(f"attribute {kind} has an invalid length {alen}")
        value = data[pos + 2:pos + alen]
        if kind in firsts:
            if kind in _AT_MOST_ONCE:
                raise MalformedPacket(f"attribute {kind} appears more than once")
        else:
            if kind == MESSAGE_AUTHENTICATOR:
                if alen != 18:
                    raise MalformedPacket("Message-Authenticator must be 16 octets")
                ma_offset = pos
            elif kind == USER_PASSWORD and not (18 <= alen <= 130 and (alen - 2) % 16 == 0):
                raise MalformedPacket("User-Password must be 16 to 128 octets in steps of 16")
            firsts[kind] = value
        attributes.append((kind, value))
        pos += alen
    return data, attributes, ma_offset, firsts


class Request:
    """A received request: header fields, attributes in order, and what it takes to answer.

    This is the hot path of the server, so it does not build a pyrad packet: one walk over
    the octets (`_walk`) gives the attributes, the Message-Authenticator is checked with
    `hmac` over the received bytes, and values are decoded with pyrad's dictionary and
    attribute codecs only when asked for (`decoded_attributes`).
    """

    __slots__ = ("_attributes", "_firsts", "_ma_offset", "authenticator", "code",
                 "dictionary", "id", "raw", "secret")

    def __init__(self, data: bytes, secret: bytes, dictionary: Dictionary) -> None:
        self.raw, self._attributes, self._ma_offset, self._firsts = _walk(data)
        self.code = self.raw[0]
        self.id = self.raw[1]
        self.authenticator = self.raw[4:HEADER_LENGTH]
        self.secret = secret
        self.dictionary = dictionary

    @property
    def message_authenticator(self) -> bool:
        return self._ma_offset >= 0

    def verify_message_authenticator(self) -> bool:
        """RFC 2869 section 5.14: HMAC-MD5 over the packet with the attribute zeroed."""
        o = self._ma_offset
        if o < 0:
            return False
        raw = self.raw
        expected = hmac_md5(self.secret, raw[:o + 2] + _ZERO16 + raw[o + 18:])
        return hmac.compare_digest(expected, raw[o + 2:o + 18])

    def get(self, code: int) -> list[bytes] | None:
        """The raw values of an attribute, in order, or None."""
        if code not in self._firsts:
            return None
        return [v for k, v in self._attributes if k == code]

    def first(self, code: int) -> bytes | None:
        """The raw value of an attribute's first occurrence, or None."""
        return self._firsts.get(code)

    def __contains__(self, code: object) -> bool:
        return code in self._firsts

    def __getitem__(self, code: int) -> list[bytes]:
        values = self.get(code)
        if values is None:
            raise KeyError(code)
        return values

    @property
    def attributes(self) -> list[tuple[int, bytes]]:
        return self._attributes


_ZERO16 = bytes(16)

try:  # CPython's own MD5: for 100-octet inputs about 4x faster than OpenSSL's EVP calls
    from _md5 import md5 as _md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a build without it: hashlib's (OpenSSL)
    _md5 = functools.partial(hashlib.md5, usedforsecurity=False)


def _digest(data: bytes) -> bytes:
    """MD5, as RADIUS uses it (RFC 2865 sections 3 and 5.2): a checksum, not a secret."""
    return _md5(data).digest()  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=1024)
def _hmac_pads(secret: bytes) -> tuple[Any, Any]:
    """MD5 states after the inner and outer key pads of HMAC (RFC 2104), one per secret."""
    key = _digest(secret) if len(secret) > 64 else secret
    key = key.ljust(64, b"\x00")
    return (_md5(bytes(b ^ 0x36 for b in key)), _md5(bytes(b ^ 0x5C for b in key)))


def hmac_md5(secret: bytes, data: bytes) -> bytes:
    """HMAC-MD5 (RFC 2104) for the Message-Authenticator (RFC 2869 section 5.14).

    Equal to `hmac.digest(secret, data, "md5")`, which costs about 3.5 us per call here
    (OpenSSL sets up an HMAC context each time); starting from the key pads' MD5 states,
    kept per shared secret, it is about 1.3 us, and every request needs two.
    """
    inner, outer = _hmac_pads(secret)
    inner = inner.copy()
    inner.update(data)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()  # type: ignore[no-any-return]


def decode_request(data: bytes, secret: bytes, dictionary: Dictionary) -> Request:
    """Check and split a request; anything structurally wrong raises MalformedPacket."""
    return Request(data, secret, dictionary)


def message_authenticator_drop(pkt: Request, *, require: bool,
                               limit_proxy_state: bool) -> DropReason | None:
    """The Message-Authenticator policy; None when the packet may be processed.

    RFC 2869 section 5.14: a present Message-Authenticator is always verified. RFC 5997:
    Status-Server must carry one. BlastRADIUS: clients are required to sign unless marked
    legacy, and a legacy client's request with Proxy-State but no signature is dropped.
    """
    if pkt.message_authenticator:
        if not pkt.verify_message_authenticator():
            return DropReason.BAD_MESSAGE_AUTHENTICATOR
        return None
    if require or pkt.code == STATUS_SERVER:
        return DropReason.MISSING_MESSAGE_AUTHENTICATOR
    if limit_proxy_state and PROXY_STATE in pkt:
        return DropReason.PROXY_STATE_WITHOUT_MA
    return None


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Reverse RFC 2865 section 5.2 hiding; returns the password octets, NULs stripped.

    pyrad's PwDecrypt returns text and drops invalid UTF-8, so a proxy that must relay the
    octets exactly decrypts here. Block i is XORed with MD5(secret + previous hidden block),
    the first with MD5(secret + Request Authenticator).
    """
    if len(hidden) == 16:  # most passwords: one block, one MD5, no call for the XOR
        pad = _md5(secret + authenticator).digest()
        plain = int.from_bytes(hidden, "big") ^ int.from_bytes(pad, "big")
        return plain.to_bytes(16, "big").rstrip(b"\x00")
    out = bytearray()
    vector = authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i:i + 16]
        out += _xor16(block, _digest(secret + vector))
        vector = block
    return bytes(out).rstrip(b"\x00")


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(16, "big")


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 section 5.2: pad to 16, XOR each block with MD5(secret + previous)."""
    if len(password) > 128:
        raise ValueError("a User-Password holds at most 128 octets")
    padded = password + b"\x00" * (16 if not password else -len(password) % 16)
    out = bytearray()
    vector = authenticator
    for i in range(0, len(padded), 16):
        pad = _digest(secret + vector)
        vector = _xor16(padded[i:i + 16], pad)
        out += vector
    return bytes(out)


_SECRET_CODES = frozenset({USER_PASSWORD, CHAP_PASSWORD, MESSAGE_AUTHENTICATOR})


def decoded_attributes(pkt: Request) -> dict[str, tuple[Any, ...]]:
    """Every dictionary-known attribute by name, values decoded, secrets left out.

    User-Password, CHAP-Password and Message-Authenticator are not part of the result, so
    the request attributes can be logged and used in templates safely. A value the
    dictionary's type cannot hold (an integer of 3 octets) makes the packet malformed.

    Every request is decoded (that check must happen before the duplicate cache), and a
    NAS sends the same NAS-Identifier, NAS-IP-Address or User-Name again and again, so each
    attribute's decoding is remembered by its octets (`_Decoder`).
    """
    decoder = _decoder(pkt.dictionary)
    memo = decoder.memo
    out: dict[str, list[Any]] = {}
    for kind, value in pkt.attributes:
        if kind in _SECRET_CODES:
            continue
        pairs = memo.get((kind, value))
        if pairs is None:
            pairs = decoder.decode(kind, value)
        for name, decoded in pairs:
            seen = out.get(name)
            if seen is None:
                out[name] = [decoded]
            else:
                seen.append(decoded)
    return {k: tuple(v) for k, v in out.items()}


class _Decoder:
    """The decoded (name, value) pairs of one attribute's octets, remembered while few.

    Only immutable values are kept (text, numbers, octets), so sharing them between
    requests is safe; the memory is bounded by `LIMIT` entries of at most 255 octets, and
    a flood of distinct values only empties it now and then. A value that cannot be
    decoded is never remembered: it raises every time.
    """

    LIMIT = 4096

    def __init__(self, dictionary: Dictionary) -> None:
        self._dictionary = dictionary
        #: read directly by `decoded_attributes`, which calls `decode` only on a miss
        self.memo: dict[tuple[int, bytes], tuple[tuple[str, Any], ...]] = {}

    def decode(self, kind: int, value: bytes) -> tuple[tuple[str, Any], ...]:
        key = (kind, value)
        found = self.memo.get(key)
        if found is not None:
            return found
        d = self._dictionary
        pairs = []
        for code, raw in _split_vendor(kind, value):
            if d.attrindex.HasBackward(code):
                name = d.attrindex.GetBackward(code)
                pairs.append((name, _decode_value(d.attributes[name], raw, name)))
        found = tuple(pairs)
        if all(type(v) in (str, int, bytes) for _, v in found):
            if len(self.memo) >= self.LIMIT:
                self.memo.clear()
            self.memo[key] = found
        return found


@functools.lru_cache(maxsize=8)
def _decoder(dictionary: Dictionary) -> _Decoder:
    """One decoder per dictionary (a process has one or two: the server's, a reload's)."""
    return _Decoder(dictionary)


def _split_vendor(kind: int, value: bytes) -> list[tuple[Any, bytes]]:
    """A Vendor-Specific attribute as ((vendor, type), value) pairs (RFC 2865 section 5.26)."""
    if kind != VENDOR_SPECIFIC or len(value) < 6:
        return [(kind, value)]
    vendor = int.from_bytes(value[:4], "big")
    out: list[tuple[Any, bytes]] = []
    pos = 4
    while pos < len(value):
        if pos + 2 > len(value) or value[pos + 1] < 2 or pos + value[pos + 1] > len(value):
            return [(kind, value)]
        out.append(((vendor, value[pos]), value[pos + 2:pos + value[pos + 1]]))
        pos += value[pos + 1]
    return out


def _decode_value(attr: Any, raw: bytes, name: str) -> Any:
    try:
        if attr.has_tag and raw and raw[0] <= 0x1F and attr.type != "integer":
            raw = raw[1:]
        if attr.values.HasBackward(raw):
            return attr.values.GetBackward(raw)
        return tools.DecodeAttr(attr.type, raw)
    except Exception:  # a value pyrad cannot decode: the packet is malformed
        raise MalformedPacket(f"attribute {name} has an invalid value") from None


def _encode_attribute(d: Dictionary, name: str, value: Any) -> bytes:
    """One reply attribute; plain ones directly, tagged, vendor and TLV ones through pyrad."""
    attr = d.attributes.get(name)
    if attr is None or attr.vendor or attr.has_tag or attr.encrypt or attr.type == "tlv":
        scratch = rp.Packet(dict=d)
        scratch.AddAttribute(name, value)
        encoded: bytes = scratch._PktEncodeAttributes()
        return encoded
    raw: bytes = attr.values.GetForward(value) if attr.values.HasForward(value) else \
        tools.EncodeAttr(attr.type, value)
    if len(raw) > MAX_ATTRIBUTE_VALUE:
        raise ValueError(f"{name} is longer than {MAX_ATTRIBUTE_VALUE} octets")
    return bytes((attr.code, len(raw) + 2)) + raw


def build_reply(request: Request, code: int,
                attributes: Sequence[tuple[str, Any]] = ()) -> bytes:
    """Encode a signed reply: Message-Authenticator first, Proxy-State echoed in order.

    The Message-Authenticator is computed over the reply with the request's authenticator
    in the header and the attribute zeroed, then the Response Authenticator over the
    result (RFC 2869 section 5.14, RFC 2865 sections 3 and 5.33).
    """
    body = bytearray(b"\x50\x12" + _ZERO16)
    if PROXY_STATE in request._firsts:
        for kind, value in request.attributes:
            if kind == PROXY_STATE:
                body += bytes((PROXY_STATE, len(value) + 2)) + value
    for name, value in attributes:
        body += _encode_attribute(request.dictionary, name, value)
    length = HEADER_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise ValueError(f"the reply would be {length} octets, more than {MAX_PACKET_LENGTH}")
    header = bytes((code, request.id)) + length.to_bytes(2, "big")
    body[2:18] = hmac_md5(request.secret, header + request.authenticator + body)
    response: bytes = _md5(header + request.authenticator + body + request.secret).digest()
    return header + response + bytes(body)


def verify_reply(raw: bytes, request_authenticator: bytes, secret: bytes) -> bool:
    """Check a reply's Response Authenticator (RFC 2865 section 3); used by radtest."""
    expected = hashlib.md5(
        raw[:4] + request_authenticator + raw[HEADER_LENGTH:] + secret, usedforsecurity=False
    ).digest()
    return hmac.compare_digest(expected, raw[4:HEADER_LENGTH])
