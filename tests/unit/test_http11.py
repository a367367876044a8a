"""The HTTP/1.1 request encoder and response parser (`http11.py`): no sockets, no loop.

Table-driven cases for each framing rule of RFC 9112 section 6.3 and each bound, and
properties: any bytes, cut anywhere, give a response or a `TransportError` (never another
exception, never a hang); a well-formed response parses to its body however it is cut.
"""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radius_proxy.backends.secsign.http11 import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ResponseParser,
    encode_request,
)
from radius_proxy.backends.secsign.transport import (
    MAX_BODY_BYTES,
    USER_AGENT,
    ErrorKind,
    HttpRequest,
    HttpResponse,
    TransportError,
)

FIXED = f"User-Agent: {USER_AGENT}\r\nAccept: application/json, text/plain\r\n"


def parse(*pieces: bytes, eof: bool = False, head_only: bool = False) -> ResponseParser:
    """A parser fed `pieces`; raises what the parser raises."""
    parser = ResponseParser(head_only)
    for piece in pieces:
        parser.feed(piece)
    if eof:
        parser.feed_eof()
    return parser


def response_of(data: bytes, eof: bool = False) -> tuple[HttpResponse, bool]:
    parser = ResponseParser()
    response = parser.feed(data)
    if response is None and eof:
        response = parser.feed_eof()
    assert response is not None, "the response is not complete"
    return response, parser.keep_alive


def garbage(data: bytes, eof: bool = False) -> TransportError:
    with pytest.raises(TransportError) as caught:
        parse(data, eof=eof)
    return caught.value


# -- requests ---------------------------------------------------------------------------------
def test_get_with_query_and_basic_auth() -> None:
    request = HttpRequest("GET", "https://id.example.com/rest/v2/AuthSession",
                          params=(("secsignid", "alice"), ("servicename", "VPN Login")),
                          auth=("radius-proxy", "pin"))
    origin, octets = encode_request(request)
    credentials = base64.b64encode(b"radius-proxy:pin").decode()
    assert (origin.host, origin.port, origin.tls) == ("id.example.com", 443, True)
    assert octets == (
        "GET /rest/v2/AuthSession?secsignid=alice&servicename=VPN+Login HTTP/1.1\r\n"
        f"Host: id.example.com\r\n{FIXED}Authorization: Basic {credentials}\r\n\r\n").encode()


def test_post_form_as_the_legacy_api_sends_it() -> None:
    request = HttpRequest("POST", "http://127.0.0.1:8080/",
                          form=(("request", "ReqRequestAuthSession"), ("servicename", "a b&c")))
    origin, octets = encode_request(request)
    body = b"request=ReqRequestAuthSession&servicename=a+b%26c"
    assert origin.host_header == "127.0.0.1:8080"
    assert octets == (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{FIXED}"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize(("method", "length"), [("POST", True), ("DELETE", False),
                                                ("GET", False)])
def test_content_length_zero_only_for_methods_with_content(method: str, length: bool) -> None:
    _, octets = encode_request(HttpRequest(method, "http://h/x"))
    assert (b"Content-Length: 0\r\n" in octets) is length


@pytest.mark.parametrize(("url", "host_header", "port"), [
    ("https://ID.Example.com/", "id.example.com", 443),
    ("https://id.example.com:443/", "id.example.com", 443),
    ("http://id.example.com:8080", "id.example.com:8080", 8080),
    ("https://[::1]:8443/x", "[::1]:8443", 8443),
])
def test_origin_and_host_header(url: str, host_header: str, port: int) -> None:
    origin, octets = encode_request(HttpRequest("GET", url))
    assert (origin.host_header, origin.port) == (host_header, port)
    assert f"\r\nHost: {host_header}\r\n".encode() in octets


def test_path_with_query_and_fragment() -> None:
    request = HttpRequest("GET", "http://h/p?a=1#frag", params=(("b", "2"),))
    assert encode_request(request)[1].startswith(b"GET /p?a=1&b=2 HTTP/1.1\r\n")


def test_credentials_outside_latin_1_are_sent_as_utf_8() -> None:
    _, octets = encode_request(HttpRequest("GET", "http://h/", auth=("ü", "€")))
    assert base64.b64encode("ü:€".encode()) in octets


@pytest.mark.parametrize("url", [
    "ftp://h/", "h/path", "http:///x", "http://user:pw@h/", "http://h:99999/",
    "http://h/a b", "http://h/a\r\nX-Injected: 1", "http://h/\u00e9",
])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(TransportError):
        encode_request(HttpRequest("GET", url))


def test_a_method_that_is_not_a_token_is_refused() -> None:
    with pytest.raises(TransportError):
        encode_request(HttpRequest("GET /x HTTP/1.1\r\n", "http://h/"))


def test_request_repr_hides_the_credentials() -> None:
    assert "pin" not in repr(HttpRequest("GET", "http://h/", auth=("account", "pin")))


# -- responses: framing -----------------------------------------------------------------------
def test_content_length_body_and_keep_alive() -> None:
    response, keep = response_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert response == HttpResponse(200, b"hello")
    assert keep


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: 1\r\n\r\n")
    response, keep = response_of(data)
    assert response.body == b"hello world"
    assert keep


def test_close_delimited_body_ends_at_eof_and_is_not_reused() -> None:
    response, keep = response_of(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", eof=True)
    assert response.body == b"until the end"
    assert not keep


@pytest.mark.parametrize(("data", "head_only"), [
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", False),
    (b"HTTP/1.1 304 Not Modified\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", True),
])
def test_answers_without_a_body(data: bytes, head_only: bool) -> None:
    parser = ResponseParser(head_only)
    assert parser.feed(data) == HttpResponse(int(data[9:12]), b"")
    assert parser.keep_alive


def test_interim_responses_are_skipped() -> None:
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert response_of(data)[0] == HttpResponse(200, b"ok")


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",  # bytes beyond it
])
def test_connections_that_must_not_be_reused(data: bytes) -> None:
    assert not response_of(data)[1]


def test_bytes_after_a_complete_response_spoil_the_connection() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") is not None
    assert parser.keep_alive
    assert parser.feed(b"x") is None
    assert not parser.keep_alive


def test_status_without_reason_phrase_and_same_content_length_twice() -> None:
    data = b"HTTP/1.1 500\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nno"
    assert response_of(data)[0] == HttpResponse(500, b"no")


def test_redirects_are_answers_like_any_other() -> None:
    data = b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n"
    assert response_of(data)[0].status == 302


# -- responses: refused -----------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    b"HELLO\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
])
def test_malformed_answers_are_garbage(data: bytes) -> None:
    assert garbage(data).kind is ErrorKind.GARBAGE


def test_too_many_header_fields() -> None:
    fields = b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
    assert "header fields" in str(garbage(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n"))


def test_head_larger_than_the_bound_without_its_end() -> None:
    assert "head larger" in str(garbage(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES))


def test_too_many_interim_responses() -> None:
    assert garbage(b"HTTP/1.1 100 Continue\r\n\r\n" * 20).kind is ErrorKind.GARBAGE


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY_BYTES + 1),
])
def test_bodies_over_the_bound_are_refused_from_the_head(data: bytes) -> None:
    assert "larger than" in str(garbage(data))


def test_close_delimited_body_over_the_bound() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    for _ in range(MAX_BODY_BYTES // 65536):
        parser.feed(b"x" * 65536)
    with pytest.raises(TransportError, match="larger than"):
        parser.feed(b"x")


@pytest.mark.parametrize(("data", "what"), [
    (b"", "before any answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Len", "mid-answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", "mid-answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "mid-answer"),
])
def test_eof_before_the_end_is_a_closed_connection(data: bytes, what: str) -> None:
    error = garbage(data, eof=True)
    assert error.kind is ErrorKind.CLOSED
    assert what in str(error)


# -- properties -------------------------------------------------------------------------------
def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=8))
def test_any_bytes_give_a_response_or_a_transport_error(data: bytes, points: list[int]) -> None:
    parser = ResponseParser()
    try:
        for piece in cut(data, points):
            parser.feed(piece)
        assert isinstance(parser.feed_eof(), HttpResponse)
    except TransportError:
        pass


PREFIX = st.sampled_from([
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 X\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
])


@settings(max_examples=300, deadline=None)
@given(PREFIX, st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=8))
def test_http_like_bytes_give_a_response_or_a_transport_error(
        prefix: bytes, rest: bytes, points: list[int]) -> None:
    parser = ResponseParser()
    try:
        for piece in cut(prefix + rest, points):
            parser.feed(piece)
        parser.feed_eof()
    except TransportError:
        pass


FIELD_NAME = st.text("abcdefghijklmnopqrstuvwxyzABC0123-", min_size=1, max_size=12) \
    .map(lambda name: "X-" + name)
FIELD_VALUE = st.text("".join(map(chr, range(0x20, 0x7f))), max_size=30).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)),
       st.binary(max_size=1000),
       st.sampled_from(["length", "chunked", "close"]),
       st.lists(st.tuples(FIELD_NAME, FIELD_VALUE), max_size=10),
       st.lists(st.integers(min_value=0), max_size=12))
def test_well_formed_responses_parse_however_they_are_cut(
        status: int, body: bytes, framing: str, fields: list[tuple[str, str]],
        points: list[int]) -> None:
    head = f"HTTP/1.1 {status} Reason\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    if framing == "length":
        data = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    elif framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in cut(body, points))
        data = f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"
    else:
        data = f"{head}\r\n".encode() + body
    parser = ResponseParser()
    responses = [parser.feed(piece) for piece in cut(data, points)]
    response = parser.feed_eof() if framing == "close" else responses[-1]
    assert response == HttpResponse(status, body)
    assert parser.keep_alive is (framing != "close")
