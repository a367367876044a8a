"""HTTP to the ID server on the event loop itself: our own HTTP/1.1 client on asyncio.Protocol.

History. The first transport ran requests on worker threads; with 10,000 pushes waiting, 32
threads managed about 400 state polls a second and starved Status-Server of the interpreter
lock. aiohttp moved HTTP onto the loop but cost about 200 µs of CPU per exchange, and the
loop is the proxy's one core (docs/performance.md, "The wait at scale"). An exchange here is
one write, one `data_received` through the parser in `http11.py`, and one future. It is an
`asyncio.Protocol` rather than streams because streams put a reader, its buffer and a
coroutine per `readline` on top of the same callbacks: measured against the simulator,
this client, with its strict parser, pool and timeouts, costs within about 5 % (in
instructions) of a bare streams client that validates nothing and has no timeouts, and
about 40 % of aiohttp. What is left is the event loop and the kernel, not HTTP.

What it does: keep-alive connections per origin (scheme, host, port); at most
`max_connections` exchanges at a time across all origins, callers beyond that wait in FIFO
order; TLS verified with the system store or `ca_file` and `server_hostname`; one total
timeout per request (waiting for a slot, connecting, TLS, sending, the whole answer); no
redirects (a 3xx is an answer like any other); no content codings. A kept connection idle
for `idle_seconds` is closed; one the server closed is noticed by the protocol callbacks and
never handed out.

The one retry: a request that fails on a *reused* connection because the connection closed
before any byte of an answer arrived is sent once more on a fresh connection. That is the
keep-alive race (RFC 9112 section 9.3.1): the server closed the idle connection as our
request went out, and a server closing an idle connection has not read the request it never
answered. The one case it cannot rule out, a server that read the request and died without
a byte, costs at most a second push notification for a start, which the client never
confirms (it polls only the session it was given) and which expires at the ID server; the
client's own fallback already sends a start that got no answer to the next server, a
stronger repeat than this one. Timeouts, TLS failures, garbage and answers cut short are
never retried: the server may have acted on those requests.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import ssl
from typing import Any, cast

from radius_proxy.backends.secsign.http11 import Origin, ResponseParser, encode_request
from radius_proxy.backends.secsign.transport import (
    ErrorKind,
    HttpRequest,
    HttpResponse,
    TransportError,
    certificate_problem,
)

#: A kept connection unused this long is closed (servers commonly keep idle ones 60-75 s).
IDLE_SECONDS = 30.0
#: How often timeouts are checked: a request times out at most this late, never early.
TICK_SECONDS = 0.05

#: A request's deadline: when (loop time), and the timeout it came from (for the message).
Deadline = tuple[float, float]


def _timed_out(seconds: float) -> TransportError:
    return TransportError(f"no answer within {seconds:g} s", ErrorKind.TIMEOUT)


class _Deadlines:
    """Fails the futures whose time is up, with one timer for all of them.

    Why not `asyncio.timeout` per request: each costs a Timeout, a TimerHandle pushed into
    the loop's heap (compared in Python) and purged later, and a task cancel and uncancel:
    3-7 µs measured, per exchange, at thousands of exchanges a second. A sweep every
    `TICK_SECONDS` over the futures waiting (at most the exchanges in flight plus the
    callers queued for a slot), only while any wait, costs next to nothing.
    """

    def __init__(self) -> None:
        self._futures: dict[asyncio.Future[Any], Deadline] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, future: asyncio.Future[Any], deadline: Deadline) -> None:
        self._futures[future] = deadline
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._sweep)

    def forget(self, future: asyncio.Future[Any]) -> None:
        self._futures.pop(future, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [(future, d[1]) for future, d in self._futures.items() if d[0] <= now]
        for future, seconds in late:
            del self._futures[future]
            if not future.done():
                future.set_exception(_timed_out(seconds))
        self._timer = loop.call_later(TICK_SECONDS, self._sweep) if self._futures else None

    def close(self) -> None:
        """Stop the sweep if nothing waits (else it stops once the last future is done)."""
        if self._timer is not None and not self._futures:
            self._timer.cancel()
            self._timer = None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time, no pipelining."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()  # made by create_connection, on the loop
        self._transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self.closed = False
        self.answered = False  # some byte of an answer arrived during the current exchange
        self.reusable = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser, waiter = self._parser, self._waiter
        if parser is None or waiter is None or waiter.done():
            self.close()  # bytes nobody asked for (a 408 before a close, a second answer)
            return
        self.answered = True
        try:
            response = parser.feed(data)
        except TransportError as error:
            self._fail(error)
            return
        if response is not None:
            self._parser = None
            self.reusable = parser.keep_alive
            waiter.set_result(response)

    def eof_received(self) -> bool:
        parser, waiter = self._parser, self._waiter
        self.closed = True
        if parser is not None and waiter is not None and not waiter.done():
            self._parser = None
            try:
                waiter.set_result(parser.feed_eof())
            except TransportError as error:
                waiter.set_exception(error)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if isinstance(exc, ssl.SSLError):
                waiter.set_exception(TransportError("TLS failed mid-exchange", ErrorKind.TLS))
            else:
                what = "mid-answer" if self.answered else "before any answer"
                waiter.set_exception(TransportError(f"connection closed {what}",
                                                    ErrorKind.CLOSED))

    # -- used by the transport --------------------------------------------------------------
    def send(self, octets: bytes, head_only: bool) -> asyncio.Future[HttpResponse]:
        """Send one request; the future of its whole answer."""
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            raise TransportError("connection closed before any answer", ErrorKind.CLOSED)
        self.answered = self.reusable = False
        self._parser = ResponseParser(head_only)
        waiter: asyncio.Future[HttpResponse] = self._loop.create_future()
        self._waiter = waiter
        transport.write(octets)
        return waiter

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: TransportError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()


class _Pool:
    """Kept connections to one origin, most recently used on top (LIFO), so under a light
    load the same few stay warm and the surplus ages out."""

    def __init__(self, origin: Origin, context: ssl.SSLContext | None, keep: int,
                 idle_seconds: float) -> None:
        self.origin = origin
        self._context = context
        self._keep = keep
        self._idle_seconds = idle_seconds
        self._idle: list[_Connection] = []
        self._loop = asyncio.get_running_loop()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def take(self) -> _Connection | None:
        """The most recently used open connection, or None."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def put(self, connection: _Connection) -> None:
        """Keep a connection after an exchange, if it may carry another and there is room."""
        if (not connection.reusable or connection.closed or self._closed
                or len(self._idle) >= self._keep):
            connection.close()
            return
        connection.idle_since = now = self._loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = self._loop.call_at(now + self._idle_seconds, self._expire)

    async def connect(self, deadline: Deadline) -> _Connection:
        """A new connection, TLS verified when the origin is https; errors by kind.

        Connecting is rare (connections are kept), so `asyncio.timeout_at` is cheap enough
        here, and it cancels the DNS lookup, the TCP connect or the TLS handshake cleanly.
        """
        origin = self.origin
        try:
            async with asyncio.timeout_at(deadline[0]):
                _, connection = await self._loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=self._context,
                    server_hostname=origin.host if self._context is not None else None)
        except TimeoutError:
            raise _timed_out(deadline[1]) from None
        except ssl.SSLCertVerificationError as error:
            raise TransportError(certificate_problem(error), ErrorKind.CERTIFICATE) from None
        except ssl.SSLError as error:
            raise TransportError(f"TLS handshake failed ({error.reason or 'SSLError'})",
                                 ErrorKind.TLS) from None
        except OSError as error:
            raise TransportError(f"cannot connect: {_reason(error)}", ErrorKind.CONNECT) \
                from None
        return connection

    def _expire(self) -> None:
        """Close connections idle too long (the oldest are at the bottom); re-arm."""
        self._sweep = None
        cutoff = self._loop.time() - self._idle_seconds
        idle = self._idle
        stale = 0
        while stale < len(idle) and (idle[stale].closed or idle[stale].idle_since <= cutoff):
            idle[stale].close()
            stale += 1
        del idle[:stale]
        if idle:
            self._sweep = self._loop.call_at(idle[0].idle_since + self._idle_seconds,
                                             self._expire)

    def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class _Slots:
    """At most `limit` exchanges at once; the rest wait first come, first served."""

    def __init__(self, limit: int, deadlines: _Deadlines) -> None:
        self._free = limit
        self._deadlines = deadlines
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> bool:
        """A slot now if one is free and nobody is queued before us (no coroutine: the
        common case costs a comparison)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self, deadline: Deadline) -> None:
        """Queue for a slot until the deadline."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._deadlines.watch(waiter, deadline)
        try:
            await waiter
        except BaseException:  # timed out or cancelled
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # granted just as we gave up: pass it on
            elif waiter in self._waiters:  # release() drops waiters that are done
                self._waiters.remove(waiter)
            raise
        finally:
            self._deadlines.forget(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class Http11Transport:
    """An async `Transport`: `await transport(request, timeout)`; connections kept per origin.

    Like an aiohttp session it belongs to the loop it is used on: `close()` it before that
    loop ends (the SecSign client does), or its kept sockets are only closed by the GC.
    """

    def __init__(self, ca_file: str = "", max_connections: int = 32, *,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self._context = ssl.create_default_context(cafile=ca_file or None)
        self._limit = max_connections
        self._idle_seconds = idle_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines = _Deadlines()
        self._slots = _Slots(max_connections, self._deadlines)
        self._pools: dict[Origin, _Pool] = {}

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh on another event loop: connections, timers and waiters belong to
        the loop that made them (a client used from two `asyncio.run` calls, in tests)."""
        self._loop = loop
        self._deadlines = _Deadlines()
        self._slots = _Slots(self._limit, self._deadlines)
        self._pools = {}

    async def __call__(self, request: HttpRequest, seconds: float) -> HttpResponse:
        """One exchange; everything (a slot, connecting, the answer) within `seconds`.

        On a kept connection if there is one, and once more on a new one if that one turns
        out closed before answering (the keep-alive race, see the module docstring).
        """
        origin, octets = encode_request(request)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        deadline = (loop.time() + seconds, seconds)
        head_only = request.method == "HEAD"
        if not self._slots.take():
            await self._slots.wait(deadline)
        try:
            pool = self._pools.get(origin) or self._pool(origin)
            kept = pool.take()
            if kept is not None:
                try:
                    return await self._use(pool, kept, octets, head_only, deadline)
                except TransportError as error:
                    if error.kind is not ErrorKind.CLOSED or kept.answered:
                        raise
            fresh = await pool.connect(deadline)
            return await self._use(pool, fresh, octets, head_only, deadline)
        finally:
            self._slots.release()

    async def _use(self, pool: _Pool, connection: _Connection, octets: bytes, head_only: bool,
                   deadline: Deadline) -> HttpResponse:
        """One exchange on `connection`; it goes back to the pool only after a whole answer."""
        waiter = connection.send(octets, head_only)
        self._deadlines.watch(waiter, deadline)
        try:
            response = await waiter
        except BaseException:  # timeout, cancellation, error: the connection's state is unknown
            connection.close()
            raise
        finally:
            self._deadlines.forget(waiter)
        pool.put(connection)
        return response

    def _pool(self, origin: Origin) -> _Pool:
        context = self._context if origin.tls else None
        pool = self._pools[origin] = _Pool(origin, context, self._limit, self._idle_seconds)
        return pool

    async def close(self) -> None:
        """Close the kept connections; ones in use close when their exchange ends."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
        self._deadlines.close()
        await asyncio.sleep(0)


def _reason(error: OSError) -> str:
    """A short cause: "Connection refused", "Name or service not known"..."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error) or type(error).__name__
    return os.strerror(error.errno)


__all__ = ["IDLE_SECONDS", "TICK_SECONDS", "Http11Transport"]
