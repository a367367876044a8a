"""A scripted LDAP server for the failure tests: it answers what the test tells it to.

Runs on the test's own event loop (asyncio streams on 127.0.0.1:0; ldaps:// when asked) and
speaks through the project's codec. Binds succeed, the root DSE is empty, StartTLS upgrades
when the server has a certificate; each user search (any other base) is answered by the
test's `on_search`: a list of byte strings to send, where `CLOSE` ends the connection and an
empty list is silence.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from types import TracebackType

from radius_proxy.backends.ldap_ber import (
    STARTTLS_OID,
    BindRequest,
    BindResponse,
    ExtendedRequest,
    ExtendedResponse,
    LdapMessage,
    LdapResult,
    ProtocolOp,
    SearchRequest,
    SearchResultDone,
    SearchResultEntry,
    UnbindRequest,
    decode_message,
    encode_message,
    message_length,
)

CLOSE = b"<close>"
SearchScript = Callable[[int, SearchRequest], list[bytes]]


def wire(message_id: int, op: ProtocolOp) -> bytes:
    return encode_message(LdapMessage(message_id, op))


def found(message_id: int, _: SearchRequest | None = None) -> list[bytes]:
    """A search answered with one entry, as a directory would."""
    entry = SearchResultEntry("uid=x,dc=example,dc=com", (("secsignId", (b"x.secsign",)),))
    return [wire(message_id, entry), wire(message_id, SearchResultDone(LdapResult(0)))]


class FakeLdap:
    """One scripted server; `received` lists every request, in order, from every client."""

    def __init__(self, on_search: SearchScript = found, starttls_code: int = 0,
                 tls: ssl.SSLContext | None = None, ldaps: bool = False) -> None:
        self.on_search = on_search
        self.starttls_code = starttls_code
        self.tls = tls
        self.ldaps = ldaps
        self.received: list[LdapMessage] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "ldaps" if self.ldaps else "ldap"
        return f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> FakeLdap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  ssl=self.tls if self.ldaps else None)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while (size := message_length(buffer, 0, 1 << 20)) and size <= len(buffer):
                    message, buffer = decode_message(buffer[:size]), buffer[size:]
                    self.received.append(message)
                    if not await self._answer(message, writer):
                        writer.close()
                        return
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    async def _answer(self, message: LdapMessage, writer: asyncio.StreamWriter) -> bool:
        """Send the scripted answer; False when the connection is to end."""
        op, message_id = message.op, message.message_id
        if isinstance(op, UnbindRequest):
            return False
        if isinstance(op, BindRequest):
            writer.write(wire(message_id, BindResponse(LdapResult(0))))
        elif isinstance(op, ExtendedRequest) and op.name == STARTTLS_OID:
            code = self.starttls_code if self.tls is not None else 2
            writer.write(wire(message_id, ExtendedResponse(LdapResult(code))))
            await writer.drain()
            if code == 0:
                assert self.tls is not None
                await writer.start_tls(self.tls)
        elif isinstance(op, SearchRequest) and op.base == "":
            writer.write(wire(message_id, SearchResultDone(LdapResult(0))))
        elif isinstance(op, SearchRequest):
            for chunk in self.on_search(message_id, op):
                if chunk == CLOSE:
                    return False
                writer.write(chunk)
        await writer.drain()
        return True
