"""An LDAP connection on the event loop: frames, multiplexing, TLS, timeouts.

One `LdapConnection` is an `asyncio.Protocol` (cheaper per message than streams: no reader
task, no StreamReader buffer) over ldap:// or ldaps://, optionally upgraded with StartTLS
(RFC 4511 section 4.14, `loop.start_tls`). Certificates and host names are verified by the
`ssl.SSLContext` the caller passes. Messages are framed from the byte stream by their BER
length and handed to the operation waiting for their message ID, so many operations can be
in flight on one connection at once (RFC 4511 section 4.1.1.1) without a lock.

Failure is total and clean: a message over `max_message_size`, bytes the codec refuses, a
response of the wrong kind, a notice of disconnection (section 4.4.1), an operation without
an answer within the timeout, or a lost connection each end the connection and fail every
pending operation with `LdapConnectionError`. A hostile server can make us hold at most one
message and `max_entries` entries and references together per search.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from radius_proxy.backends.ldap_ber import (
    STARTTLS_OID,
    BindRequest,
    BindResponse,
    Control,
    ExtendedRequest,
    ExtendedResponse,
    LdapMessage,
    LdapResult,
    ProtocolOp,
    SearchRequest,
    SearchResultDone,
    SearchResultEntry,
    SearchResultReference,
    UnbindRequest,
    decode_message,
    encode_message,
    message_length,
)
from radius_proxy.backends.ldap_tlv import MAX_INT, LdapCodecError
from radius_proxy.eager import Deadline
from radius_proxy.errors import BackendError

#: No message we expect comes near this; a bigger one is a hostile or broken server.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Entries and references one search may return before the connection is given up.
MAX_ENTRIES = 10_000


class LdapConnectionError(BackendError):
    """The connection failed, was closed, timed out, or the server broke the protocol."""


class LdapTimeout(LdapConnectionError):
    """An operation had no answer within the timeout; the connection was closed."""


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where a URL points: host, port, and whether TLS starts at connect (ldaps://)."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        """ldap://host[:port] (389) or ldaps://host[:port] (636); ValueError otherwise."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"{url!r} is not ldap://host or ldaps://host")
        port = parts.port or (636 if scheme == "ldaps" else 389)
        return cls(url, parts.hostname, port, scheme == "ldaps")


@dataclass(slots=True)
class SearchResult:
    """What a search returned: its done message, the entries and references before it."""

    done: LdapResult
    entries: list[SearchResultEntry]
    references: list[SearchResultReference]
    controls: tuple[Control, ...] = ()


@dataclass(slots=True)
class _Pending:
    """One operation in flight: who waits, what answer ends it, what arrived so far."""

    message_id: int
    future: asyncio.Future[LdapMessage]
    final: type
    expires: float
    entries: list[SearchResultEntry] = field(default_factory=list)
    references: list[SearchResultReference] = field(default_factory=list)


class LdapConnection(asyncio.Protocol):
    """One connection to one directory server; operations are coroutines."""

    def __init__(self, address: ServerAddress, timeout: float,
                 max_message_size: int = MAX_MESSAGE_SIZE, max_entries: int = MAX_ENTRIES
                 ) -> None:
        self.address = address
        self._timeout = timeout
        self._max_message = max_message_size
        self._max_entries = max_entries
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._need = 0  # the size of the incomplete message in the buffer, when known
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._error: LdapConnectionError | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._corked: list[bytes] = []
        self._binding = False
        #: Called once when the connection ends, whatever ended it.
        self.on_lost: Callable[[LdapConnection], None] | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection failed or was closed: it takes no more operations."""
        return self._error is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def tls(self) -> bool:
        """Whether the bytes are encrypted (ldaps://, or after StartTLS)."""
        transport = self._transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        """Frame complete messages, dispatch each, keep the rest for the next read."""
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return  # a large message still arriving: no copying until it is complete
            data = bytes(self._buffer)
            self._buffer.clear()
        pos, end = 0, len(data)
        try:
            while pos < end and self._error is None:
                size = message_length(data, pos, self._max_message)
                if size is None or size > end - pos:
                    self._need = size or 0
                    break
                self._dispatch(decode_message(data, pos, pos + size))
                pos += size
        except LdapCodecError as exc:
            self._fail(LdapConnectionError(f"protocol error from {self.address.url}: {exc}"))
            return
        if pos < end and self._error is None:
            self._buffer += data[pos:] if pos else data

    def eof_received(self) -> bool:
        self._fail(LdapConnectionError(f"{self.address.url} closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self._fail(LdapConnectionError(f"connection to {self.address.url} lost{detail}"))

    # -- operations -------------------------------------------------------------------------

    async def bind(self, dn: str, password: bytes) -> LdapResult:
        """A simple bind (RFC 4511 section 4.2); the result, whatever its code.

        A bind must be alone on its connection (section 4.2.1: no other operation may be
        outstanding, none sent until it is answered); breaking that rule is a bug here.
        """
        if self._pending:
            raise RuntimeError("a bind must be the only operation on its connection")
        self._binding = True
        try:
            message = await self._exchange(BindRequest(dn, password), BindResponse)
        finally:
            self._binding = False
        assert isinstance(message.op, BindResponse)
        return message.op.result

    async def search(self, request: SearchRequest,
                     controls: tuple[Control, ...] = ()) -> SearchResult:
        """A search; every entry and reference up to its SearchResultDone."""
        pending = self._send(request, SearchResultDone, controls)
        message = await self._wait(pending)
        assert isinstance(message.op, SearchResultDone)
        return SearchResult(message.op.result, pending.entries, pending.references,
                            message.controls)

    async def extended(self, name: str, value: bytes | None = None) -> ExtendedResponse:
        message = await self._exchange(ExtendedRequest(name, value), ExtendedResponse)
        assert isinstance(message.op, ExtendedResponse)
        return message.op

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """StartTLS (RFC 4511 section 4.14): ask, then handshake on the same connection."""
        response = await self.extended(STARTTLS_OID)
        if response.result.code != 0:
            raise LdapConnectionError(f"StartTLS refused by {self.address.url}: "
                                      f"{response.result.code} {response.result.message}")
        assert self._transport is not None
        transport = await self._loop.start_tls(self._transport, self, context,
                                               server_hostname=self.address.host,
                                               ssl_handshake_timeout=self._timeout)
        if transport is None:
            raise LdapConnectionError(f"StartTLS with {self.address.url} failed")
        self._transport = transport

    def close(self) -> None:
        """Unbind (RFC 4511 section 4.3) and close; pending operations fail.

        Over TLS the socket is closed without waiting for the server's close_notify: the
        unbind already said goodbye, and a loop that ends right after must not be left
        with a half-closed TLS transport (and an open socket).
        """
        if self._transport is not None and self._error is None:
            tls = self.tls
            self._transport.write(encode_message(LdapMessage(self._take_id(), UnbindRequest())))
            if tls:
                self._transport.abort()
            else:
                self._transport.close()
        self._fail(LdapConnectionError(f"connection to {self.address.url} closed"))

    def abort(self) -> None:
        """Close at once, without an unbind or a TLS close_notify."""
        if self._transport is not None:
            self._transport.abort()
        self._fail(LdapConnectionError(f"connection to {self.address.url} aborted"))

    # -- internals --------------------------------------------------------------------------

    async def _exchange(self, op: ProtocolOp, final: type) -> LdapMessage:
        return await self._wait(self._send(op, final, ()))

    def _send(self, op: ProtocolOp, final: type, controls: tuple[Control, ...]) -> _Pending:
        if self._error is not None:
            raise LdapConnectionError(str(self._error))
        if self._binding and final is not BindResponse:
            raise RuntimeError("no operation may be sent while a bind is outstanding")
        assert self._transport is not None
        message_id = self._take_id()
        expires = self._loop.time() + self._timeout
        pending = _Pending(message_id, self._loop.create_future(), final, expires)
        data = encode_message(LdapMessage(message_id, op, controls))
        if not self._pending:
            self._transport.write(data)
        elif self._corked:
            self._corked.append(data)
        else:  # others in flight: requests made in this loop iteration leave in one send
            self._corked.append(data)
            self._loop.call_soon(self._flush)
        self._pending[message_id] = pending
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(expires, self._check_expiry)
        return pending

    def _flush(self) -> None:
        corked, self._corked = self._corked, []
        if self._error is None and self._transport is not None:
            self._transport.write(b"".join(corked))

    async def _wait(self, pending: _Pending) -> LdapMessage:
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._pending.pop(pending.message_id, None)  # a late answer is then ignored
            raise

    def _check_expiry(self) -> None:
        """One timer per connection, not one per operation (this is on every login's path):
        it fires at the oldest operation's expiry and re-arms for the next one."""
        self._watchdog = None
        if not self._pending:
            return
        earliest = min(p.expires for p in self._pending.values())
        if earliest <= self._loop.time():
            self._fail(LdapTimeout(f"no answer from {self.address.url} within "
                                   f"{self._timeout:g} s"))
        else:
            self._watchdog = self._loop.call_at(earliest, self._check_expiry)

    def _take_id(self) -> int:
        message_id = self._next_id
        self._next_id = message_id % MAX_INT + 1  # message IDs are 1..maxInt (RFC 4511)
        return message_id

    def _dispatch(self, message: LdapMessage) -> None:
        pending = self._pending.get(message.message_id)
        if pending is None:
            if message.message_id == 0:  # unsolicited notification (RFC 4511 section 4.4)
                self._fail(LdapConnectionError(f"{self.address.url} sent a notice of "
                                               "disconnection"))
            return  # the answer to an operation given up on
        op = message.op
        if type(op) is pending.final:
            del self._pending[message.message_id]
            if not pending.future.done():
                pending.future.set_result(message)
        elif isinstance(op, SearchResultEntry | SearchResultReference) and \
                pending.final is SearchResultDone:
            if isinstance(op, SearchResultEntry):
                pending.entries.append(op)
            else:
                pending.references.append(op)
            if len(pending.entries) + len(pending.references) > self._max_entries:
                self._fail(LdapConnectionError(f"{self.address.url} sent more than "
                                               f"{self._max_entries} entries and references"))
        else:
            self._fail(LdapConnectionError(f"{self.address.url} answered with "
                                           f"{type(op).__name__}"))

    def _fail(self, error: LdapConnectionError) -> None:
        """End the connection: every pending operation fails with error."""
        if self._error is None:
            self._error = error
            if self._transport is not None and not self._transport.is_closing():
                self._transport.abort()
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            if self.on_lost is not None:
                self.on_lost(self)
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            if not waiting.future.done():
                waiting.future.set_exception(type(error)(str(error)))


async def connect(address: ServerAddress, context: ssl.SSLContext, start_tls: bool,
                  seconds: float) -> LdapConnection:
    """A connection to address, TLS as asked, within `seconds`; LdapConnectionError if not.

    `seconds` bounds the connect and the handshakes together (a `Deadline`, which needs no
    current Task: the server may call this from a request's first, Task-less step), and
    becomes the connection's timeout per operation. The connection comes back anonymous.
    """
    conn = LdapConnection(address, seconds)
    try:
        await Deadline(_establish(conn, context, start_tls, seconds), seconds)
    except (OSError, TimeoutError, LdapConnectionError) as exc:
        conn.abort()
        if isinstance(exc, LdapConnectionError):
            raise
        raise LdapConnectionError(f"cannot connect to {address.url}: "
                                  f"{type(exc).__name__}: {exc}") from exc
    except BaseException:
        conn.abort()
        raise
    return conn


async def _establish(conn: LdapConnection, context: ssl.SSLContext, start_tls: bool,
                     seconds: float) -> None:
    """TCP, then TLS: at once for ldaps://, by StartTLS when asked for ldap://."""
    address = conn.address
    await asyncio.get_running_loop().create_connection(
        lambda: conn, address.host, address.port,
        ssl=context if address.tls else None,
        server_hostname=address.host if address.tls else None,
        ssl_handshake_timeout=seconds if address.tls else None)
    if start_tls and not address.tls:
        await conn.start_tls(context)
