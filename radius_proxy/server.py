"""The RADIUS server: asyncio UDP sockets, packet checks, the duplicate cache, replies.

Order of work for each datagram (RFC 2865, 2869, 5080, 5997):
1. the client table (unknown source: silently discarded);
2. length and attribute sanity, code allowed on an authentication port;
3. Message-Authenticator verified, required unless the client is marked legacy;
4. Status-Server answered at once, never cached;
5. the duplicate cache: a retransmit in flight is dropped, an answered one gets the cached
   bytes, a new request is answered if `max_pending` allows: at once when nothing has to
   wait, else in a task (`radius_proxy.eager`);
6. the pipeline decides, inside one fail-closed boundary; the reply leaves from the socket
   the request came to, Message-Authenticator first, Proxy-State echoed.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import socket
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pyrad.dictionary import Dictionary

from radius_proxy.config import ClientConfig, Config
from radius_proxy.config_loader import parse_hostport
from radius_proxy.eager import start
from radius_proxy.errors import MalformedPacket
from radius_proxy.log import RateLimiter
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline.flow import ACCEPT, CHALLENGE, Decision, Pipeline
from radius_proxy.pipeline.ports import Attributes, AuthRequest
from radius_proxy.protocol import packet as pk
from radius_proxy.protocol.clients import ClientTable
from radius_proxy.protocol.dedup import DuplicateCache, Key, Seen

log = structlog.get_logger(__name__)
#: Request ids: unique per process start and cheap (no random octets per request).
_ID_PREFIX = uuid.uuid4().hex[:6] + "-"
_REQUEST_NUMBERS = itertools.count(1)
_CODES = {ACCEPT: pk.ACCESS_ACCEPT, CHALLENGE: pk.ACCESS_CHALLENGE}
#: Servers of this process; the in-flight gauge reads their counters when scraped.
_SERVERS: weakref.WeakSet[RadiusServer] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class _Client:
    config: ClientConfig
    secret: bytes


def _bind(host: str, port: int, receive_buffer: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket on one address; IPv6 sockets carry IPv6 only.

    The receive buffer is raised because a burst (a NAS fleet retransmitting during an
    outage) arrives faster than one event loop reads it; the kernel caps the value at
    net.core.rmem_max. `reuse_port` lets the workers of `server.workers` bind the same
    address; Linux then spreads datagrams by source address and port (workers.py).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _client_table(config: Config) -> ClientTable[_Client]:
    return ClientTable([(net, _Client(c, c.secret.encode()))
                        for c in config.clients for net in c.networks])


class _Endpoint:
    """One bound UDP socket, read in batches straight from the event loop.

    asyncio's datagram transport wakes the loop once per datagram; reading up to `BATCH`
    datagrams per wake-up is what keeps a burst of retransmits cheap. Replies are written
    to the same socket, so they leave from the address the NAS sent to.
    """

    BATCH = 64

    def __init__(self, server: RadiusServer, index: int, sock: socket.socket) -> None:
        self.server = server
        self.index = index
        self.sock = sock
        self.reading = False
        self.closed = False

    @property
    def sockname(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def readable(self) -> None:
        for _ in range(self.BATCH):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                log.debug("socket_error", error=str(exc))
                return
            self.server.datagram_received(self, data, addr)

    def sendto(self, raw: bytes, addr: Any) -> None:
        if self.closed:
            return
        try:
            self.sock.sendto(raw, addr)
        except OSError as exc:  # a full send buffer or an unreachable NAS: UDP may lose it
            METRICS.count_drop("send_failed")
            log.debug("send_failed", error=str(exc))


class RadiusServer:
    """Owns the sockets, the client table and the duplicate cache; the pipeline decides."""

    def __init__(self, config: Config, pipeline: Pipeline, dictionary: Dictionary,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.dictionary = dictionary
        self.config = config
        self.clients = _client_table(config)
        self.cache = DuplicateCache(config.server.reply_cache_seconds, clock)
        self.endpoints: list[_Endpoint] = []
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._flood = RateLimiter(burst=5, period=60.0, clock=clock)
        _SERVERS.add(self)

    def reconfigure(self, config: Config, pipeline: Pipeline) -> None:
        """Swap clients, secrets and pipeline in one step (SIGHUP).

        Nothing awaits in between, so every datagram sees either the old or the new
        configuration; requests in flight finish with the objects they started with.
        """
        self.clients = _client_table(config)
        self.config = config
        self.pipeline = pipeline

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each socket; port 0 in the config becomes the real one."""
        return [ep.sockname for ep in self.endpoints]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for text in self.config.server.listen:
            host, port = parse_hostport(text, allow_zero=True)
            sock = _bind(host, port, self.config.server.receive_buffer_bytes,
                         reuse_port=self.config.server.workers > 1)
            endpoint = _Endpoint(self, len(self.endpoints), sock)
            self.endpoints.append(endpoint)
            loop.add_reader(sock.fileno(), endpoint.readable)
            endpoint.reading = True
        log.info("listening", addresses=[f"{h}:{p}" for h, p in self.addresses])

    def stop_receiving(self) -> None:
        """Stop reading the sockets: no new requests (SIGTERM); tasks in flight go on.

        The sockets stay open until `close()`, so the replies of the requests in flight
        still leave from the address each NAS sent to.
        """
        loop = asyncio.get_running_loop()
        for ep in self.endpoints:
            if ep.reading:
                loop.remove_reader(ep.sock.fileno())
                ep.reading = False

    async def drain(self, grace: float) -> bool:
        """Wait up to grace seconds for the requests in flight; True when all finished."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        return not pending

    async def close(self, grace: float = 0.0) -> None:
        self.stop_receiving()
        if not await self.drain(grace):
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stop_receiving()
        for ep in self.endpoints:
            if not ep.closed:
                ep.closed = True
                ep.sock.close()

    # --- receiving ------------------------------------------------------------------------

    def datagram_received(self, endpoint: _Endpoint, data: bytes, addr: Any) -> None:
        host, port = addr[0], addr[1]
        client = self.clients.lookup(host)
        if client is None:
            self._drop(pk.DropReason.UNKNOWN_CLIENT, host)
            return
        try:
            pkt = pk.decode_request(data, client.secret, self.dictionary)
        except MalformedPacket as exc:
            self._drop(pk.DropReason.MALFORMED, host, why=str(exc))
            return
        if pkt.code not in (pk.ACCESS_REQUEST, pk.STATUS_SERVER):
            self._drop(pk.DropReason.UNSUPPORTED_CODE, host, code=pkt.code)
            return
        reason = pk.message_authenticator_drop(
            pkt, require=client.config.require_message_authenticator,
            limit_proxy_state=client.config.limit_proxy_state)
        if reason is not None:
            self._drop(reason, host, client=client.config.name)
            return
        if pkt.code == pk.STATUS_SERVER:
            endpoint.sendto(pk.build_reply(pkt, pk.ACCESS_ACCEPT), addr)
            return
        self._access_request(endpoint, pkt, client, addr, (endpoint.index, host, port, pkt.id))

    def _access_request(self, endpoint: _Endpoint, pkt: pk.Request, client: _Client,
                        addr: Any, key: Key) -> None:
        try:
            attributes = pk.decoded_attributes(pkt)
        except MalformedPacket as exc:
            self._drop(pk.DropReason.MALFORMED, addr[0], why=str(exc))
            return
        seen = self.cache.arrive(key, pkt.authenticator)
        if seen.seen is Seen.IN_FLIGHT:
            METRICS.count_drop(pk.DropReason.DUPLICATE_IN_FLIGHT.value)
            log.debug("duplicate_in_flight", client=client.config.name, id=pkt.id)
            return
        if seen.seen is Seen.ANSWERED:
            assert seen.reply is not None
            log.debug("duplicate_answered", client=client.config.name, id=pkt.id)
            endpoint.sendto(seen.reply, addr)
            return
        if self.in_flight >= self.config.server.max_pending:
            self.cache.abandon(key, pkt.authenticator)
            self._drop(pk.DropReason.OVERLOAD, addr[0])
            return
        self.in_flight += 1
        answer = self._answer(endpoint, pkt, attributes, client, addr, key)
        # Each request runs in a context of its own (its log keys), and in a Task only
        # once it has to wait: see radius_proxy.eager.
        try:
            task = start(answer, contextvars.copy_context(), asyncio.get_running_loop())
        except Exception:  # a bug past the fail-closed boundary: no reply, the NAS retries
            log.exception("request_failed")
            return
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- answering --------------------------------------------------------------------

    async def _answer(self, endpoint: _Endpoint, pkt: pk.Request, attributes: Attributes,
                      client: _Client, addr: Any, key: Key) -> None:
        """Decide, cache and send, inside the fail-closed boundary: any unexpected exception
        becomes an Access-Reject.

        It runs in the request's own context (see `_access_request`), so the log keys bound
        here need no reset; and it is one coroutine, not one per step, because every
        request runs it (docs/performance.md, "Core throughput").
        """
        name = client.config.name
        request_id = f"{_ID_PREFIX}{next(_REQUEST_NUMBERS):x}"
        structlog.contextvars.bind_contextvars(request_id=request_id, client=name)
        try:
            try:
                request = self._request(pkt, attributes, client, addr, request_id)
                if isinstance(request, Decision):
                    decision = request
                    log.info("auth", outcome="reject", reason=decision.reason, client=name)
                else:
                    decision = await self.pipeline.handle(request, client.config)
                raw = _reply(pkt, name, decision)
            except asyncio.CancelledError:
                self.cache.abandon(key, pkt.authenticator)
                raise
            except Exception:
                raw = _reject_failed_closed(pkt, name)
        finally:
            self.in_flight -= 1
        if raw is None:
            self.cache.abandon(key, pkt.authenticator)
            return
        self.cache.answered(key, pkt.authenticator, raw)
        endpoint.sendto(raw, addr)

    def _request(self, pkt: pk.Request, attributes: Attributes, client: _Client, addr: Any,
                 request_id: str) -> AuthRequest | Decision:
        """The pipeline's view of a PAP Access-Request, or a reject for what we don't do."""
        if pk.EAP_MESSAGE in pkt or pk.CHAP_PASSWORD in pkt:
            return Decision("reject", "unsupported_authentication")
        name = pkt.first(1)
        hidden = pkt.first(pk.USER_PASSWORD)
        if name is None or hidden is None:
            return Decision("reject", "missing_user_name_or_password")
        try:
            username = name.decode("utf-8")
        except UnicodeDecodeError:
            return Decision("reject", "invalid_user_name")
        return AuthRequest(
            request_id=request_id, client=client.config.name, client_ip=addr[0],
            username=username,
            password=pk.unhide_password(hidden, client.secret, pkt.authenticator),
            attributes=attributes, state=pkt.first(pk.STATE),
        )

    def _drop(self, reason: pk.DropReason, source: str, **fields: Any) -> None:
        """Silently discard, count, and log at most a few lines a minute per source."""
        METRICS.count_drop(reason.value)
        allowed, suppressed = self._flood.allow(f"{reason.value}:{source}")
        if allowed:
            log.warning("packet_dropped", reason=reason.value, source=source,
                        suppressed=suppressed, **fields)


def _reply(pkt: pk.Request, client: str, decision: Decision) -> bytes | None:
    """The signed reply for a decision, counted; None for a drop."""
    METRICS.count_request(client, decision.outcome, decision.reason)
    if decision.outcome == "drop":
        return None
    if decision.outcome == "reject":
        return pk.build_reply(pkt, pk.ACCESS_REJECT)
    return pk.build_reply(pkt, _CODES.get(decision.outcome, pk.ACCESS_REJECT),
                          decision.attributes)


def _reject_failed_closed(pkt: pk.Request, client: str) -> bytes | None:
    """A bug in deciding: logged with its traceback, counted, answered with a reject.

    Called in the handler of the exception, so `log.exception` sees it.
    """
    log.exception("request_failed_closed")
    METRICS.count_request(client, "reject", "internal_error")
    try:
        return pk.build_reply(pkt, pk.ACCESS_REJECT)
    except Exception:
        log.exception("reject_failed")
        return None


def _in_flight() -> float:
    """The gauge's value, read at scrape time rather than counted twice per request."""
    return float(sum(server.in_flight for server in _SERVERS))


METRICS.in_flight.set_function(_in_flight)
