"""The LDAP codec (RFC 4511 BER) and the filter compiler (RFC 4515), without a server.

Tables pin the encodings and the RFC 4515 examples; ldap3 (pyasn1) serves as an independent
oracle for filter encodings. Property tests: every value round-trips through encode and
decode, any bytes give a value or `LdapCodecError` (never another exception), and a user
name, whatever it contains, stays the one assertion value of one equality.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radius_proxy.backends.ldap_ber import (
    PAGED_RESULTS_OID,
    STARTTLS_OID,
    BindRequest,
    BindResponse,
    Control,
    ExtendedRequest,
    ExtendedResponse,
    LdapMessage,
    LdapResult,
    SearchRequest,
    SearchResultDone,
    SearchResultEntry,
    SearchResultReference,
    UnbindRequest,
    decode_message,
    encode_message,
    message_length,
    paged_cookie,
    paged_results_control,
)
from radius_proxy.backends.ldap_filter import (
    MAX_FILTER_DEPTH,
    And,
    Approx,
    Equality,
    Extensible,
    Filter,
    GreaterOrEqual,
    LessOrEqual,
    Not,
    Or,
    Present,
    Substrings,
    compile_filter,
    decode_filter,
    encode_filter,
    escape_filter_value,
    render_filter,
)
from radius_proxy.backends.ldap_tlv import (
    MAX_INT,
    LdapCodecError,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER_FILTER = "(&(objectClass=user)(sAMAccountName={username}))"


# -- known encodings ---------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "encoded"), [
    (LdapMessage(1, BindRequest("cn=a", b"pw")),
     "3012 020101 600d 020103 0404636e3d61 80027077"),
    (LdapMessage(2, UnbindRequest()), "3005 020102 4200"),
    (LdapMessage(3, BindResponse(LdapResult(49, "", "bad"))),
     "300f 020103 610a 0a0131 0400 0403626164"),
    (LdapMessage(4, ExtendedRequest(STARTTLS_OID)),
     "301d 020104 7718 8016" + "312e332e362e312e342e312e313436362e3230303337"),
    (LdapMessage(5, SearchResultDone(LdapResult(0)), (Control("1.2", True, b"x"),)),
     "301b 020105 6507 0a0100 0400 0400 a00d 300b 0403312e32 0101ff 040178"),
    (LdapMessage(200, SearchResultEntry("cn=b", (("cn", (b"b", b"c")),))),
     "301c 020200c8 6416 0404636e3d62 300e 300c 0402636e 3106 040162 040163"),
])
def test_known_encodings(message: LdapMessage, encoded: str) -> None:
    wire = bytes.fromhex(encoded.replace(" ", ""))
    assert encode_message(message) == wire
    assert decode_message(wire) == message


def test_long_form_lengths_as_active_directory_sends_them() -> None:
    # AD writes every length in the four-octet long form: 30 84 00 00 00 0c ...
    wire = bytes.fromhex("3084000000100201076584000000070a01000400 0400".replace(" ", ""))
    assert decode_message(wire) == LdapMessage(7, SearchResultDone(LdapResult(0)))
    assert message_length(wire, 0, 1 << 22) == len(wire)


def test_a_long_value_uses_the_long_form() -> None:
    message = LdapMessage(1, BindRequest("cn=" + "x" * 300, b"p"))
    wire = encode_message(message)
    assert wire[1] == 0x82
    assert decode_message(wire) == message


def test_bind_request_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(BindRequest("cn=a", b"s3cret"))
    assert "s3cret" not in repr(LdapMessage(1, BindRequest("cn=a", b"s3cret")))


@pytest.mark.parametrize(("wire", "why"), [
    ("", "truncated"),
    ("30", "truncated"),
    ("3080020101420000 00", "indefinite"),
    ("3005 020101 4201", "longer than its container"),
    ("300602010142000000", "unexpected data"),
    ("3003020101", "truncated"),
    ("30050201014300", "unsupported protocol operation"),
    ("30050201ff4200", "out of range"),
    ("300a 0206 010000000000 4200", "integer of bad size"),
    ("3005 1f01 01 4200", "high tag"),
    ("300a 020101 4285 0000000000", "bad length"),
    ("300c 020101 6107 0a0100 0400 2400", "expected tag"),  # constructed string
    ("3011 020101 6507 0a0100 0400 0400 a003 3001 04", "truncated"),
    ("3007 020101 7302 0400 00", "unexpected data"),
])
def test_malformed_messages_are_codec_errors(wire: str, why: str) -> None:
    data = bytes.fromhex(wire.replace(" ", ""))
    with pytest.raises(LdapCodecError, match=why):
        decode_message(data)


def test_lengths_need_not_be_minimal_but_integers_must_fit() -> None:
    assert decode_message(bytes.fromhex("3006020200ff4200")).message_id == 255
    assert decode_message(bytes.fromhex("30060201014281 00")) == LdapMessage(1, UnbindRequest())
    with pytest.raises(LdapCodecError, match="out of range"):
        decode_message(bytes.fromhex("300802048000000042 00".replace(" ", "")))


def test_message_length_frames_and_refuses_oversized_messages() -> None:
    wire = encode_message(LdapMessage(1, UnbindRequest()))
    assert message_length(wire[:1], 0, 100) is None
    assert message_length(wire, 0, 100) == len(wire)
    assert message_length(b"xx" + wire, 2, 100) == len(wire)
    assert message_length(bytes.fromhex("3084"), 0, 100) is None
    with pytest.raises(LdapCodecError):
        message_length(bytes.fromhex("3084 7fffffff"), 0, 4 * 1024 * 1024)
    with pytest.raises(LdapCodecError):
        message_length(bytes.fromhex("3080"), 0, 100)
    with pytest.raises(LdapCodecError):
        message_length(bytes.fromhex("0400"), 0, 100)


def test_paged_results_cookie_round_trip() -> None:
    control = paged_results_control(500, b"\x01\x02cookie")
    assert control.oid == PAGED_RESULTS_OID
    assert paged_cookie((Control("1.2.3"), control)) == b"\x01\x02cookie"
    assert paged_cookie((paged_results_control(0, b""),)) == b""
    assert paged_cookie(()) == b""
    with pytest.raises(LdapCodecError):
        paged_cookie((Control(PAGED_RESULTS_OID, False, b"\x30\x01"),))


# -- filters -----------------------------------------------------------------------------------

RFC_4515_EXAMPLES: list[tuple[str, Filter]] = [
    ("(cn=Babs Jensen)", Equality("cn", b"Babs Jensen")),
    ("(!(cn=Tim Howes))", Not(Equality("cn", b"Tim Howes"))),
    ("(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
     And((Equality("objectClass", b"Person"),
          Or((Equality("sn", b"Jensen"), Substrings("cn", b"Babs J", (), None)))))),
    ("(o=univ*of*mich*)", Substrings("o", b"univ", (b"of", b"mich"), None)),
    ("(seeAlso=)", Equality("seeAlso", b"")),
    ("(cn:caseExactMatch:=Fred Flintstone)",
     Extensible("caseExactMatch", "cn", b"Fred Flintstone")),
    ("(cn:=Betty Rubble)", Extensible(None, "cn", b"Betty Rubble")),
    ("(sn:dn:2.4.6.8.10:=Barney Rubble)", Extensible("2.4.6.8.10", "sn", b"Barney Rubble", True)),
    ("(o:dn:=Ace Industry)", Extensible(None, "o", b"Ace Industry", True)),
    ("(:1.2.3:=Wilma Flintstone)", Extensible("1.2.3", None, b"Wilma Flintstone")),
    ("(:DN:2.4.6.8.10:=Dino)", Extensible("2.4.6.8.10", None, b"Dino", True)),
    ("(o=Parens R Us \\28for all your parenthetical needs\\29)",
     Equality("o", b"Parens R Us (for all your parenthetical needs)")),
    ("(cn=*\\2A*)", Substrings("cn", None, (b"*",), None)),
    ("(filename=C:\\5cMyFile)", Equality("filename", b"C:\\MyFile")),
    ("(bin=\\00\\00\\00\\04)", Equality("bin", b"\x00\x00\x00\x04")),
    ("(sn=Lu\\c4\\8di\\c4\\87)", Equality("sn", "Lu\u010di\u0107".encode())),
    ("(1.3.6.1.4.1.1466.0=\\04\\02\\48\\69)", Equality("1.3.6.1.4.1.1466.0", b"\x04\x02Hi")),
    # and the rest of the grammar
    ("(cn=*)", Present("cn")),
    ("(cn;lang-de=x)", Equality("cn;lang-de", b"x")),
    ("(age>=18)", GreaterOrEqual("age", b"18")),
    ("(age<=65)", LessOrEqual("age", b"65")),
    ("(sn~=Jenson)", Approx("sn", b"Jenson")),
    ("(cn=*end)", Substrings("cn", None, (), b"end")),
    ("(cn=j\u00fcrgen)", Equality("cn", "j\u00fcrgen".encode())),
    ("(member:1.2.840.113556.1.4.1941:=CN=alice\\2cOU=x)",
     Extensible("1.2.840.113556.1.4.1941", "member", b"CN=alice,OU=x")),
]


@pytest.mark.parametrize(("text", "expected"), RFC_4515_EXAMPLES)
def test_rfc_4515_examples_compile(text: str, expected: Filter) -> None:
    assert compile_filter(text) == expected
    assert compile_filter(render_filter(expected)) == expected
    assert decode_filter(encode_filter(expected)) == expected


def _ldap3_encoding(text: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ldap3.operation.search import compile_filter as ldap3_compile
        from ldap3.operation.search import parse_filter
        from pyasn1.codec.ber import encoder
    parsed = parse_filter(text, None, False, False, None, False)
    encoded: bytes = encoder.encode(ldap3_compile(parsed.elements[0]))
    return encoded


@pytest.mark.parametrize("text", [
    "(cn=Babs Jensen)",
    "(!(cn=Tim Howes))",
    "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
    "(o=univ*of*mich*)",
    "(cn=*)",
    "(age>=18)",
    "(age<=65)",
    "(sn~=Jenson)",
    "(member:1.2.840.113556.1.4.1941:=CN=alice\\2cOU=x)",
    USER_FILTER.replace("{username}", escape_filter_value("a*b(c)\\\x00")),
])
def test_filter_encoding_matches_ldap3(text: str) -> None:
    assert encode_filter(compile_filter(text)) == _ldap3_encoding(text)


@pytest.mark.parametrize("text", [
    "", "cn=x", "(cn=x", "(cn=x))", "((cn=x))", "(&)", "(|)", "(!)", "(!(a=b)(c=d))",
    "(cn=a\\2)", "(cn=a\\zz)", "(cn=a\\*)", "(cn=a(b)", "(cn~=*)", "(cn>=a*)", "(=x)",
    "(c n=x)", "(cn=**)", "(cn=a**b)", "(:=x)", "(:dn:=x)", "(cn:1.2:3.4:=x)", "(cn:=a*)",
    "(cn=x\x00)", "(-cn=x)", "(cn;=x)", "(1.2=x)(", "(& (cn=x))",
    "(!" * MAX_FILTER_DEPTH + "(cn=x)" + ")" * MAX_FILTER_DEPTH,
    "(cn=" + "x" * 20000 + ")",
])
def test_bad_filters_are_refused(text: str) -> None:
    with pytest.raises(LdapCodecError):
        compile_filter(text)


def test_escape_filter_value_leaves_plain_names_and_escapes_the_rest() -> None:
    assert escape_filter_value("alice") == "alice"
    assert escape_filter_value("a.b-c_d") == "a.b-c_d"
    assert escape_filter_value("a*b(c)d\\e\x00") == "a\\2ab\\28c\\29d\\5ce\\00"
    assert escape_filter_value("j\u00fcrgen") == "j\\c3\\bcrgen"


def test_deeply_nested_ber_filters_are_refused() -> None:
    inner: Filter = Equality("cn", b"x")
    for _ in range(MAX_FILTER_DEPTH):
        inner = Not(inner)
    with pytest.raises(LdapCodecError):
        decode_filter(encode_filter(inner))


# -- properties --------------------------------------------------------------------------------

texts = st.text(max_size=20)
octets = st.binary(max_size=40)
attribute_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,12}(;[A-Za-z0-9-]{1,6}){0,2}\Z") | \
    st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){1,4}\Z")
rule_names = attribute_names.filter(lambda name: ";" not in name and name.lower() != "dn")
nonempty = st.binary(min_size=1, max_size=20)


@st.composite
def substrings(draw: Any) -> Substrings:
    initial = draw(st.none() | nonempty)
    middle = tuple(draw(st.lists(nonempty, max_size=3)))
    final = draw(st.none() | nonempty)
    if initial is None and not middle and final is None:
        final = b"x"
    return Substrings(draw(attribute_names), initial, middle, final)


@st.composite
def extensibles(draw: Any) -> Extensible:
    rule = draw(st.none() | rule_names)
    attribute = draw(attribute_names) if rule is None else draw(st.none() | attribute_names)
    return Extensible(rule, attribute, draw(octets), draw(st.booleans()))


leaves = st.one_of(
    st.builds(Equality, attribute_names, octets),
    st.builds(GreaterOrEqual, attribute_names, octets),
    st.builds(LessOrEqual, attribute_names, octets),
    st.builds(Approx, attribute_names, octets),
    st.builds(Present, attribute_names),
    substrings(),
    extensibles(),
)


def _depth(value: Filter) -> int:
    if isinstance(value, And | Or):
        return 1 + max(_depth(f) for f in value.filters)
    if isinstance(value, Not):
        return 1 + _depth(value.filter)
    return 1


filters = st.recursive(leaves, lambda children: st.one_of(
    st.lists(children, min_size=1, max_size=4).map(lambda fs: And(tuple(fs))),
    st.lists(children, min_size=1, max_size=4).map(lambda fs: Or(tuple(fs))),
    children.map(Not),
), max_leaves=12).filter(lambda f: _depth(f) <= MAX_FILTER_DEPTH)

results = st.builds(LdapResult, st.integers(0, MAX_INT), texts, texts,
                    st.lists(texts, max_size=2).map(tuple))
ops = st.one_of(
    st.builds(BindRequest, texts, octets, st.integers(1, 127)),
    st.builds(BindResponse, results, st.none() | octets),
    st.just(UnbindRequest()),
    st.builds(SearchRequest, texts, st.integers(0, 2), filters,
              st.lists(texts, max_size=4).map(tuple), st.integers(0, MAX_INT),
              st.integers(0, MAX_INT), st.booleans(), st.integers(0, 3)),
    st.builds(SearchResultEntry, texts, st.lists(st.tuples(
        texts, st.lists(octets, max_size=3).map(tuple)), max_size=4).map(tuple)),
    st.builds(SearchResultReference, st.lists(texts, min_size=1, max_size=3).map(tuple)),
    st.builds(SearchResultDone, results),
    st.builds(ExtendedRequest, texts, st.none() | octets),
    st.builds(ExtendedResponse, results, st.none() | texts, st.none() | octets),
)
messages = st.builds(LdapMessage, st.integers(0, MAX_INT), ops, st.lists(
    st.builds(Control, texts, st.booleans(), st.none() | octets), max_size=2).map(tuple))


@FAST
@given(messages)
def test_every_message_round_trips(message: LdapMessage) -> None:
    wire = encode_message(message)
    assert message_length(wire, 0, len(wire)) == len(wire)
    assert decode_message(wire) == message


@FAST
@given(filters)
def test_every_filter_round_trips_as_ber_and_as_text(value: Filter) -> None:
    assert decode_filter(encode_filter(value)) == value
    assert compile_filter(render_filter(value)) == value


def _total(decode: Any, data: Any) -> None:
    """decode(data) gives a value or LdapCodecError; anything else fails the test."""
    with contextlib.suppress(LdapCodecError):
        decode(data)


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_message_or_a_codec_error(data: bytes) -> None:
    _total(decode_message, data)
    _total(decode_filter, data)
    _total(lambda d: message_length(d, 0, 100), data)
    _total(lambda d: paged_cookie((Control(PAGED_RESULTS_OID, False, d),)), data)


@FAST
@given(st.integers(0, MAX_INT), st.sampled_from([0x60, 0x61, 0x63, 0x64, 0x65, 0x73, 0x77, 0x78]),
       st.binary(max_size=120))
def test_framed_garbage_reaches_every_operation_decoder_safely(message_id: int, tag: int,
                                                               body: bytes) -> None:
    inner = bytes((0x02, 4)) + message_id.to_bytes(4, "big") + bytes((tag, len(body))) + body
    _total(decode_message, bytes((0x30, len(inner))) + inner)


@FAST
@given(messages, st.data())
def test_mutated_messages_decode_or_fail_cleanly(message: LdapMessage, data: Any) -> None:
    wire = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 4))):
        if not wire:
            break
        position = data.draw(st.integers(0, len(wire) - 1))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            wire[position] ^= data.draw(st.integers(1, 255))
        elif action == "drop":
            del wire[position]
        else:
            wire.insert(position, data.draw(st.integers(0, 255)))
    _total(decode_message, bytes(wire))


@FAST
@given(st.text(max_size=300))
def test_any_text_compiles_to_a_filter_or_a_codec_error(text: str) -> None:
    _total(compile_filter, "(" + text + ")")
    _total(compile_filter, text)


@FAST
@given(st.text(max_size=100))
def test_hostile_user_names_stay_one_equality(name: str) -> None:
    compiled = compile_filter(USER_FILTER.replace("{username}", escape_filter_value(name)))
    assert compiled == And((Equality("objectClass", b"user"),
                            Equality("sAMAccountName", name.encode("utf-8"))))


@pytest.mark.parametrize("name", ["*", ")(sAMAccountName=*", "*)(|(sAMAccountName=*",
                                  "alice)(|(objectClass=*", "\\2a", "\x00", "a\\", "(", ")"])
def test_injection_attempts_stay_one_equality(name: str) -> None:
    compiled = compile_filter(USER_FILTER.replace("{username}", escape_filter_value(name)))
    assert compiled == And((Equality("objectClass", b"user"),
                            Equality("sAMAccountName", name.encode())))
