"""BER (X.690) primitives for the LDAP codec: one element, its tag, length and value.

Rules of this module: no I/O; bytes in, values out. LDAP's subset of BER (RFC 4511
section 5.1): low tag numbers only, definite lengths only (the long form may be longer than
needed, as Active Directory sends it), primitive strings. The decoding helpers take
(data, position, end) and check that every element ends by its container's end, so a
decoder built on them can only move forward through its input: bounded by its length.
"""

from __future__ import annotations

from radius_proxy.errors import PeerError


class LdapCodecError(PeerError):
    """Bytes that are not an LDAP message (or filter) this codec accepts."""


#: Universal tags (X.690 section 8).
BOOLEAN, INTEGER, OCTET_STRING, ENUMERATED, SEQUENCE, SET = 0x01, 0x02, 0x04, 0x0A, 0x30, 0x31
#: INTEGER (0 .. maxInt), maxInt = 2^31 - 1 (RFC 4511 section 4.1.1).
MAX_INT = 2**31 - 1


# -- encoding -------------------------------------------------------------------------------

def tlv(tag: int, content: bytes) -> bytes:
    """One element, the length in the shortest definite form (X.690 section 8.1.3)."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def encode_integer(value: int, tag: int = INTEGER) -> bytes:
    if 0 <= value < 0x80:
        return bytes((tag, 1, value))
    return tlv(tag, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def encode_string(value: str, tag: int = OCTET_STRING) -> bytes:
    return tlv(tag, value.encode("utf-8"))


def encode_boolean(value: bool, tag: int = BOOLEAN) -> bytes:
    return bytes((tag, 1, 0xFF if value else 0))


# -- decoding -------------------------------------------------------------------------------

def header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at pos, which must end by `end`."""
    if end - pos < 2:
        raise LdapCodecError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise LdapCodecError("high tag numbers are not used by LDAP")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0:
            raise LdapCodecError("indefinite length (RFC 4511 section 5.1 forbids it)")
        if count > 4 or end - pos < count:
            raise LdapCodecError("bad length octets")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if length > end - pos:
        raise LdapCodecError("element longer than its container")
    return tag, pos, pos + length


def expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """(content start, content end) of the element at pos, which must have tag."""
    if pos + 2 <= end and data[pos] == tag and data[pos + 1] < 0x80:  # the common case
        stop = pos + 2 + data[pos + 1]
        if stop <= end:
            return pos + 2, stop
    found, start, stop = header(data, pos, end)
    if found != tag:
        raise LdapCodecError(f"expected tag 0x{tag:02x}, found 0x{found:02x}")
    return start, stop


def int_value(data: bytes, start: int, stop: int, low: int = 0, high: int = MAX_INT) -> int:
    if not 1 <= stop - start <= 5:
        raise LdapCodecError("integer of bad size")
    value = int.from_bytes(data[start:stop], "big", signed=True)
    if not low <= value <= high:
        raise LdapCodecError(f"integer {value} out of range")
    return value


def text_value(data: bytes, start: int, stop: int) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LdapCodecError("string is not UTF-8") from exc


def bool_value(data: bytes, start: int, stop: int) -> bool:
    if stop - start != 1:
        raise LdapCodecError("boolean of bad size")
    return data[start] != 0


def strings(data: bytes, start: int, stop: int) -> tuple[str, ...]:
    """The contents of a SEQUENCE or SET OF OCTET STRING, as text."""
    out: list[str] = []
    while start < stop:
        begin, start = expect(data, start, stop, OCTET_STRING)
        out.append(text_value(data, begin, start))
    return tuple(out)


def optional(data: bytes, pos: int, stop: int, tag: int) -> tuple[bytes | None, int]:
    """The content of an OPTIONAL primitive element with tag at pos, or None."""
    if pos < stop and data[pos] == tag:
        s, e = expect(data, pos, stop, tag)
        return data[s:e], e
    return None, pos


def done(pos: int, stop: int, what: str) -> None:
    if pos != stop:
        raise LdapCodecError(f"unexpected data after {what}")
