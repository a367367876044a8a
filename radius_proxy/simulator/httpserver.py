"""A small HTTP/1.1 server on asyncio streams, enough for the simulator and nothing more.

Why not a framework: the simulator must start in well under a second and depend on nothing
outside the standard library. What it supports (RFC 9112): origin-form targets, Content-Length
bodies up to 64 KiB, keep-alive (1.1 by default, 1.0 on request), ``Expect: 100-continue``.
What it refuses cleanly: malformed request lines and headers (400), chunked bodies (411),
large bodies (413) and heads (431), other versions (505). Idle or slow connections are closed
after a timeout, so a silent client can never pin a connection for ever.

The handler is a plain function from ``Request`` to ``Response``: the simulator's state is
in memory and never blocks, so there is nothing to await.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CONNECTIONS = 512
IDLE_TIMEOUT_SECONDS = 15.0

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """A parsed request: header names lower-cased, ``path`` percent-decoded."""

    method: str
    target: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
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


def first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Form or query pairs to a dict; the first occurrence of a repeated key wins."""
    result: dict[str, str] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def parse_head(lines: list[bytes]) -> tuple[str, str, str, dict[str, str]]:
    """Request line and header lines (without CRLF) to method, target, version, headers."""
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not re.fullmatch(r"HTTP/\d\.\d", version):
        raise BadRequest(400, "malformed HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many header fields")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length" and key in headers and headers[key] != value:
            raise BadRequest(400, "conflicting Content-Length")
        joins = key in headers and key != "content-length"
        headers[key] = f"{headers[key]}, {value}" if joins else value
    if version == "HTTP/1.1" and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 requires a Host header")
    return method, target, version, headers


def build_request(method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
    if not target.startswith("/"):
        raise BadRequest(400, "only origin-form request targets are supported")
    parts = urlsplit(target)
    query = first_values(parse_qsl(parts.query, keep_blank_values=True))
    return Request(method, target, unquote(parts.path), query, headers, body)


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
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


def encode_response(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class HttpServer:
    """Serves one handler on one listening socket; ``close()`` also drops open connections."""

    def __init__(self, handler: Handler, idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
        self._handler = handler
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, limit=MAX_HEAD_BYTES)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels us. Ending "cancelled" would make asyncio's stream callback
            # (Python 3.11) log a spurious traceback, so end normally instead.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request after another until the peer closes, asks to close, or idles out."""
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    lines = await self._read_head(reader)
                    if lines is None:
                        return
                    method, target, version, headers = parse_head(lines)
                    length = body_length(headers)
                    if headers.get("expect", "").lower() == "100-continue" and length:
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    body = await reader.readexactly(length)
                request = build_request(method, target, headers, body)
            except BadRequest as error:
                response = Response(error.status, f"{error}\n".encode())
                await self._send(writer, encode_response(response, keep_alive=False))
                return
            keep_alive = wants_keep_alive(version, headers)
            response = self._respond(request)
            await self._send(writer, encode_response(response, keep_alive, method == "HEAD"))
            if not keep_alive:
                return

    async def _read_head(self, reader: asyncio.StreamReader) -> list[bytes] | None:
        """Lines up to the blank line, CR optional; None when the peer closed between requests."""
        lines: list[bytes] = []
        total = 0
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raise BadRequest(431, "request head too large") from None
            total += len(line)
            if total > MAX_HEAD_BYTES:
                raise BadRequest(431, "request head too large")
            if not line.endswith(b"\n"):
                if lines or line:
                    raise BadRequest(400, "connection closed inside the request head")
                return None
            stripped = line.rstrip(b"\r\n")
            if stripped:
                lines.append(stripped)
            elif lines:
                return lines

    def _respond(self, request: Request) -> Response:
        """Call the handler; a bug in it is a 500 for this request, never a dead server."""
        try:
            return self._handler(request)
        except Exception:
            _log.exception("simulator handler failed for %s %s", request.method, request.path)
            return Response(500, b"internal error\n")

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self._idle_timeout):
            await writer.drain()
