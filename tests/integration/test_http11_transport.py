"""The event-loop HTTP/1.1 transport (`aio_transport.py`) over real sockets on 127.0.0.1.

Each test runs its own loop (`asyncio.run`) with a scripted server in it: the server counts
the TCP connections it accepts and records every request, so a test sees connection reuse,
the pool bound, the one retry and the request octets as they were on the wire. TLS uses a
throw-away CA made with openssl (`tests.servers.slapd.make_pki`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from radius_proxy.backends.secsign.aio_transport import TICK_SECONDS, Http11Transport
from radius_proxy.backends.secsign.transport import (
    ErrorKind,
    HttpRequest,
    HttpResponse,
    TransportError,
)
from tests.servers import slapd
from tests.servers.slapd import make_pki
from tests.support import free_port

T = TypeVar("T")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def run(scenario: Callable[[], Awaitable[T]], limit: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await scenario()
    return asyncio.run(bounded())


@dataclass
class Exchange:
    """One request as the server read it, and where to answer."""

    head: bytes
    body: bytes
    connection: int  # which accepted connection, from 1
    index: int  # which request the server has read, from 1
    writer: asyncio.StreamWriter
    done: bool = False

    @property
    def target(self) -> str:
        return self.head.split(b" ")[1].decode()


Answer = Callable[[Exchange], Awaitable[bool]]  # False: close the connection


async def answer_ok(exchange: Exchange) -> bool:
    exchange.writer.write(OK)
    return True


@dataclass
class Server:
    """Reads requests one after another on each connection and lets `answer` reply."""

    answer: Answer
    accepted: int = 0
    open_now: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    closed_by_peer: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number, self.open_now = self.accepted, self.open_now + 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_peer += 1
                    return
                body = await reader.readexactly(_content_length(head))
                exchange = Exchange(head, body, number, len(self.exchanges) + 1, writer)
                self.exchanges.append(exchange)
                if not await self.answer(exchange):
                    return
                await writer.drain()
        except asyncio.CancelledError:  # the loop ends with a request still held: fine
            return
        finally:
            self.open_now -= 1
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@contextlib.asynccontextmanager
async def serving(answer: Answer = answer_ok, *, tls: ssl.SSLContext | None = None,
                  host: str = "127.0.0.1") -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, host, 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def transport(**options: object) -> AsyncIterator[Http11Transport]:
    client = Http11Transport(**options)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.close()


def get(url: str, path: str = "/") -> HttpRequest:
    return HttpRequest("GET", url + path)


async def failure(call: Awaitable[HttpResponse]) -> TransportError:
    with pytest.raises(TransportError) as caught:
        await call
    return caught.value


# -- requests on the wire, and reuse ----------------------------------------------------------
def test_request_octets_on_the_wire() -> None:
    async def scenario() -> Exchange:
        async with serving() as (server, url), transport() as client:
            request = HttpRequest("POST", url + "/", form=(("request", "ReqX"),),
                                  auth=("account", "pin"))
            assert await client(request, 2) == HttpResponse(200, b"ok")
            return server.exchanges[0]

    exchange = run(scenario)
    lines = exchange.head.decode().split("\r\n")
    assert lines[0] == "POST / HTTP/1.1"
    assert lines[1].startswith("Host: 127.0.0.1:")
    assert "Authorization: Basic YWNjb3VudDpwaW4=" in lines
    assert "Content-Type: application/x-www-form-urlencoded" in lines
    assert exchange.body == b"request=ReqX"


def test_many_requests_one_after_another_use_one_connection() -> None:
    async def scenario() -> Server:
        async with serving() as (server, url), transport() as client:
            for n in range(50):
                assert (await client(get(url, f"/{n}"), 2)).body == b"ok"
            return server

    server = run(scenario)
    assert server.accepted == 1
    assert len(server.exchanges) == 50


def test_at_most_max_connections_in_use_and_waiters_served_in_order() -> None:
    peak = 0

    async def scenario() -> tuple[Server, list[str]]:
        gate = asyncio.Event()

        async def slow(exchange: Exchange) -> bool:
            nonlocal peak
            peak = max(peak, sum(1 for e in server.exchanges if not e.done))
            await gate.wait()
            exchange.done = True
            exchange.writer.write(OK)
            return True

        async with serving(slow) as (server, url), transport(max_connections=3) as client:
            calls = [asyncio.create_task(client(get(url, f"/{n}"), 5)) for n in range(12)]
            await asyncio.sleep(0.2)
            assert len(server.exchanges) == 3
            gate.set()
            assert all(r.status == 200 for r in await asyncio.gather(*calls))
            return server, [e.target for e in server.exchanges]

    server, order = run(scenario)
    assert server.accepted == 3
    assert peak == 3
    assert order[3:] == [f"/{n}" for n in range(3, 12)], "waiters were not served in order"


def test_chunked_and_close_delimited_answers() -> None:
    async def mixed(exchange: Exchange) -> bool:
        if exchange.target == "/chunked":
            exchange.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3\r\nchu\r\n4;x=y\r\nnked\r\n0\r\n\r\n")
            return True
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end")
        return False

    async def scenario() -> tuple[list[bytes], int]:
        async with serving(mixed) as (server, url), transport() as client:
            bodies = [(await client(get(url, path), 2)).body
                      for path in ("/chunked", "/chunked", "/close", "/chunked")]
            return bodies, server.accepted

    bodies, accepted = run(scenario)
    assert bodies == [b"chunked", b"chunked", b"to the end", b"chunked"]
    assert accepted == 2, "a close-delimited answer's connection was reused"


def test_redirect_is_returned_not_followed() -> None:
    async def redirect(exchange: Exchange) -> bool:
        exchange.writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n"
                              b"Content-Length: 0\r\n\r\n")
        return True

    async def scenario() -> tuple[int, int]:
        async with serving(redirect) as (server, url), transport() as client:
            return (await client(get(url), 2)).status, len(server.exchanges)

    assert run(scenario) == (302, 1)


# -- connections that end ---------------------------------------------------------------------
def test_a_kept_connection_the_server_closed_is_noticed() -> None:
    async def once(exchange: Exchange) -> bool:
        exchange.writer.write(OK)  # says nothing of closing, then closes (its idle timeout)
        return False

    async def scenario() -> Server:
        async with serving(once) as (server, url), transport() as client:
            for _ in range(3):
                assert (await client(get(url), 2)).status == 200
                await asyncio.sleep(0.05)
            return server

    server = run(scenario)
    assert server.accepted == 3
    assert len(server.exchanges) == 3


def test_closed_before_any_answer_on_a_reused_connection_is_retried_once() -> None:
    async def drop_second(exchange: Exchange) -> bool:
        if exchange.index == 2:
            return False  # read the request, closed without a byte: the keep-alive race
        exchange.writer.write(OK)
        return True

    async def scenario() -> Server:
        async with serving(drop_second) as (server, url), transport() as client:
            assert (await client(get(url), 2)).status == 200
            assert (await client(get(url), 2)).status == 200
            return server

    server = run(scenario)
    assert [e.connection for e in server.exchanges] == [1, 1, 2]


def test_the_retry_happens_once_and_not_on_a_new_connection() -> None:
    async def drop_after_first(exchange: Exchange) -> bool:
        if exchange.index == 1:
            exchange.writer.write(OK)
            return True
        return False

    async def scenario() -> tuple[TransportError, int]:
        async with serving(drop_after_first) as (server, url), transport() as client:
            assert (await client(get(url), 2)).status == 200
            return await failure(client(get(url), 2)), len(server.exchanges)

    error, exchanges = run(scenario)
    assert error.kind is ErrorKind.CLOSED
    assert exchanges == 3  # the first, the one on the kept connection, one retry


def test_an_answer_cut_short_is_not_retried() -> None:
    async def cut_second(exchange: Exchange) -> bool:
        if exchange.index == 1:
            exchange.writer.write(OK)
            return True
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    async def scenario() -> tuple[TransportError, int]:
        async with serving(cut_second) as (server, url), transport() as client:
            await client(get(url), 2)
            return await failure(client(get(url), 2)), len(server.exchanges)

    error, exchanges = run(scenario)
    assert (error.kind, str(error)) == (ErrorKind.CLOSED, "connection closed mid-answer")
    assert exchanges == 2


def test_unasked_bytes_on_an_idle_connection_retire_it() -> None:
    async def then_408(exchange: Exchange) -> bool:
        exchange.writer.write(OK)
        await exchange.writer.drain()
        await asyncio.sleep(0.05)
        exchange.writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        return True

    async def scenario() -> tuple[int, int]:
        async with serving(then_408) as (server, url), transport() as client:
            await client(get(url), 2)
            await asyncio.sleep(0.2)
            return (await client(get(url), 2)).status, server.accepted

    assert run(scenario) == (200, 2)


def test_idle_connections_expire() -> None:
    async def scenario() -> tuple[int, int]:
        async with serving() as (server, url), transport(idle_seconds=0.2) as client:
            await client(get(url), 2)
            await asyncio.sleep(0.5)
            closed = server.closed_by_peer
            await client(get(url), 2)
            return closed, server.accepted

    assert run(scenario) == (1, 2)


def test_cancelled_request_frees_its_slot_and_drops_its_connection() -> None:
    async def hang_first(exchange: Exchange) -> bool:
        if exchange.index == 1:
            await asyncio.sleep(10)
        exchange.writer.write(OK)
        return True

    async def scenario() -> tuple[int, int]:
        async with serving(hang_first) as (server, url), \
                transport(max_connections=1) as client:
            first = asyncio.create_task(client(get(url), 5))
            await asyncio.sleep(0.1)
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            return (await client(get(url), 2)).status, server.accepted

    assert run(scenario) == (200, 2)


# -- failures by kind -------------------------------------------------------------------------
async def never(exchange: Exchange) -> bool:
    await asyncio.sleep(30)
    return False


def test_a_hanging_server_times_out() -> None:
    async def scenario() -> tuple[TransportError, float]:
        async with serving(never) as (_, url), transport() as client:
            began = time.monotonic()
            error = await failure(client(get(url), 0.3))
            return error, time.monotonic() - began

    error, took = run(scenario)
    assert error.kind is ErrorKind.TIMEOUT
    assert 0.3 <= took < 0.3 + TICK_SECONDS + 0.3


def test_waiting_for_a_slot_counts_against_the_timeout() -> None:
    async def scenario() -> tuple[TransportError, float]:
        async with serving(never) as (_, url), transport(max_connections=1) as client:
            busy = asyncio.create_task(client(get(url), 5))
            await asyncio.sleep(0.05)
            began = time.monotonic()
            error = await failure(client(get(url), 0.3))
            took = time.monotonic() - began
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
            return error, took

    error, took = run(scenario)
    assert error.kind is ErrorKind.TIMEOUT
    assert took < 1.0


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_garbage(reply: bytes) -> None:
    async def talk_nonsense(exchange: Exchange) -> bool:
        exchange.writer.write(reply)
        return True

    async def scenario() -> TransportError:
        async with serving(talk_nonsense) as (_, url), transport() as client:
            return await failure(client(get(url), 2))

    assert run(scenario).kind is ErrorKind.GARBAGE


def test_connection_refused() -> None:
    async def scenario() -> TransportError:
        async with transport() as client:
            return await failure(client(get(f"http://127.0.0.1:{free_port()}"), 2))

    error = run(scenario)
    assert error.kind is ErrorKind.CONNECT
    assert "refused" in str(error).lower()


# -- TLS --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> slapd.TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("other"), "another CA").ca_file


def server_context(pki: slapd.TestPki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    return context


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_verified_with_the_ca_file_and_kept(pki: slapd.TestPki, host: str) -> None:
    async def scenario() -> tuple[list[int], int]:
        async with serving(tls=server_context(pki)) as (server, url), \
                transport(ca_file=str(pki.ca_file)) as client:
            url = url.replace("127.0.0.1", host)
            statuses = [(await client(get(url), 3)).status for _ in range(5)]
            return statuses, server.accepted

    assert run(scenario) == ([200] * 5, 1)


def test_tls_certificate_from_another_ca(pki: slapd.TestPki, other_ca: Path) -> None:
    async def scenario() -> tuple[TransportError, int]:
        async with serving(tls=server_context(pki)) as (server, url), \
                transport(ca_file=str(other_ca)) as client:
            return await failure(client(get(url), 3)), len(server.exchanges)

    error, seen = run(scenario)
    assert error.kind is ErrorKind.CERTIFICATE
    assert "verification failed" in str(error)
    assert "ca_file" in str(error)
    assert seen == 0, "a request went through a TLS session that did not verify"


def test_tls_certificate_for_another_host(pki: slapd.TestPki) -> None:
    """The certificate names 127.0.0.1 and localhost; 127.0.0.2 is loopback too."""
    async def scenario() -> TransportError:
        async with serving(tls=server_context(pki), host="127.0.0.2") as (_, url), \
                transport(ca_file=str(pki.ca_file)) as client:
            return await failure(client(get(url), 3))

    error = run(scenario)
    assert error.kind is ErrorKind.CERTIFICATE
    assert "mismatch" in str(error).lower()


def test_tls_to_a_server_that_speaks_plain_http(pki: slapd.TestPki) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> TransportError:
        listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
        url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        try:
            async with transport(ca_file=str(pki.ca_file)) as client:
                return await failure(client(get(url), 3))
        finally:
            listener.close()
            await listener.wait_closed()

    assert run(scenario).kind is ErrorKind.TLS


def test_one_transport_used_from_two_event_loops() -> None:
    """The first loop ends with the timeout sweep still armed on it; the second loop's
    requests must still time out (the transport re-binds to the loop it is called on)."""
    client = Http11Transport()

    async def first() -> None:
        async with serving(never) as (_, url):
            pending = asyncio.create_task(client(get(url), 5))
            await asyncio.sleep(0.1)
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending  # its connection is dropped; no close(): the sweep stays armed

    async def second() -> ErrorKind:
        async with serving(never) as (_, url):
            kind = (await failure(client(get(url), 0.2))).kind
        await client.close()
        return kind

    run(first)
    assert run(second, limit=3) is ErrorKind.TIMEOUT
