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
import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pyrad import packet as rp
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
    if len(data) < HEADER_LENGTH:
        raise MalformedPacket(f"{len(data)} octets is shorter than a RADIUS header")
    length = struct.unpack_from("!H", data, 2)[0]
    if not HEADER_LENGTH <= length <= MAX_PACKET_LENGTH:
        raise MalformedPacket(f"Length field {length} is outside 20..4096")
    if len(data) < length:
        raise MalformedPacket(f"Length field {length} exceeds the {len(data)} octets received")
    data = data[:length]
    seen: set[int] = set()
    pos = HEADER_LENGTH
    while pos < length:
        if pos + 2 > length:
            raise MalformedPacket("attribute header runs past the end of the packet")
        kind, alen = data[pos], data[pos + 1]
        if alen < 2 or pos + alen > length:
            raise MalformedPacket(f"attribute {kind} has an invalid length {alen}")
        _check_attribute(kind, alen, seen)
        pos += alen
    return data


def _check_attribute(kind: int, alen: int, seen: set[int]) -> None:
    if kind in _AT_MOST_ONCE and kind in seen:
        raise MalformedPacket(f"attribute {kind} appears more than once")
    seen.add(kind)
    if kind == MESSAGE_AUTHENTICATOR and alen != 18:
        raise MalformedPacket("Message-Authenticator must be 16 octets")
    if kind == USER_PASSWORD and not (18 <= alen <= 130 and (alen - 2) % 16 == 0):
        raise MalformedPacket("User-Password must be 16 to 128 octets in steps of 16")


def packet_code(data: bytes) -> int:
    return data[0]


def decode_request(data: bytes, secret: bytes, dictionary: Dictionary) -> rp.AuthPacket:
    """Decode a structurally valid request with pyrad; any decoding failure is malformed."""
    try:
        return rp.AuthPacket(packet=data, secret=secret, dict=dictionary)
    except Exception as exc:  # pyrad raises PacketError, struct.error, KeyError, ...
        raise MalformedPacket(f"cannot decode: {type(exc).__name__}") from None


def message_authenticator_drop(pkt: rp.AuthPacket, *, require: bool,
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


def _keystream(secret: bytes, vector: bytes, blocks: Iterable[bytes]) -> Iterable[bytes]:
    for block in blocks:
        yield hashlib.md5(secret + vector, usedforsecurity=False).digest()
        vector = block


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Reverse RFC 2865 section 5.2 hiding; returns the password octets, NULs stripped.

    pyrad's PwDecrypt returns text and drops invalid UTF-8, so a proxy that must relay the
    octets exactly decrypts here.
    """
    blocks = [hidden[i:i + 16] for i in range(0, len(hidden), 16)]
    out = bytearray()
    for block, pad in zip(blocks, _keystream(secret, authenticator, blocks), strict=True):
        out += bytes(a ^ b for a, b in zip(block, pad, strict=True))
    return bytes(out).rstrip(b"\x00")


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 section 5.2: pad to 16, XOR each block with MD5(secret + previous)."""
    if len(password) > 128:
        raise ValueError("a User-Password holds at most 128 octets")
    padded = password + b"\x00" * (16 if not password else -len(password) % 16)
    out = bytearray()
    vector = authenticator
    for i in range(0, len(padded), 16):
        pad = hashlib.md5(secret + vector, usedforsecurity=False).digest()
        vector = bytes(a ^ b for a, b in zip(padded[i:i + 16], pad, strict=True))
        out += vector
    return bytes(out)


def decoded_attributes(pkt: rp.AuthPacket) -> dict[str, tuple[Any, ...]]:
    """Every dictionary-known attribute by name, values decoded, secrets left out.

    User-Password, CHAP-Password and Message-Authenticator are not part of the result, so
    the request attributes can be logged and used in templates safely.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for key in pkt.keys():  # noqa: SIM118 - pyrad: keys() gives names, iteration codes
        if key in ("User-Password", "CHAP-Password", "Message-Authenticator"):
            continue
        if isinstance(key, str):
            try:
                out[key] = tuple(pkt[key])
            except Exception:  # a value pyrad cannot decode: the packet is malformed
                raise MalformedPacket(f"attribute {key} has an invalid value") from None
    return out


def build_reply(request: rp.AuthPacket, code: int,
                attributes: Sequence[tuple[str, Any]] = ()) -> bytes:
    """Encode a signed reply: Message-Authenticator first, Proxy-State echoed in order.

    pyrad 2.6's CreateReply copies Proxy-State and marks the reply for a
    Message-Authenticator, which ReplyPacket computes over the request's authenticator
    before the Response Authenticator (RFC 2869 section 5.14, RFC 2865 section 5.33).
    """
    reply = request.CreateReply()
    reply.code = code
    reply.add_message_authenticator()
    for name, value in attributes:
        reply.AddAttribute(name, value)
    raw: bytes = reply.ReplyPacket()
    return raw


def verify_reply(raw: bytes, request_authenticator: bytes, secret: bytes) -> bool:
    """Check a reply's Response Authenticator (RFC 2865 section 3); used by radtest."""
    expected = hashlib.md5(
        raw[:4] + request_authenticator + raw[HEADER_LENGTH:] + secret, usedforsecurity=False
    ).digest()
    return hmac.compare_digest(expected, raw[4:HEADER_LENGTH])
