"""LDAP search filters (RFC 4511 section 4.5.1.7): values, BER, and strings (RFC 4515).

Rules of this module: no I/O; values, bytes and text in, values out. `compile_filter`
accepts exactly the grammar of RFC 4515 section 3 (and, or, not, equality, substrings,
present, >=, <=, ~=, extensible match such as `member:1.2.840.113556.1.4.1941:=...`), with
the escapes of that section (`\\XX`, two hex digits; the RFC 2254 form `\\*` is refused).
Filters nest at most `MAX_FILTER_DEPTH` deep, as text and as BER, so no input makes either
parser recurse without bound. `escape_filter_value` is what makes a user name a single
assertion value: whatever the NAS sent, the compiled filter has the same shape as the
configured one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radius_proxy.backends.ldap_tlv import (
    OCTET_STRING,
    SEQUENCE,
    LdapCodecError,
    bool_value,
    done,
    encode_boolean,
    encode_string,
    expect,
    header,
    optional,
    text_value,
    tlv,
)

#: Filter CHOICE tags (RFC 4511 section 4.5.1).
F_AND, F_OR, F_NOT, F_EQUALITY, F_SUBSTRINGS = 0xA0, 0xA1, 0xA2, 0xA3, 0xA4
F_GREATER_OR_EQUAL, F_LESS_OR_EQUAL, F_PRESENT, F_APPROX, F_EXTENSIBLE = (0xA5, 0xA6, 0x87,
                                                                        0xA8, 0xA9)
_SUB_INITIAL, _SUB_ANY, _SUB_FINAL = 0x80, 0x81, 0x82
_MR_RULE, _MR_TYPE, _MR_VALUE, _MR_DN = 0x81, 0x82, 0x83, 0x84

#: Filters nest at most this deep, in both directions: decoding and compiling.
MAX_FILTER_DEPTH = 32


# -- values ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class And:
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    filter: Filter


@dataclass(frozen=True, slots=True)
class Equality:
    attribute: str
    value: bytes


@dataclass(frozen=True, slots=True)
class GreaterOrEqual:
    attribute: str
    value: bytes


@dataclass(frozen=True, slots=True)
class LessOrEqual:
    attribute: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Approx:
    attribute: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Present:
    attribute: str


@dataclass(frozen=True, slots=True)
class Substrings:
    """`initial*any*...*final`; at least one of the three parts is present."""

    attribute: str
    initial: bytes | None = None
    any: tuple[bytes, ...] = ()
    final: bytes | None = None


@dataclass(frozen=True, slots=True)
class Extensible:
    """MatchingRuleAssertion: a rule, an attribute, or both (RFC 4511 section 4.5.1.7.7)."""

    rule: str | None
    attribute: str | None
    value: bytes
    dn_attributes: bool = False


Comparison = Equality | GreaterOrEqual | LessOrEqual | Approx
Filter = And | Or | Not | Comparison | Present | Substrings | Extensible



# -- BER ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def encode_filter(value: Filter) -> bytes:
    """A Filter (RFC 4511 section 4.5.1.7) in BER; cached, since a login repeats its own."""
    return _FILTER_ENCODERS[type(value)](value)


def _encode_list(value: And | Or) -> bytes:
    return tlv(F_AND if type(value) is And else F_OR,
                b"".join(encode_filter(f) for f in value.filters))


def _encode_not(value: Not) -> bytes:
    return tlv(F_NOT, encode_filter(value.filter))


def _encode_comparison(value: Comparison) -> bytes:
    return tlv(_COMPARISON_TAGS[type(value)],
                encode_string(value.attribute) + tlv(OCTET_STRING, value.value))


def _encode_present(value: Present) -> bytes:
    return tlv(F_PRESENT, value.attribute.encode("utf-8"))


def _encode_substrings(value: Substrings) -> bytes:
    parts = [tlv(_SUB_INITIAL, value.initial)] if value.initial is not None else []
    parts += [tlv(_SUB_ANY, piece) for piece in value.any]
    if value.final is not None:
        parts.append(tlv(_SUB_FINAL, value.final))
    return tlv(F_SUBSTRINGS, encode_string(value.attribute) + tlv(SEQUENCE, b"".join(parts)))


def _encode_extensible(value: Extensible) -> bytes:
    content = encode_string(value.rule, _MR_RULE) if value.rule is not None else b""
    if value.attribute is not None:
        content += encode_string(value.attribute, _MR_TYPE)
    content += tlv(_MR_VALUE, value.value)
    if value.dn_attributes:
        content += encode_boolean(True, _MR_DN)
    return tlv(F_EXTENSIBLE, content)


_COMPARISON_TAGS: dict[type, int] = {
    Equality: F_EQUALITY, GreaterOrEqual: F_GREATER_OR_EQUAL, LessOrEqual: F_LESS_OR_EQUAL,
    Approx: F_APPROX,
}
_FILTER_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    And: _encode_list, Or: _encode_list, Not: _encode_not, Equality: _encode_comparison,
    GreaterOrEqual: _encode_comparison, LessOrEqual: _encode_comparison,
    Approx: _encode_comparison, Present: _encode_present, Substrings: _encode_substrings,
    Extensible: _encode_extensible,
}


def decode_filter(data: bytes) -> Filter:
    """The one Filter that fills data exactly (for tests and for servers written in tests)."""
    value, end = decode_filter_at(data, 0, len(data), 0)
    done(end, len(data), "the filter")
    return value


def decode_filter_at(data: bytes, pos: int, stop: int, depth: int = 0) -> tuple[Filter, int]:
    """The filter at pos and where it ends; at most MAX_FILTER_DEPTH levels of nesting."""
    if depth >= MAX_FILTER_DEPTH:
        raise LdapCodecError("filter nested too deeply")
    tag, s, e = header(data, pos, stop)
    if tag in (F_AND, F_OR):
        members: list[Filter] = []
        while s < e:
            member, s = decode_filter_at(data, s, e, depth + 1)
            members.append(member)
        if not members:
            raise LdapCodecError("empty and/or filter")
        return (And(tuple(members)) if tag == F_AND else Or(tuple(members))), e
    if tag == F_NOT:
        inner, end = decode_filter_at(data, s, e, depth + 1)
        done(end, e, "a not filter")
        return Not(inner), e
    if tag == F_PRESENT:
        return Present(text_value(data, s, e)), e
    if tag == F_SUBSTRINGS:
        return _decode_substrings(data, s, e), e
    if tag == F_EXTENSIBLE:
        return _decode_extensible(data, s, e), e
    kind = _COMPARISONS.get(tag)
    if kind is None:
        raise LdapCodecError(f"unknown filter choice 0x{tag:02x}")
    ns, ne = expect(data, s, e, OCTET_STRING)
    vs, ve = expect(data, ne, e, OCTET_STRING)
    done(ve, e, "an attribute value assertion")
    return kind(text_value(data, ns, ne), data[vs:ve]), e


_COMPARISONS: dict[int, type[Comparison]] = {
    F_EQUALITY: Equality, F_GREATER_OR_EQUAL: GreaterOrEqual, F_LESS_OR_EQUAL: LessOrEqual,
    F_APPROX: Approx,
}


def _decode_substrings(data: bytes, start: int, stop: int) -> Substrings:
    s, e = expect(data, start, stop, OCTET_STRING)
    attribute = text_value(data, s, e)
    pos, end = expect(data, e, stop, SEQUENCE)
    done(end, stop, "a substrings filter")
    initial: bytes | None = None
    final: bytes | None = None
    middle: list[bytes] = []
    count = 0
    while pos < end:
        tag, s, pos = header(data, pos, end)
        if final is not None or tag not in (_SUB_INITIAL, _SUB_ANY, _SUB_FINAL) or (
                tag == _SUB_INITIAL and count):
            raise LdapCodecError("substrings out of order")
        count += 1
        if tag == _SUB_INITIAL:
            initial = data[s:pos]
        elif tag == _SUB_ANY:
            middle.append(data[s:pos])
        else:
            final = data[s:pos]
    if not count:
        raise LdapCodecError("substrings filter without substrings")
    return Substrings(attribute, initial, tuple(middle), final)


def _decode_extensible(data: bytes, start: int, stop: int) -> Extensible:
    rule_raw, pos = optional(data, start, stop, _MR_RULE)
    type_raw, pos = optional(data, pos, stop, _MR_TYPE)
    s, pos = expect(data, pos, stop, _MR_VALUE)
    value = data[s:pos]
    dn_attributes = False
    if pos < stop:
        s, pos = expect(data, pos, stop, _MR_DN)
        dn_attributes = bool_value(data, s, pos)
    done(pos, stop, "an extensible match")
    if rule_raw is None and type_raw is None:
        raise LdapCodecError("extensible match without rule or type")
    rule = text_value(rule_raw, 0, len(rule_raw)) if rule_raw is not None else None
    attribute = text_value(type_raw, 0, len(type_raw)) if type_raw is not None else None
    return Extensible(rule, attribute, value, dn_attributes)


# -- text (RFC 4515) ------------------------------------------------------------------------

#: A filter string longer than this is refused before parsing.
MAX_FILTER_LENGTH = 16384
#: Characters RFC 4515 section 3 requires escaped in a value (plus NUL, below 0x20 too).
_SPECIAL = frozenset(b"*()\\")
#: attributedescription (RFC 4512 section 2.5): a descr or numericoid, then ;options.
_ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*\Z")
_OID = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)\Z")
_HEX = frozenset("0123456789abcdefABCDEF")
_COMPARE: dict[str, type[Approx | GreaterOrEqual | LessOrEqual]] = {
    "~": Approx, ">": GreaterOrEqual, "<": LessOrEqual}


def escape_filter_value(value: str) -> str:
    """Escape an assertion value for a search filter (RFC 4515 section 3).

    `* ( ) \\` and NUL must be escaped; every other non-printable or non-ASCII byte of the
    UTF-8 encoding is escaped too, which RFC 4515 allows and which keeps the filter pure
    ASCII whatever the NAS sent. Raises UnicodeEncodeError for text that is not valid UTF-8.
    """
    if value.isascii() and value.isalnum():
        return value  # the common case: a plain login name
    return _escape_bytes(value.encode("utf-8"))


def compile_filter(text: str) -> Filter:
    """The Filter that the RFC 4515 string denotes; LdapCodecError if it is not one."""
    if len(text) > MAX_FILTER_LENGTH:
        raise LdapCodecError("filter too long")
    value, end = _filter(text, 0, 0)
    if end != len(text):
        raise LdapCodecError(f"unexpected text after the filter at {end}")
    return value


def _filter(text: str, pos: int, depth: int) -> tuple[Filter, int]:
    """filter = "(" filtercomp ")"; returns the value and the position after ")"."""
    if depth >= MAX_FILTER_DEPTH:
        raise LdapCodecError("filter nested too deeply")
    if not text.startswith("(", pos):
        raise LdapCodecError(f'expected "(" at {pos}')
    pos += 1
    kind = text[pos:pos + 1]
    if kind in ("&", "|"):
        members: list[Filter] = []
        pos += 1
        while text.startswith("(", pos):
            member, pos = _filter(text, pos, depth + 1)
            members.append(member)
        if not members:
            raise LdapCodecError(f"empty filter list at {pos}")
        value: Filter = And(tuple(members)) if kind == "&" else Or(tuple(members))
    elif kind == "!":
        inner, pos = _filter(text, pos + 1, depth + 1)
        value = Not(inner)
    else:
        end = text.find(")", pos)
        if end < 0:
            raise LdapCodecError('missing ")"')
        value, pos = _item(text[pos:end]), end
    if not text.startswith(")", pos):
        raise LdapCodecError(f'expected ")" at {pos}')
    return value, pos + 1


def _item(item: str) -> Filter:
    """simple / present / substring / extensible: everything between one "(" and ")"."""
    equals = item.find("=")
    if equals <= 0:
        raise LdapCodecError(f"no attribute and operator in {item!r}")
    before, value = item[:equals - 1], item[equals + 1:]
    operator = item[equals - 1]
    if operator == ":":
        return _extensible(before, value)
    if operator in _COMPARE:
        return _COMPARE[operator](_attribute(before), _value(value))
    attribute = _attribute(item[:equals])
    if value == "*":
        return Present(attribute)
    if "*" in value:
        return _substrings(attribute, value)
    return Equality(attribute, _value(value))


def _attribute(text: str) -> str:
    if not _ATTRIBUTE.match(text):
        raise LdapCodecError(f"not an attribute description: {text!r}")
    return text


def _substrings(attribute: str, value: str) -> Substrings:
    """initial*any*...*final, each part possibly empty except the middle ones."""
    parts = value.split("*")
    middle = parts[1:-1]
    if any(not part for part in middle):
        raise LdapCodecError("two * in a row in a substrings filter")
    initial = _value(parts[0]) if parts[0] else None
    final = _value(parts[-1]) if parts[-1] else None
    return Substrings(attribute, initial, tuple(_value(p) for p in middle), final)


def _extensible(before: str, value: str) -> Extensible:
    """attr[:dn][:rule]:=value, or [:dn]:rule:=value (RFC 4515 section 3)."""
    pieces = before.split(":")
    attribute = _attribute(pieces[0]) if pieces[0] else None
    rest = pieces[1:]
    dn_attributes = bool(rest) and rest[0].lower() == "dn"
    if dn_attributes:
        rest = rest[1:]
    if len(rest) > 1 or (rest and not _OID.match(rest[0])):
        raise LdapCodecError(f"not an extensible match: {before!r}")
    rule = rest[0] if rest else None
    if attribute is None and rule is None:
        raise LdapCodecError("extensible match needs an attribute or a matching rule")
    return Extensible(rule, attribute, _value(value), dn_attributes)


def _value(text: str) -> bytes:
    """An assertionvalue: UTF-8 text with `\\XX` escapes, none of NUL ( ) * unescaped."""
    if "\\" not in text:
        if "(" in text or "*" in text or "\x00" in text:
            raise LdapCodecError("unescaped special character in a value")
        return text.encode("utf-8")
    pieces = text.split("\\")
    out = bytearray(_value(pieces[0]))
    for piece in pieces[1:]:
        if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
            raise LdapCodecError("a backslash must be followed by two hex digits")
        out.append(int(piece[:2], 16))
        out += _value(piece[2:])
    return bytes(out)


def render_filter(value: Filter) -> str:
    """The RFC 4515 string of a filter, every value escaped (for logs and tests)."""
    match value:
        case And(filters):
            return "(&" + "".join(render_filter(f) for f in filters) + ")"
        case Or(filters):
            return "(|" + "".join(render_filter(f) for f in filters) + ")"
        case Not(inner):
            return f"(!{render_filter(inner)})"
        case Equality(attribute, assertion):
            return f"({attribute}={_escape_bytes(assertion)})"
        case GreaterOrEqual(attribute, assertion):
            return f"({attribute}>={_escape_bytes(assertion)})"
        case LessOrEqual(attribute, assertion):
            return f"({attribute}<={_escape_bytes(assertion)})"
        case Approx(attribute, assertion):
            return f"({attribute}~={_escape_bytes(assertion)})"
        case Present(attribute):
            return f"({attribute}=*)"
        case Substrings(attribute, initial, middle, final):
            parts = [initial or b"", *middle, final or b""]
            return f"({attribute}=" + "*".join(_escape_bytes(p) for p in parts) + ")"
        case Extensible(rule, attribute, assertion, dn_attributes):
            head = (attribute or "") + (":dn" if dn_attributes else "")
            head += f":{rule}" if rule else ""
            return f"({head}:={_escape_bytes(assertion)})"
    raise TypeError(f"not a filter: {value!r}")


def _escape_bytes(value: bytes) -> str:
    return "".join(f"\\{b:02x}" if b in _SPECIAL or b < 0x20 or b >= 0x7F else chr(b)
                   for b in value)
