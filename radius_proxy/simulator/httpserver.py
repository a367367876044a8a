"""A small HTTP/1.1 server on ``asyncio.Protocol``, enough for the simulator and nothing more.

Why not a framework: the simulator must start in well under a second and depend on nothing
outside the standard library. Why a protocol rather than asyncio streams: the benchmarks run
the simulator next to the proxy on the same two cores, and streams cost a coroutine step per
header line, a timer and a drain per request (more than the handler's own work); here a
request is parsed and answered inside the one callback that read it, and a connection has
one timer for its whole life.

What it supports (RFC 9112): origin-form targets, Content-Length bodies up to 64 KiB,
keep-alive (1.1 by default, 1.0 on request), pipelined requests (answered in order),
``Expect: 100-continue``. What it refuses cleanly, then closes: malformed request lines and
headers (400), chunked bodies (411), large bodies (413) and heads (431), other versions (505).
A connection that takes longer than the idle timeout to send its next request, or does not
read its answers for that long, is closed, so a silent client never pins one for ever.

The handler is a plain function from ``Request`` to ``Response``: the simulator's state is
in memory and never blocks, so there is nothing to await.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CONNECTIONS = 512
IDLE_TIMEOUT_SECONDS = 15.0
READ_BUFFER_BYTES = 64 * 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/\d\.\d")
#: The blank line ending a head; a CR before each LF is optional (RFC 9112 section 2.2).
_HEAD_END = re.compile(rb"\n\r*\n")
#: Blank lines before a request line, which RFC 9112 section 2.2 says to ignore.
_LEADING_BLANK = re.compile(rb"(?:\r*\n)+")
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request: header names lower-cased, ``path`` percent-decoded."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Response]


class BadRequest(Exception):
    """The peer sent something we will not parse; answered with ``status``, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _unquote_plus(text: str) -> str:
    """Form decoding of one name or value; skips the work when nothing is encoded."""
    if "%" in text or "+" in text:
        return unquote(text.replace("+", " "))
    return text


def parse_form(text: str) -> dict[str, str]:
    """A query string or form body to a dict, the first occurrence of a repeated name
    winning: what ``parse_qsl(text, keep_blank_values=True)`` gives, several times faster.

    Same result for every input (``&`` separators only, ``+`` is a space, malformed escapes
    kept, invalid UTF-8 replaced); it matters because start requests carry three fields.
    """
    result: dict[str, str] = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            result.setdefault(_unquote_plus(name), _unquote_plus(value))
    return result


def split_head(head: bytes) -> list[str]:
    """The head up to its blank line to lines without line ends (CR optional, latin-1)."""
    return [line.rstrip("\r") for line in head.decode("latin-1").split("\n")]


def parse_head(lines: list[str]) -> tuple[str, str, str, dict[str, str]]:
    """Request line and header lines to method, target, version, headers."""
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _VERSION.fullmatch(version):
        raise BadRequest(400, "malformed HTTP version")
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many header fields")
    headers = _parse_fields(lines)
    if version == "HTTP/1.1" and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 requires a Host header")
    return method, target, version, headers


def _parse_fields(lines: list[str]) -> dict[str, str]:
    """Header lines (after the request line) to a dict; repeated fields are comma-joined."""
    headers: dict[str, str] = {}
    for index in range(1, len(lines)):
        name, colon, value = lines[index].partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key == "content-length":
                if headers[key] != value:
                    raise BadRequest(400, "conflicting Content-Length")
                continue
            value = f"{headers[key]}, {value}"
        headers[key] = value
    return headers


def build_request(method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
    """Split the origin-form target into a decoded path and the query's first values."""
    if not target.startswith("/"):
        raise BadRequest(400, "only origin-form request targets are supported")
    if target.startswith("//") or "\t" in target:
        # the rare targets where urlsplit does more than split (authority, removed tabs)
        parts = urlsplit(target)
        path, query = parts.path, parts.query
    else:
        path, _, query = target.partition("#")[0].partition("?")
    return Request(method, target, unquote(path), parse_form(query), headers, body)


def body_length(headers: Mapping[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise BadRequest(411, "send the body with Content-Length, not Transfer-Encoding")
    text = headers.get("content-length", "0")
    if not text.isascii() or not text.isdigit():
        raise BadRequest(400, "malformed Content-Length")
    if len(text) > 12 or int(text) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    return int(text)


def wants_keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    connection = headers.get("connection")
    if connection is None:
        return version != "HTTP/1.0"
    tokens = {t.strip().lower() for t in connection.split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


def encode_response(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers) \
        if response.headers else ""
    head = (
        f"HTTP/1.1 {response.status} {_REASONS[response.status]}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body


class _Head(NamedTuple):
    """A parsed head whose body may still be arriving (a tuple: made once per request)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    length: int


class _Connection(asyncio.BufferedProtocol):
    """One client connection: bytes in, requests parsed and answered in arrival order.

    A buffered protocol because the plain one makes the transport ``recv`` 256 KiB at a
    time, and allocating that per read costs more than answering the request: here every
    read goes into one 64 KiB buffer the server shares (the loop reads one socket at a time).

    Flow control: while the transport's write buffer is full (the peer does not read its
    answers) reading pauses, so a pipelining client cannot make us buffer without bound.
    One timer per connection enforces the idle timeout; a request only moves a deadline.
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._skipped = 0  # blank bytes dropped before the current request line
        self._head: _Head | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._closing = False

    # -- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._server._admit(self):
            self._closing = True
            transport.close()
            return
        self._deadline = self._loop.time() + self._server.idle_timeout
        self._timer = self._loop.call_at(self._deadline, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(bytes(self._server._read_buffer[:nbytes]))

    def _feed(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer = self._buffer + data if self._buffer else data
        try:
            self._process()
        except BadRequest as error:
            self._refuse(error)

    def eof_received(self) -> bool:
        """The peer will send no more: a half-sent head is a 400, anything else just closes."""
        if not self._closing and self._head is None and self._buffer:
            self._refuse(BadRequest(400, "connection closed inside the request head"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server._forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._deadline = self._loop.time() + self._server.idle_timeout
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._closing or self._transport is None:
            return
        self._transport.resume_reading()
        self._deadline = self._loop.time() + self._server.idle_timeout
        self._feed(b"")

    # -- requests ------------------------------------------------------------------------
    def _process(self) -> None:
        """Answer every complete request in the buffer, in order, until one is incomplete."""
        while not self._closing and not self._write_paused:
            head = self._head or self._take_head()
            if head is None:
                return
            if len(self._buffer) < head.length:
                return
            body, self._buffer = self._buffer[: head.length], self._buffer[head.length :]
            self._head = None
            self._answer(build_request(head.method, head.target, head.headers, body), head)

    def _take_head(self) -> _Head | None:
        """Parse the next head out of the buffer; None while it is still incomplete."""
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[:1] in (b"\r", b"\n"):
            blank = _LEADING_BLANK.match(buffer)
            if blank is not None:
                self._skipped += blank.end()
                buffer = self._buffer = buffer[blank.end() :]
        end = _HEAD_END.search(buffer)
        size = self._skipped + (len(buffer) if end is None else end.end())
        if size > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        if end is None:
            return None
        self._buffer = buffer[end.end() :]
        self._skipped = 0
        method, target, version, headers = parse_head(split_head(buffer[: end.start()]))
        length = body_length(headers)
        if length and headers.get("expect", "").lower() == "100-continue":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._head = _Head(method, target, version, headers, length)
        return self._head

    def _answer(self, request: Request, head: _Head) -> None:
        keep_alive = wants_keep_alive(head.version, head.headers)
        response = self._server._respond(request)
        self._write(encode_response(response, keep_alive, request.method == "HEAD"))
        if keep_alive:
            self._deadline = self._loop.time() + self._server.idle_timeout
        else:
            self._close()

    def _refuse(self, error: BadRequest) -> None:
        response = Response(error.status, f"{error}\n".encode())
        self._write(encode_response(response, keep_alive=False))
        self._close()

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def _close(self) -> None:
        """Stop reading and close once the answers written so far have gone out (within
        one more idle timeout, after which ``_check_idle`` aborts)."""
        self._closing = True
        self._buffer = b""
        self._deadline = self._loop.time() + self._server.idle_timeout
        if self._transport is not None:
            self._transport.close()

    def _check_idle(self) -> None:
        """The timer: re-arm for a moved deadline, else close an idle connection, or drop
        one whose peer has not read its answers (or our closing flush) for a whole timeout."""
        transport = self._transport
        if transport is None or self._timer is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_idle)
        elif self._write_paused or transport.is_closing():
            self.abort()
        else:
            self._close()
            self._timer = self._loop.call_at(self._deadline, self._check_idle)

    def shut(self) -> None:
        """Close from the server side (server shutdown), flushing what was written."""
        if self._transport is not None and not self._transport.is_closing():
            self._close()

    def abort(self) -> None:
        """Close at once, dropping anything not yet sent."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Serves one handler on one listening socket; ``close()`` also drops open connections."""

    def __init__(self, handler: Handler, idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
        self._handler = handler
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._all_gone: asyncio.Future[None] | None = None
        self._read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close every connection and wait (1 s at most) until they are."""
        if self._server is None:
            return
        self._server.close()
        if self._connections:
            self._all_gone = asyncio.get_running_loop().create_future()
            for connection in list(self._connections):
                connection.shut()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_gone), 1.0)
            except TimeoutError:
                for connection in list(self._connections):
                    connection.abort()
        await self._server.wait_closed()

    def _admit(self, connection: _Connection) -> bool:
        if len(self._connections) >= MAX_CONNECTIONS:
            return False
        self._connections.add(connection)
        return True

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    def _respond(self, request: Request) -> Response:
        """Call the handler; a bug in it is a 500 for this request, never a dead server."""
        try:
            return self._handler(request)
        except Exception:
            _log.exception("simulator handler failed for %s %s", request.method, request.path)
            return Response(500, b"internal error\n")
