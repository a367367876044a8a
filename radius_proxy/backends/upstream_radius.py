"""Upstream RADIUS as the password check (primary backend "radius").

The proxy forwards the PAP login to an existing RADIUS server (FreeRADIUS, NPS, an OTP
server) and turns its answer into a `PrimaryResult`. pyrad is used as a codec only; the
transport is ours: asyncio datagram sockets, so thousands of logins can wait for an upstream
without a thread each.

Wire rules this module keeps, and why:

- The password is re-hidden with the upstream's secret under a fresh Request Authenticator
  (RFC 2865 section 2.3 and 5.2), from the bytes the NAS sent, never via text.
- Every Access-Request and Status-Server carries Message-Authenticator as its first
  attribute (RFC 3579 section 3.2, RFC 5997 section 2, BlastRADIUS mitigation).
- A reply counts only if it comes from the server's address, matches a pending Identifier,
  has the right Response Authenticator (RFC 2865 section 3), a valid Message-Authenticator
  when present or required (RFC 2869 section 5.14), and no Proxy-State we did not send
  (we send none, so any is foreign: the BlastRADIUS signature). Anything else is ignored and
  we keep waiting, as pam_radius does.
- Identifiers are allocated per socket and not reused until the request is answered or has
  timed out (RFC 5080 section 2.2.1); each server gets as many sockets as the load needs, so
  more than 256 requests can be in flight.
- Retransmits are byte-identical (same Identifier and authenticator, RFC 2865 section 2.5,
  RFC 5080 section 2.2.1); failover to the next server uses a new Identifier and
  authenticator (RFC 2865 section 4.1).
- A server that stayed silent is marked dead and skipped; Status-Server probes (RFC 5997
  section 4.1: never retransmitted, a new ID each) bring it back.

The check never falls open: anything but a verified Access-Accept is not an ACCEPT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import socket
import struct
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, cast

import pyrad.packet
import structlog
from pyrad.dictionary import Dictionary

from radius_proxy.config import RadiusUpstreamConfig
from radius_proxy.config_loader import parse_hostport
from radius_proxy.log import RateLimiter
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline.ports import (
    AttrValue,
    AuthRequest,
    PrimaryOutcome,
    PrimaryResult,
)
from radius_proxy.protocol.packet import hide_password

log = structlog.get_logger(__name__)

ACCESS_REQUEST = pyrad.packet.AccessRequest
ACCESS_ACCEPT = pyrad.packet.AccessAccept
ACCESS_REJECT = pyrad.packet.AccessReject
ACCESS_CHALLENGE = pyrad.packet.AccessChallenge
STATUS_SERVER = pyrad.packet.StatusServer

_MESSAGE_AUTHENTICATOR = 80
_PROXY_STATE = 33
_STATE = 24

#: Request attributes an upstream needs to apply its own policy (RFC 2865 section 5.44).
FORWARDED_ATTRIBUTES = (
    "NAS-IP-Address", "NAS-IPv6-Address", "NAS-Identifier", "NAS-Port", "NAS-Port-Type",
    "Service-Type", "Calling-Station-Id", "Called-Station-Id",
)

#: Per-hop attributes that never travel on in a reply, even when pass_through names them.
HOP_BY_HOP = frozenset({"message-authenticator", "proxy-state", "state", "eap-message"})

#: Reply codes that may answer each request code (RFC 2865 section 4, RFC 5997 section 3).
_ANSWERS = {
    ACCESS_REQUEST: frozenset({ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE}),
    STATUS_SERVER: frozenset({ACCESS_ACCEPT, ACCESS_REJECT}),
}

_IDS_PER_SOCKET = 256
_MAX_SOCKETS_PER_SERVER = 64  # 16384 requests in flight per server
_RECEIVE_BUFFER = 1 << 20  # replies to hundreds of requests can arrive in one burst
#: The `backend` label of this module's metrics (the config section).
METRIC_LABEL = "radius_upstream"


@dataclass(slots=True)
class _Pending:
    """A request waiting for its answer, keyed by Identifier in its socket."""

    future: asyncio.Future[Any]
    authenticator: bytes
    code: int
    invalid: str | None = None  # why the last reply with this Identifier was ignored


class _Socket(asyncio.DatagramProtocol):
    """One UDP socket to one server: an Identifier space of 256 (RFC 2865 section 3)."""

    def __init__(self, server: _Server, owner: UpstreamRadius) -> None:
        self.server, self.owner = server, owner
        self.transport: asyncio.DatagramTransport | None = None
        ids = list(range(_IDS_PER_SOCKET))
        secrets.SystemRandom().shuffle(ids)
        # FIFO: a released Identifier goes to the back, so a late reply to a timed-out
        # request is unlikely to meet a new request that reuses its Identifier.
        self.free: deque[int] = deque(ids)
        self.pending: dict[int, _Pending] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def allocate(self) -> int | None:
        return self.free.popleft() if self.free else None

    def release(self, ident: int) -> None:
        pending = self.pending.pop(ident, None)
        if pending is not None and not pending.future.done():
            pending.future.cancel()
        self.free.append(ident)

    def send(self, data: bytes) -> None:
        if self.transport is not None and self.server.sockaddr is not None:
            self.transport.sendto(data, self.server.sockaddr)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._received(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("upstream_socket_error", server=self.server.name, error=str(exc))

    def close(self) -> None:
        for ident in list(self.pending):
            self.release(ident)
        if self.transport is not None:
            self.transport.close()


@dataclass(slots=True, eq=False)
class _Server:
    """An upstream as configured ("host:port"), its resolved address, sockets and health."""

    name: str
    host: str
    port: int
    sockaddr: tuple[Any, ...] | None = None
    family: int = socket.AF_INET
    alive: bool = True
    last_valid: float = 0.0  # monotonic time of the last verified reply
    sockets: list[_Socket] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def matches(self, addr: tuple[Any, ...]) -> bool:
        return self.sockaddr is not None and tuple(addr[:2]) == tuple(self.sockaddr[:2])


@dataclass(frozen=True, slots=True)
class _Exchange:
    """How one request to one server ended: a verified reply, or why there was none.

    `invalid` is the last reason a reply was ignored; `failure` means nothing was sent
    (no free Identifier, name not resolvable, request not encodable).
    """

    reply: Any = None  # pyrad.packet.AuthPacket
    invalid: str | None = None
    failure: str | None = None


class UpstreamRadius:
    """Primary authenticator that asks upstream RADIUS servers, in order, with failover."""

    name = "radius"

    def __init__(self, config: RadiusUpstreamConfig, dictionary: Dictionary) -> None:
        self.config = config
        self.dictionary = dictionary
        self._secret = config.secret.encode()
        self._servers = [_Server(s, *parse_hostport(s, 1812)) for s in config.servers]
        self._wanted = {n.lower() for n in config.pass_through}
        self._probe_task: asyncio.Task[None] | None = None
        self._quiet = RateLimiter(burst=5, period=60.0)
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the servers, open one socket each, and start the Status-Server prober."""
        self._started = True
        for server in self._servers:
            METRICS.backend_up.labels(METRIC_LABEL, server.name).set(1)
            if await self._resolve(server):
                async with server.lock:
                    await self._open_socket(server)
        self._probe_task = asyncio.create_task(self._probe_dead(), name="upstream-radius-probe")

    async def close(self) -> None:
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for server in self._servers:
            for sock in server.sockets:
                sock.close()
            server.sockets.clear()

    def server_status(self) -> dict[str, bool]:
        """Each server as configured -> whether it is considered alive (for metrics)."""
        return {s.name: s.alive for s in self._servers}

    # -- the password check --------------------------------------------------------------

    async def authenticate(self, request: AuthRequest) -> PrimaryResult:
        """Forward the login; ACCEPT only on a verified Access-Accept."""
        if not self._started or self._closed:
            raise RuntimeError("UpstreamRadius.start() must be awaited before authenticate()")
        if len(request.password) > 128:
            return PrimaryResult(PrimaryOutcome.REJECT, "password_too_long")
        invalid: str | None = None
        for server in self._candidates():
            started = time.monotonic()
            exchange = await self._exchange(server, ACCESS_REQUEST, request)
            if exchange.reply is not None:
                return self._result(exchange.reply, server, started)
            if exchange.failure == "unencodable":
                return PrimaryResult(PrimaryOutcome.REJECT, "request_unencodable")
            if self._closed:  # shutting down: not the server's fault, and no accept
                return PrimaryResult(PrimaryOutcome.UNAVAILABLE, "upstream_closed")
            invalid = exchange.invalid or invalid
            if exchange.failure is None:
                self._mark_dead(server, started, exchange.invalid)
        return self._unavailable(invalid)

    async def probe(self) -> bool:
        """One Status-Server to the first live server (or the first, if none is live)."""
        server = next((s for s in self._servers if s.alive), self._servers[0])
        return await self._status_server(server)

    def _candidates(self) -> list[_Server]:
        """Live servers in order; if all are dead, all of them anyway rather than none."""
        live = [s for s in self._servers if s.alive]
        return live or list(self._servers)

    def _result(self, reply: Any, server: _Server, started: float) -> PrimaryResult:
        log.debug("upstream_reply", server=server.name, code=reply.code,
                  ms=round((time.monotonic() - started) * 1000, 1))
        if reply.code == ACCESS_ACCEPT:
            return PrimaryResult(PrimaryOutcome.ACCEPT,
                                 reply_attributes=self._pass_through(reply))
        if reply.code == ACCESS_CHALLENGE:
            return self._challenge(reply, server)
        return PrimaryResult(PrimaryOutcome.REJECT, "primary_rejected")

    def _challenge(self, reply: Any, server: _Server) -> PrimaryResult:
        """The upstream asks a question of its own (RFC 2865 section 4.4), e.g. an OTP."""
        states = OrderedDict.get(reply, _STATE, [])
        if not states:
            # Without State the answer cannot be tied to this login (pam_radius refuses too).
            log.warning("upstream_challenge_without_state", server=server.name)
            return PrimaryResult(PrimaryOutcome.REJECT, "upstream_challenge_without_state")
        shown = tuple((n, v) for n, v in self._decode(reply)
                      if n.partition(":")[0] in ("Reply-Message", "Prompt"))
        return PrimaryResult(PrimaryOutcome.CHALLENGE, "upstream_challenge",
                             reply_attributes=shown, challenge_state=bytes(states[0]))

    def _pass_through(self, reply: Any) -> tuple[tuple[str, AttrValue], ...]:
        """The reply attributes pass_through names (or all end-to-end ones for "*")."""
        every = "*" in self._wanted
        return tuple(
            (n, v) for n, v in self._decode(reply)
            if n.partition(":")[0].lower() not in HOP_BY_HOP
            and (every or n.partition(":")[0].lower() in self._wanted)
        )

    def _decode(self, reply: Any) -> list[tuple[str, AttrValue]]:
        """Reply attributes by dictionary name, in packet order (pyrad groups the repeats of
        one attribute together); tagged ones (RFC 2868) as "Name:tag".

        Attributes our dictionary does not know cannot be named, so they are left out.
        """
        out: list[tuple[str, AttrValue]] = []
        index = self.dictionary.attrindex
        for key in OrderedDict.keys(reply):
            if not index.HasBackward(key):
                continue
            name = index.GetBackward(key)
            attr = self.dictionary.attributes[name]
            if attr.type == "tlv":
                continue
            for raw in OrderedDict.__getitem__(reply, key):
                try:
                    tag, value = reply._SplitTag(attr, raw)
                    decoded = reply._DecodeValue(attr, value)
                except (ValueError, TypeError, struct.error, IndexError):
                    log.info("upstream_attribute_undecodable", attribute=name)
                    continue
                out.append((f"{name}:{tag}" if tag else name, decoded))
        return out

    def _unavailable(self, invalid: str | None) -> PrimaryResult:
        if invalid is None:
            return PrimaryResult(PrimaryOutcome.UNAVAILABLE, "upstream_timeout")
        allowed, suppressed = self._quiet.allow(f"bad_reply/{invalid}")
        if allowed:
            log.warning("upstream_bad_reply", why=invalid, hint=_hint(invalid),
                        servers=[s.name for s in self._servers], suppressed=suppressed)
        return PrimaryResult(PrimaryOutcome.UNAVAILABLE, "upstream_bad_reply")

    # -- one request to one server -------------------------------------------------------

    async def _exchange(self, server: _Server, code: int,
                        request: AuthRequest | None, sends: int | None = None) -> _Exchange:
        """Send to one server, retransmit identical bytes, wait; never raises on the wire."""
        if self._closed:
            return _Exchange(failure="closed")
        if server.sockaddr is None and not await self._resolve(server):
            return _Exchange(failure="unresolved")
        acquired = await self._acquire(server)
        if acquired is None:
            METRICS.backend_errors.labels(METRIC_LABEL).inc()
            return _Exchange(failure="busy")
        sock, ident = acquired
        authenticator = secrets.token_bytes(16)
        try:
            data = self._encode(code, ident, authenticator, request)
        except (ValueError, TypeError, KeyError, struct.error) as exc:
            sock.release(ident)
            log.warning("upstream_request_unencodable", error=type(exc).__name__)
            return _Exchange(failure="unencodable")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = _Pending(future, authenticator, code)
        sock.pending[ident] = pending
        try:
            for attempt in range(sends or self.config.retries + 1):
                if attempt:
                    log.debug("upstream_retransmit", server=server.name, attempt=attempt)
                sock.send(data)
                done, _ = await asyncio.wait({future}, timeout=self.config.timeout_seconds)
                if done:
                    break
            reply = future.result() if future.done() and not future.cancelled() else None
            if reply is None:  # a timeout, or only replies that failed verification
                METRICS.backend_errors.labels(METRIC_LABEL).inc()
            return _Exchange(reply, pending.invalid)
        finally:
            sock.release(ident)

    def _encode(self, code: int, ident: int, authenticator: bytes,
                request: AuthRequest | None) -> bytes:
        """The request bytes: Message-Authenticator first, then the login (RFC 3579 s3.2)."""
        packet = pyrad.packet.AuthPacket(code=code, id=ident, secret=self._secret,
                                         authenticator=authenticator, dict=self.dictionary)
        packet.add_message_authenticator()
        if request is not None:
            packet["User-Name"] = request.username
            packet[2] = [hide_password(request.password, self._secret, authenticator)]
            for name in FORWARDED_ATTRIBUTES:
                for value in request.attributes.get(name, ()):
                    self._add(packet, name, value)
            if request.state is not None:
                packet["State"] = request.state
        return bytes(packet.RequestPacket())

    @staticmethod
    def _add(packet: Any, name: str, value: AttrValue) -> None:
        try:
            packet.AddAttribute(name, value)
        except (ValueError, TypeError, KeyError, struct.error):
            log.info("upstream_attribute_not_forwarded", attribute=name)

    # -- sockets and Identifiers ---------------------------------------------------------

    async def _acquire(self, server: _Server) -> tuple[_Socket, int] | None:
        """A free Identifier on one of the server's sockets, opening another when all are
        full (RFC 5080 section 2.2.1: never reuse one that is still outstanding)."""
        found = self._free_id(server)
        if found is not None:
            return found
        async with server.lock:
            found = self._free_id(server)
            if found is None and len(server.sockets) < _MAX_SOCKETS_PER_SERVER:
                try:
                    sock = await self._open_socket(server)
                except OSError as exc:
                    log.error("upstream_socket_failed", server=server.name, error=str(exc))
                    return None
                ident = sock.allocate()
                found = None if ident is None else (sock, ident)
        if found is None:
            log.warning("upstream_busy", server=server.name,
                        in_flight=sum(len(s.pending) for s in server.sockets))
        return found

    @staticmethod
    def _free_id(server: _Server) -> tuple[_Socket, int] | None:
        for sock in server.sockets:
            ident = sock.allocate()
            if ident is not None:
                return sock, ident
        return None

    async def _open_socket(self, server: _Server) -> _Socket:
        """An unconnected UDP socket: replies are matched by source address ourselves, and
        an ICMP error cannot poison the next send as it would on a connected socket."""
        raw = socket.socket(server.family, socket.SOCK_DGRAM)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            raw.bind(("::", 0) if server.family == socket.AF_INET6 else ("0.0.0.0", 0))  # noqa: S104
            raw.setblocking(False)
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_datagram_endpoint(lambda: _Socket(server, self),
                                                              sock=raw)
        except BaseException:
            raw.close()
            raise
        server.sockets.append(protocol)
        return protocol

    async def _resolve(self, server: _Server) -> bool:
        """Look the server's name up once; a failure leaves it dead until a probe works."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            METRICS.backend_errors.labels(METRIC_LABEL).inc()
            log.warning("upstream_resolve_failed", server=server.name, error=str(exc))
            self._set_alive(server, False, "resolve_failed")
            return False
        family, _, _, _, sockaddr = infos[0]
        server.family, server.sockaddr = family, tuple(sockaddr)
        return True

    # -- replies -------------------------------------------------------------------------

    def _received(self, sock: _Socket, data: bytes, addr: tuple[Any, ...]) -> None:
        """Match a datagram to its request and verify it; invalid ones are ignored."""
        server = sock.server
        if not server.matches(addr):
            self._ignored(server, "foreign_source", source=str(addr[0]))
            return
        if len(data) < 20:
            self._ignored(server, "malformed")
            return
        pending = sock.pending.get(data[1])
        if pending is None or pending.future.done():
            # Usually a late or duplicate answer to a request already settled (RFC 5080
            # section 2.2.1: silently discarded).
            log.debug("upstream_reply_unmatched", server=server.name, ident=data[1])
            return
        # A Status-Server answer only says "alive": its Response Authenticator (keyed by
        # the secret) is enough, since FreeRADIUS 3.2.1 signs no Status-Server reply.
        # Access replies are what BlastRADIUS forges, so there the signature is required.
        require = self.config.require_message_authenticator and pending.code != STATUS_SERVER
        reply, why = verify_reply(data, pending.code, pending.authenticator, self._secret,
                                  self.dictionary, require)
        if reply is None:
            pending.invalid = why
            self._ignored(server, why or "invalid")
            return
        server.last_valid = time.monotonic()
        self._set_alive(server, True, "reply")
        pending.future.set_result(reply)

    def _ignored(self, server: _Server, why: str, **extra: str) -> None:
        allowed, suppressed = self._quiet.allow(f"{server.name}/{why}")
        if allowed:
            log.warning("upstream_reply_ignored", server=server.name, why=why,
                        hint=_hint(why), suppressed=suppressed, **extra)

    # -- health --------------------------------------------------------------------------

    def _mark_dead(self, server: _Server, since: float, invalid: str | None) -> None:
        """Dead only if nothing valid came from it while we waited (FreeRADIUS's rule: one
        slow answer among many good ones is not a dead server)."""
        if server.last_valid < since:
            self._set_alive(server, False, invalid or "timeout")

    def _set_alive(self, server: _Server, alive: bool, why: str) -> None:
        if server.alive == alive:
            return
        server.alive = alive
        METRICS.backend_up.labels(METRIC_LABEL, server.name).set(1 if alive else 0)
        if alive:
            log.info("upstream_alive", server=server.name, why=why)
        else:
            log.warning("upstream_dead", server=server.name, why=why, hint=_hint(why),
                        probe_every_seconds=self.config.dead_server_seconds)

    async def _status_server(self, server: _Server) -> bool:
        """One Status-Server, never retransmitted (RFC 5997 section 4.1)."""
        exchange = await self._exchange(server, STATUS_SERVER, None, sends=1)
        if exchange.reply is not None:
            return True
        log.debug("upstream_probe_failed", server=server.name, why=exchange.invalid or "timeout")
        return False

    async def _probe_dead(self) -> None:
        """Every dead_server_seconds, probe each dead server; an answer revives it."""
        while not self._closed:
            await asyncio.sleep(self.config.dead_server_seconds)
            dead = [s for s in self._servers if not s.alive]
            try:
                await asyncio.gather(*(self._status_server(s) for s in dead))
            except Exception:  # the prober must outlive any one failure
                log.exception("upstream_probe_error")


def verify_reply(data: bytes, request_code: int, request_authenticator: bytes, secret: bytes,
                 dictionary: Dictionary, require_message_authenticator: bool,
                 ) -> tuple[Any, str | None]:
    """Decode and verify a reply; (packet, None) or (None, why it must be ignored).

    Order matters: the Response Authenticator (RFC 2865 section 3) covers the whole packet,
    so it is checked before anything in it is believed; then Message-Authenticator (RFC 2869
    section 5.14, keyed with the Request Authenticator), then Proxy-State (we send none).
    """
    if len(data) < 20:
        return None, "malformed"
    code, _, length = struct.unpack("!BBH", data[:4])
    if length < 20 or length > len(data):
        return None, "malformed"
    data = data[:length]  # octets beyond Length are padding (RFC 2865 section 3)
    if code not in _ANSWERS.get(request_code, ()):
        return None, "unexpected_code"
    expected = hashlib.md5(data[:4] + request_authenticator + data[20:] + secret,
                           usedforsecurity=False).digest()
    if not hmac.compare_digest(expected, data[4:20]):
        return None, "response_authenticator"
    try:
        reply = pyrad.packet.AuthPacket(packet=data, secret=secret, dict=dictionary)
    except (pyrad.packet.PacketError, ValueError, KeyError, IndexError, struct.error):
        return None, "malformed"
    reply.request_authenticator = request_authenticator  # salt-decryption (RFC 2868 s3.5)
    authenticators = OrderedDict.get(reply, _MESSAGE_AUTHENTICATOR, [])
    if authenticators:
        if len(authenticators) != 1 or len(authenticators[0]) != 16:
            return None, "malformed"
        if not reply.verify_message_authenticator(
                secret=secret, original_authenticator=request_authenticator,
                original_code=request_code):
            return None, "message_authenticator_invalid"
    elif require_message_authenticator:
        return None, "message_authenticator_missing"
    if OrderedDict.get(reply, _PROXY_STATE):
        return None, "foreign_proxy_state"
    return reply, None


def _hint(why: str) -> str:
    """One line an administrator can act on, for the log."""
    return {
        "response_authenticator": "the shared secret for the upstream may be wrong",
        "message_authenticator_invalid": "the shared secret for the upstream may be wrong",
        "message_authenticator_missing":
            "the upstream sends no Message-Authenticator; enable it there (FreeRADIUS >= "
            "3.2.5 does by default) or set radius_upstream.require_message_authenticator "
            "= false",
        "foreign_proxy_state": "a reply carried Proxy-State we never sent (BlastRADIUS "
                               "signature); check the path to the upstream",
        "timeout": "no answer: the server is down, or it drops our requests (a wrong shared "
                   "secret or a client entry missing for this address)",
    }.get(why, "")

