"""HTTP/1.1 for the ID-server client, without I/O: encode a request, parse one response.

Rules of this module (as h11 states its own): no sockets, no asyncio, no clock. Bytes and
values in; an `HttpResponse`, "need more bytes", or a `TransportError` out. The connection
code in `aio_transport.py` feeds it what the socket delivers.

Why our own rather than a library: each login makes two or more exchanges with the ID server
and 10,000 waiting logins poll thousands of times a second on the proxy's one event loop, so
the client's CPU per exchange is the proxy's throughput (docs/performance.md, "The wait at
scale"). We need a small subset: one request at a time per connection, no pipelining, no
upgrades, no content codings (we send no Accept-Encoding, so none may come back).

Strict and bounded, because the answer is read by a security component: a head over
`MAX_HEAD_BYTES` or `MAX_HEADERS`, a body over `MAX_BODY_BYTES`, conflicting framing
(RFC 9112 section 6.3: Content-Length with Transfer-Encoding, differing Content-Lengths),
obsolete line folding (section 5.2) or a malformed line is a `TransportError`, never a guess.
"""

from __future__ import annotations

import base64
import functools
import re
import urllib.parse
from collections.abc import Callable
from typing import NamedTuple

from radius_proxy.backends.secsign.transport import (
    MAX_BODY_BYTES,
    USER_AGENT,
    ErrorKind,
    HttpRequest,
    HttpResponse,
    TransportError,
)

#: The status line and header fields of a response (and of any 1xx before it), and trailers.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
#: A chunk-size line with its extensions (RFC 9112 section 7.1.1).
MAX_CHUNK_LINE = 1024
#: Interim (1xx) responses tolerated before the final one (RFC 9110 section 15.2).
MAX_INTERIM = 8

_URL = re.compile(r"(https?)://([^/?#]*)([^#]*)(?:#.*)?", re.IGNORECASE | re.DOTALL)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_FORM = "application/x-www-form-urlencoded"
_NO_BODY_STATUS = frozenset({204, 304})
_CONTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _garbage(what: str) -> TransportError:
    return TransportError(f"malformed HTTP answer: {what}", ErrorKind.GARBAGE)


def _too_large() -> TransportError:
    return TransportError(f"answer larger than {MAX_BODY_BYTES} bytes", ErrorKind.GARBAGE)


# -- requests -------------------------------------------------------------------------------
class Origin(NamedTuple):
    """Where connections go and may be reused (RFC 9110 section 4.3.1: scheme, host, port).

    A named tuple rather than a dataclass: it keys the connection pools, once per exchange,
    and a tuple hashes in C.
    """

    scheme: str
    host: str
    port: int
    host_header: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@functools.lru_cache(maxsize=64)
def origin_of(scheme: str, authority: str) -> Origin:
    """The origin of a URL's scheme and authority; cached, as there are only a few servers."""
    if "@" in authority:
        raise TransportError("credentials in the server URL are not supported", ErrorKind.OTHER)
    try:
        parts = urllib.parse.urlsplit(f"{scheme}://{authority}")
        host, explicit = parts.hostname, parts.port
    except ValueError:
        raise TransportError("invalid server URL", ErrorKind.OTHER) from None
    if not host or not host.isascii() or _BAD_TARGET.search(host):
        raise TransportError("invalid server URL", ErrorKind.OTHER)
    default = 443 if scheme == "https" else 80
    port = default if explicit is None else explicit
    shown = f"[{host}]" if ":" in host else host
    return Origin(scheme, host, port, shown if port == default else f"{shown}:{port}")


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request-target) of an absolute http(s) URL; the fragment is dropped."""
    match = _URL.fullmatch(url)
    if match is None:
        raise TransportError("not an http or https URL", ErrorKind.OTHER)
    scheme, authority, target = match.groups()
    if not target.startswith("/"):
        target = "/" + target
    return origin_of(scheme.lower(), authority), target


def basic_credentials(user: str, password: str) -> str:
    """RFC 7617 Basic credentials, Latin-1 like requests, UTF-8 when Latin-1 cannot hold them."""
    raw = f"{user}:{password}"
    try:
        octets = raw.encode("latin-1")
    except UnicodeEncodeError:
        octets = raw.encode("utf-8")
    return "Basic " + base64.b64encode(octets).decode("ascii")


@functools.lru_cache(maxsize=16)
def _fixed_fields(host_header: str, auth: tuple[str, str] | None) -> str:
    """The header lines every request to one origin as one account carries, computed once
    (there are a few servers and one PIN account, and this is per exchange)."""
    fields = (f"Host: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
              "Accept: application/json, text/plain\r\n")
    if auth:
        fields += f"Authorization: {basic_credentials(*auth)}\r\n"
    return fields


def encode_request(request: HttpRequest) -> tuple[Origin, bytes]:
    """The origin and the octets of a request, encoded as the requests-based transport did:
    query and form with `urllib.parse.urlencode`, the same User-Agent and Accept, Basic auth.

    A target with spaces or control characters is refused, so no request can carry a
    second request or header inside it (RFC 9112 section 3.2).
    """
    method = request.method
    if method not in _METHODS and not _TOKEN.fullmatch(method.encode("latin-1", "replace")):
        raise TransportError("invalid HTTP method", ErrorKind.OTHER)
    origin, target = split_url(request.url)
    if request.params:
        target += ("&" if "?" in target else "?") + urllib.parse.urlencode(request.params)
    if _BAD_TARGET.search(target):
        raise TransportError("invalid characters in the request URL", ErrorKind.OTHER)
    fields = _fixed_fields(origin.host_header, request.auth)
    body = b""
    if request.form is not None:
        body = urllib.parse.urlencode(request.form).encode("ascii")
        fields += f"Content-Type: {_FORM}\r\nContent-Length: {len(body)}\r\n"
    elif method in _CONTENT_METHODS:
        fields += "Content-Length: 0\r\n"
    return origin, f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode("ascii") + body


# -- responses ------------------------------------------------------------------------------
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*+"
_FIELD = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++:" + _VALUE + rb"\r\n"
#: A whole head in one pass: the status line (RFC 9112 section 4), then `token ":" OWS
#: field-value OWS CRLF` lines with values of HTAB, SP, VCHAR and obs-text only (section 5;
#: RFC 9110 section 5.5), so no whitespace before a colon, no obsolete folding (section
#: 5.2), no bare CR or LF; then the empty line. Possessive, so it never backtracks.
_HEAD = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: " + _VALUE + rb")?+\r\n(?:" + _FIELD
                   + rb")*+\r\n")
_TRAILER = re.compile(_FIELD)
#: The fields that frame a message or decide its connection's reuse (each line of a
#: validated head starts after a LF).
_FRAMING = re.compile(rb"\n((?i:content-length|transfer-encoding|connection)):([^\r]*)")
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
Framing = tuple[list[bytes], list[bytes], bool]


def _framing(fields: list[tuple[bytes, bytes]]) -> Framing:
    """(Content-Length values, transfer codings, `Connection: close`?), comma-split
    (RFC 9112 section 6.3)."""
    length: list[bytes] = []
    coding: list[bytes] = []
    close = False
    for name, value in fields:
        name = name.lower()
        if name == _CONTENT_LENGTH:
            length += value.split(b",")
        elif name == _TRANSFER_ENCODING:
            coding += value.lower().split(b",")
        elif b"close" in (value := value.lower()):
            close = close or b"close" in [t.strip(b" \t") for t in value.split(b",")]
    return length, coding, close


def _content_length(values: list[bytes]) -> int:
    """Content-Length; a repeated one must say the same everywhere (RFC 9112 section 6.3)."""
    length = values[0].strip(b" \t")
    if len(values) > 1 and any(value.strip(b" \t") != length for value in values):
        raise _garbage("conflicting Content-Length")
    if not _DIGITS.fullmatch(length):
        raise _garbage("invalid Content-Length")
    size = int(length)
    if size > MAX_BODY_BYTES:
        raise _too_large()
    return size


Step = Callable[[], bool]


class ResponseParser:
    """Parses the one response to one request; `feed` what arrives, `feed_eof` at the end.

    `feed` returns the `HttpResponse` once it is complete, else None. Afterwards
    `keep_alive` says whether the connection may carry another request: HTTP/1.1 without
    `Connection: close`, the body framed by length or chunks, and no byte beyond the
    response. An HTTP/1.0 answer is never reused (we would need its keep-alive dialect).
    """

    __slots__ = ("_body", "_buffer", "_head_bytes", "_head_only", "_interim", "_remaining",
                 "_result", "_scan", "_status", "_step", "keep_alive", "started")

    def __init__(self, head_only: bool = False) -> None:
        self._head_only = head_only
        self._buffer = bytearray()
        self._body = bytearray()
        self._scan = self._head_bytes = self._interim = self._remaining = self._status = 0
        self._step: Step = self._read_head
        self._result: HttpResponse | None = None
        self.keep_alive = False
        self.started = False

    def feed(self, data: bytes) -> HttpResponse | None:
        """Take the next bytes from the connection; the response once it is complete."""
        if self._result is not None:
            self.keep_alive = False  # bytes after the response: the connection is not ours
            return None
        self.started = self.started or bool(data)
        self._buffer += data
        while self._result is None and self._step():
            pass
        if self._result is not None and self._buffer:
            self.keep_alive = False
        return self._result

    def feed_eof(self) -> HttpResponse:
        """The server closed: the response if it was complete or delimited by the close."""
        if self._result is not None:
            return self._result
        if self._step == self._read_until_close:
            return self._finish(bytes(self._body), keep_alive=False)
        what = "mid-answer" if self.started else "before any answer"
        raise TransportError(f"connection closed {what}", ErrorKind.CLOSED)

    # -- the head ---------------------------------------------------------------------------
    def _read_head(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if self._head_bytes + len(buffer) > MAX_HEAD_BYTES:
                raise _garbage(f"head larger than {MAX_HEAD_BYTES} bytes")
            self._scan = max(0, len(buffer) - 3)
            return False
        end += 4
        self._head_bytes += end
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _garbage(f"head larger than {MAX_HEAD_BYTES} bytes")
        head = _HEAD.fullmatch(buffer, 0, end)
        if head is None:
            raise _garbage("malformed status line or header field")
        if buffer.count(b"\n", 0, end) > MAX_HEADERS + 2:
            raise _garbage(f"more than {MAX_HEADERS} header fields")
        http11, self._status = head[1] == b"1", int(head[2])  # read before the del below
        framing = None if self._status < 200 else _framing(_FRAMING.findall(buffer, 0, end))
        del buffer[:end]
        self._scan = 0
        if framing is None:
            return self._skip_interim(self._status)
        self._frame(http11, framing)
        return True

    def _skip_interim(self, status: int) -> bool:
        """1xx answers come before the final one (RFC 9110 section 15.2); we asked for no
        upgrade, so 101 is refused."""
        self._interim += 1
        if status == 101 or status < 100 or self._interim > MAX_INTERIM:
            raise _garbage("unexpected interim response")
        return True

    def _frame(self, http11: bool, framing: Framing) -> None:
        """Choose how the body ends, as RFC 9112 section 6.3 orders it."""
        length, coding, close = framing
        self.keep_alive = http11 and not close
        if self._head_only or self._status in _NO_BODY_STATUS:
            self._finish(b"", self.keep_alive)
        elif coding:
            self._step = self._chunked(http11, length, coding)
        elif length:
            self._remaining = _content_length(length)
            self._step = self._read_length
        else:
            self.keep_alive = False
            self._step = self._read_until_close

    def _chunked(self, http11: bool, length: list[bytes], coding: list[bytes]) -> Step:
        codings = [token.strip(b" \t") for token in coding]
        if length or not http11:
            raise _garbage("Transfer-Encoding with Content-Length or in HTTP/1.0")
        if codings != [b"chunked"]:
            raise _garbage("unsupported transfer coding")
        return self._read_chunk_size

    # -- bodies -----------------------------------------------------------------------------
    def _read_length(self) -> bool:
        buffer, remaining = self._buffer, self._remaining
        if len(buffer) < remaining:
            return False
        body = bytes(buffer[:remaining])
        del buffer[:remaining]
        self._finish(body, self.keep_alive)
        return True

    def _read_until_close(self) -> bool:
        self._take(len(self._buffer))
        return False

    def _take(self, size: int) -> None:
        if len(self._body) + size > MAX_BODY_BYTES:
            raise _too_large()
        self._body += self._buffer[:size]
        del self._buffer[:size]

    def _line(self, limit: int) -> bytes | None:
        """The next CRLF-terminated line (without it), or None when it has not all come."""
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > limit:
                raise _garbage("line too long")
            return None
        if end > limit:
            raise _garbage("line too long")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        return line

    def _read_chunk_size(self) -> bool:
        """RFC 9112 section 7.1: chunk-size [ chunk-ext ] CRLF; extensions are ignored."""
        line = self._line(MAX_CHUNK_LINE)
        if line is None:
            return False
        size = line.partition(b";")[0].rstrip(b" \t")
        if not _HEX.fullmatch(size):
            raise _garbage("invalid chunk size")
        self._remaining = int(size, 16)
        if len(self._body) + self._remaining > MAX_BODY_BYTES:
            raise _too_large()
        self._step = self._read_chunk_data if self._remaining else self._read_trailer
        return True

    def _read_chunk_data(self) -> bool:
        size = min(self._remaining, len(self._buffer))
        self._take(size)
        self._remaining -= size
        if self._remaining:
            return False
        self._step = self._read_chunk_end
        return True

    def _read_chunk_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise _garbage("chunk not followed by CRLF")
        del self._buffer[:2]
        self._step = self._read_chunk_size
        return True

    def _read_trailer(self) -> bool:
        """Trailer fields are read, checked and dropped (RFC 9112 section 7.1.2)."""
        line = self._line(MAX_HEAD_BYTES - self._head_bytes)
        if line is None:
            return False
        self._head_bytes += len(line) + 2
        if not line:
            self._finish(bytes(self._body), self.keep_alive)
            return True
        if _TRAILER.fullmatch(line + b"\r\n") is None:
            raise _garbage("malformed trailer field")
        return True

    def _finish(self, body: bytes, keep_alive: bool) -> HttpResponse:
        self.keep_alive = keep_alive
        self._result = HttpResponse(self._status, body)
        return self._result


__all__ = ["MAX_HEADERS", "MAX_HEAD_BYTES", "Origin", "ResponseParser", "encode_request",
           "split_url"]
