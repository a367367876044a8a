"""The BER codec for the part of LDAPv3 (RFC 4511) the directory backend speaks.

Rules of this module (as h11's): no I/O, no asyncio, no clock; bytes in, values out. It
knows the LDAPMessage envelope with controls (RFC 4511 section 4.1.1, 4.1.11), simple Bind
(4.2), Unbind (4.3), Search with its entries, references and done (4.5), Extended operations
(4.12, used for StartTLS, RFC 4511 section 4.14), and the simple-paged-results control value
(RFC 2696); search filters are `ldap_filter`'s, the BER building blocks `ldap_tlv`'s.
Everything else a server may send is a codec error, never something half-understood.

Decoding is strict and total: any bytes give either a value or one `LdapCodecError`.
Lengths must be definite (RFC 4511 section 5.1 forbids the indefinite form), strings
primitive, every element must end exactly where its parent says, and filters nest at most
`MAX_FILTER_DEPTH` deep, so no input can make the decoder recurse or loop without bound.
Encoding is hand-written on bytes (no pyasn1): this codec is on the path of every login.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radius_proxy.backends.ldap_filter import Filter, decode_filter_at, encode_filter
from radius_proxy.backends.ldap_tlv import (
    BOOLEAN,
    ENUMERATED,
    INTEGER,
    MAX_INT,
    OCTET_STRING,
    SEQUENCE,
    SET,
    LdapCodecError,
    bool_value,
    done,
    encode_boolean,
    encode_integer,
    encode_string,
    expect,
    header,
    int_value,
    optional,
    strings,
    text_value,
    tlv,
)

#: The LDAP application tags (RFC 4511 appendix B).
BIND_REQUEST, BIND_RESPONSE, UNBIND_REQUEST = 0x60, 0x61, 0x42
SEARCH_REQUEST, SEARCH_ENTRY, SEARCH_DONE, SEARCH_REFERENCE = 0x63, 0x64, 0x65, 0x73
EXTENDED_REQUEST, EXTENDED_RESPONSE = 0x77, 0x78
_CONTROLS, _SIMPLE_AUTH, _REFERRAL, _SASL_CREDS = 0xA0, 0x80, 0xA3, 0x87
_EXT_NAME, _EXT_VALUE, _EXT_RESPONSE_NAME, _EXT_RESPONSE_VALUE = 0x80, 0x81, 0x8A, 0x8B
#: StartTLS (RFC 4511 section 4.14.1) and the simple paged results control (RFC 2696).
STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
#: Search scopes (RFC 4511 section 4.5.1.2).
SCOPE_BASE, SCOPE_ONE, SCOPE_SUBTREE = 0, 1, 2


# -- values ---------------------------------------------------------------------------------
#
# Messages are slotted dataclasses that are not frozen: a frozen dataclass's __init__ costs
# four times as much, and one is made for every message of every login. Treat them as
# immutable all the same. (Filters, in ldap_filter, are frozen: hashable, so their BER is
# cached.)

@dataclass(slots=True)
class LdapResult:
    """LDAPResult (RFC 4511 section 4.1.9): a result code and the server's words on it."""

    code: int
    matched_dn: str = ""
    message: str = ""
    referrals: tuple[str, ...] = ()


@dataclass(slots=True)
class Control:
    """A request or response control (RFC 4511 section 4.1.11)."""

    oid: str
    critical: bool = False
    value: bytes | None = None


@dataclass(slots=True)
class BindRequest:
    """A simple bind (RFC 4511 section 4.2): a DN and a password, LDAPv3."""

    name: str
    password: bytes = b""
    version: int = 3

    def __repr__(self) -> str:  # the password never reaches a log through a repr
        return f"BindRequest(name={self.name!r}, version={self.version})"


@dataclass(slots=True)
class BindResponse:
    result: LdapResult
    sasl_credentials: bytes | None = None


@dataclass(slots=True)
class UnbindRequest:
    pass


@dataclass(slots=True)
class SearchRequest:
    base: str
    scope: int
    filter: Filter
    attributes: tuple[str, ...] = ()
    size_limit: int = 0
    time_limit: int = 0
    types_only: bool = False
    deref: int = 0


@dataclass(slots=True)
class SearchResultEntry:
    dn: str
    attributes: tuple[tuple[str, tuple[bytes, ...]], ...] = ()


@dataclass(slots=True)
class SearchResultReference:
    uris: tuple[str, ...]


@dataclass(slots=True)
class SearchResultDone:
    result: LdapResult


@dataclass(slots=True)
class ExtendedRequest:
    name: str
    value: bytes | None = None


@dataclass(slots=True)
class ExtendedResponse:
    result: LdapResult
    name: str | None = None
    value: bytes | None = None


ProtocolOp = (BindRequest | BindResponse | UnbindRequest | SearchRequest | SearchResultEntry
              | SearchResultReference | SearchResultDone | ExtendedRequest | ExtendedResponse)


@dataclass(slots=True)
class LdapMessage:
    message_id: int
    op: ProtocolOp
    controls: tuple[Control, ...] = ()


# -- encoding -------------------------------------------------------------------------------

def _result_content(result: LdapResult) -> bytes:
    content = (encode_integer(result.code, ENUMERATED) + encode_string(result.matched_dn)
               + encode_string(result.message))
    if result.referrals:
        content += tlv(_REFERRAL, b"".join(encode_string(u) for u in result.referrals))
    return content


@functools.lru_cache(maxsize=1024)
def _search_head(base: str, scope: int, deref: int, size_limit: int, time_limit: int,
                 types_only: bool) -> bytes:
    """The parts of a SearchRequest before its filter; the same for every login."""
    return (encode_string(base) + encode_integer(scope, ENUMERATED)
            + encode_integer(deref, ENUMERATED) + encode_integer(size_limit)
            + encode_integer(time_limit) + encode_boolean(types_only))


@functools.lru_cache(maxsize=256)
def _attribute_list(attributes: tuple[str, ...]) -> bytes:
    return tlv(SEQUENCE, b"".join(encode_string(a) for a in attributes))


def _encode_search(op: SearchRequest) -> bytes:
    return tlv(SEARCH_REQUEST, _search_head(
        op.base, op.scope, op.deref, op.size_limit, op.time_limit, op.types_only)
        + encode_filter(op.filter) + _attribute_list(op.attributes))


def _encode_bind(op: BindRequest) -> bytes:
    return tlv(BIND_REQUEST, encode_integer(op.version) + encode_string(op.name)
                + tlv(_SIMPLE_AUTH, op.password))


def _encode_bind_response(op: BindResponse) -> bytes:
    extra = tlv(_SASL_CREDS, op.sasl_credentials) if op.sasl_credentials is not None else b""
    return tlv(BIND_RESPONSE, _result_content(op.result) + extra)


def _encode_unbind(op: UnbindRequest) -> bytes:
    return bytes((UNBIND_REQUEST, 0))


def _encode_entry(op: SearchResultEntry) -> bytes:
    listed = b"".join(tlv(SEQUENCE, encode_string(name) + tlv(SET, b"".join(
        tlv(OCTET_STRING, v) for v in values))) for name, values in op.attributes)
    return tlv(SEARCH_ENTRY, encode_string(op.dn) + tlv(SEQUENCE, listed))


def _encode_reference(op: SearchResultReference) -> bytes:
    return tlv(SEARCH_REFERENCE, b"".join(encode_string(u) for u in op.uris))


def _encode_search_done(op: SearchResultDone) -> bytes:
    return tlv(SEARCH_DONE, _result_content(op.result))


def _encode_extended_request(op: ExtendedRequest) -> bytes:
    extra = tlv(_EXT_VALUE, op.value) if op.value is not None else b""
    return tlv(EXTENDED_REQUEST, encode_string(op.name, _EXT_NAME) + extra)


def _encode_extended_response(op: ExtendedResponse) -> bytes:
    content = _result_content(op.result)
    if op.name is not None:
        content += encode_string(op.name, _EXT_RESPONSE_NAME)
    if op.value is not None:
        content += tlv(_EXT_RESPONSE_VALUE, op.value)
    return tlv(EXTENDED_RESPONSE, content)


_OP_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    SearchRequest: _encode_search, BindRequest: _encode_bind,
    BindResponse: _encode_bind_response, UnbindRequest: _encode_unbind,
    SearchResultEntry: _encode_entry, SearchResultReference: _encode_reference,
    SearchResultDone: _encode_search_done, ExtendedRequest: _encode_extended_request,
    ExtendedResponse: _encode_extended_response,
}


def _encode_control(control: Control) -> bytes:
    content = encode_string(control.oid)
    if control.critical:
        content += encode_boolean(True)
    if control.value is not None:
        content += tlv(OCTET_STRING, control.value)
    return tlv(SEQUENCE, content)


def encode_message(message: LdapMessage) -> bytes:
    """An LDAPMessage (RFC 4511 section 4.1.1) ready for the wire."""
    content = encode_integer(message.message_id) + _OP_ENCODERS[type(message.op)](message.op)
    if message.controls:
        content += tlv(_CONTROLS, b"".join(_encode_control(c) for c in message.controls))
    return tlv(SEQUENCE, content)


def paged_results_control(size: int, cookie: bytes = b"") -> Control:
    """The simple paged results control asking for `size` entries per page (RFC 2696)."""
    return Control(PAGED_RESULTS_OID, False,
                   tlv(SEQUENCE, encode_integer(size) + tlv(OCTET_STRING, cookie)))


# -- decoding -------------------------------------------------------------------------------

def _result(data: bytes, start: int, stop: int) -> tuple[LdapResult, int]:
    """LDAPResult's components at start, and where they end (extensions may follow)."""
    s, e = expect(data, start, stop, ENUMERATED)
    code = int_value(data, s, e)
    s, e = expect(data, e, stop, OCTET_STRING)
    matched = text_value(data, s, e)
    s, e = expect(data, e, stop, OCTET_STRING)
    message = data[s:e].decode("utf-8", errors="replace")  # words for a log, not for logic
    referrals: tuple[str, ...] = ()
    if e < stop and data[e] == _REFERRAL:
        s, e = expect(data, e, stop, _REFERRAL)
        referrals = strings(data, s, e)
        if not referrals:
            raise LdapCodecError("empty referral")
    return LdapResult(code, matched, message, referrals), e


def _decode_bind_request(data: bytes, start: int, stop: int) -> BindRequest:
    s, e = expect(data, start, stop, INTEGER)
    version = int_value(data, s, e, 1, 127)
    s, e = expect(data, e, stop, OCTET_STRING)
    name = text_value(data, s, e)
    s, e = expect(data, e, stop, _SIMPLE_AUTH)
    done(e, stop, "a simple bind")
    return BindRequest(name, data[s:e], version)


def _decode_bind_response(data: bytes, start: int, stop: int) -> BindResponse:
    result, pos = _result(data, start, stop)
    credentials, pos = optional(data, pos, stop, _SASL_CREDS)
    done(pos, stop, "a bind response")
    return BindResponse(result, credentials)


def _decode_unbind(data: bytes, start: int, stop: int) -> UnbindRequest:
    done(start, stop, "an unbind request")
    return UnbindRequest()


def _decode_search_request(data: bytes, start: int, stop: int) -> SearchRequest:
    s, e = expect(data, start, stop, OCTET_STRING)
    base = text_value(data, s, e)
    numbers: list[int] = []
    for tag, high in ((ENUMERATED, 2), (ENUMERATED, 3), (INTEGER, MAX_INT), (INTEGER, MAX_INT)):
        s, e = expect(data, e, stop, tag)
        numbers.append(int_value(data, s, e, 0, high))
    s, e = expect(data, e, stop, BOOLEAN)
    types_only = bool_value(data, s, e)
    search_filter, e = decode_filter_at(data, e, stop)
    s, e = expect(data, e, stop, SEQUENCE)
    done(e, stop, "a search request")
    scope, deref, size_limit, time_limit = numbers
    return SearchRequest(base, scope, search_filter, strings(data, s, e), size_limit,
                         time_limit, types_only, deref)


def _decode_entry(data: bytes, start: int, stop: int) -> SearchResultEntry:
    s, e = expect(data, start, stop, OCTET_STRING)
    dn = text_value(data, s, e)
    pos, end = expect(data, e, stop, SEQUENCE)
    done(end, stop, "an entry")
    attributes: list[tuple[str, tuple[bytes, ...]]] = []
    while pos < end:
        s, pos = expect(data, pos, end, SEQUENCE)
        ns, ne = expect(data, s, pos, OCTET_STRING)
        vs, ve = expect(data, ne, pos, SET)
        done(ve, pos, "an attribute")
        values: list[bytes] = []
        while vs < ve:
            begin, vs = expect(data, vs, ve, OCTET_STRING)
            values.append(data[begin:vs])
        attributes.append((text_value(data, ns, ne), tuple(values)))
    return SearchResultEntry(dn, tuple(attributes))


def _decode_reference(data: bytes, start: int, stop: int) -> SearchResultReference:
    uris = strings(data, start, stop)
    if not uris:
        raise LdapCodecError("empty search result reference")
    return SearchResultReference(uris)


def _decode_search_done(data: bytes, start: int, stop: int) -> SearchResultDone:
    result, pos = _result(data, start, stop)
    done(pos, stop, "a search result done")
    return SearchResultDone(result)


def _decode_extended_request(data: bytes, start: int, stop: int) -> ExtendedRequest:
    s, e = expect(data, start, stop, _EXT_NAME)
    name = text_value(data, s, e)
    value, e = optional(data, e, stop, _EXT_VALUE)
    done(e, stop, "an extended request")
    return ExtendedRequest(name, value)


def _decode_extended_response(data: bytes, start: int, stop: int) -> ExtendedResponse:
    result, pos = _result(data, start, stop)
    raw_name, pos = optional(data, pos, stop, _EXT_RESPONSE_NAME)
    value, pos = optional(data, pos, stop, _EXT_RESPONSE_VALUE)
    done(pos, stop, "an extended response")
    name = text_value(raw_name, 0, len(raw_name)) if raw_name is not None else None
    return ExtendedResponse(result, name, value)


_OP_DECODERS: dict[int, Callable[[bytes, int, int], ProtocolOp]] = {
    BIND_REQUEST: _decode_bind_request, BIND_RESPONSE: _decode_bind_response,
    UNBIND_REQUEST: _decode_unbind, SEARCH_REQUEST: _decode_search_request,
    SEARCH_ENTRY: _decode_entry, SEARCH_REFERENCE: _decode_reference,
    SEARCH_DONE: _decode_search_done, EXTENDED_REQUEST: _decode_extended_request,
    EXTENDED_RESPONSE: _decode_extended_response,
}


def _decode_control(data: bytes, start: int, stop: int) -> Control:
    s, e = expect(data, start, stop, OCTET_STRING)
    oid = text_value(data, s, e)
    critical = False
    if e < stop and data[e] == BOOLEAN:
        s, e = expect(data, e, stop, BOOLEAN)
        critical = bool_value(data, s, e)
    value, e = optional(data, e, stop, OCTET_STRING)
    done(e, stop, "a control")
    return Control(oid, critical, value)


def _decode_controls(data: bytes, start: int, stop: int) -> tuple[Control, ...]:
    controls: list[Control] = []
    while start < stop:
        s, start = expect(data, start, stop, SEQUENCE)
        controls.append(_decode_control(data, s, start))
    return tuple(controls)


def message_length(data: bytes | bytearray, start: int, limit: int) -> int | None:
    """The size of the LDAPMessage at start, None while its header is incomplete.

    Raises LdapCodecError for a frame that is not a SEQUENCE, has an indefinite length, or
    would exceed `limit` octets: a stream reader can refuse it before buffering it.
    """
    available = len(data) - start
    if available < 2:
        return None
    if data[start] != SEQUENCE:
        raise LdapCodecError("an LDAPMessage is a SEQUENCE")
    first = data[start + 1]
    if first < 0x80:
        size = 2 + first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise LdapCodecError("bad message length octets")
        if available < 2 + count:
            return None
        size = 2 + count + int.from_bytes(data[start + 2:start + 2 + count], "big")
    if size > limit:
        raise LdapCodecError(f"message of {size} octets exceeds the limit of {limit}")
    return size


def decode_message(data: bytes, start: int = 0, stop: int | None = None) -> LdapMessage:
    """The one LDAPMessage that fills data[start:stop] exactly."""
    stop = len(data) if stop is None else stop
    pos, end = expect(data, start, stop, SEQUENCE)
    done(end, stop, "the message")
    s, pos = expect(data, pos, end, INTEGER)
    message_id = int_value(data, s, pos)
    tag, s, pos = header(data, pos, end)
    decoder = _OP_DECODERS.get(tag)
    if decoder is None:
        raise LdapCodecError(f"unsupported protocol operation 0x{tag:02x}")
    op = decoder(data, s, pos)
    controls: tuple[Control, ...] = ()
    if pos < end:
        s, pos = expect(data, pos, end, _CONTROLS)
        controls = _decode_controls(data, s, pos)
        done(pos, end, "the controls")
    return LdapMessage(message_id, op, controls)


def paged_cookie(controls: tuple[Control, ...]) -> bytes:
    """The cookie of a paged results response control (RFC 2696); b"" when the last page."""
    for control in controls:
        if control.oid == PAGED_RESULTS_OID and control.value is not None:
            value = control.value
            pos, end = expect(value, 0, len(value), SEQUENCE)
            done(end, len(value), "the paged results value")
            s, e = expect(value, pos, end, INTEGER)
            int_value(value, s, e)
            s, e = expect(value, e, end, OCTET_STRING)
            done(e, end, "the paged results value")
            return value[s:e]
    return b""
