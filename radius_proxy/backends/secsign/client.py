"""The SecSign ID client: the pipeline's `SecondFactor`, on the legacy form API or REST v2.

A push is: start a session -> poll, repeat -> a final state or our deadline -> on the
deadline, or when the awaiting task is cancelled, withdraw the session at the ID server so
the phone stops asking. Thousands of pushes wait at once, so a waiting push is only a future
and an entry in one poll scheduler (`poller.py`), whose few workers send the due state
requests; HTTP runs on the loop (our HTTP/1.1 client), or for a blocking transport on a
`ThreadPoolExecutor`, either way at most `secsign.max_connections` exchanges at once.

Outcomes are values (`PushResult`), never exceptions. The one distinction that needs care is
UNREACHABLE versus FAILED: `failmode = "safe"` lets a user in with the password alone on
UNREACHABLE, so UNREACHABLE means exactly "no ID server answered the start at all". Anything
the server did say (an unknown ID, a refusal, nonsense, a failure after the push began) is a
reject.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

import structlog

from radius_proxy.backends.secsign.aio_transport import Http11Transport
from radius_proxy.backends.secsign.legacy import LegacyApi
from radius_proxy.backends.secsign.poller import QUIET, PollScheduler
from radius_proxy.backends.secsign.replies import (
    AuthSession,
    Done,
    Garbage,
    Refused,
    Reply,
    SessionState,
    Started,
    StateReply,
    Unavailable,
    Verdict,
    detail_of,
    falls_back,
    normalize_secsign_id,
    outcome_for_state,
    server_order,
    state_name,
)
from radius_proxy.backends.secsign.rest import RestApi
from radius_proxy.backends.secsign.transport import (
    ErrorKind,
    HttpRequest,
    HttpResponse,
    Transport,
    TransportError,
)
from radius_proxy.config import SecSignConfig
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline.ports import PushOutcome, PushResult

_log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Poll rounds in a row without a usable answer from any server before a push FAILS.
MAX_POLL_FAILURES = 3
#: A server that failed is asked after the healthy ones for this long.
SERVER_RETRY_SECONDS = 30.0
#: Spread polls of pushes that started together, so they do not hit the server in waves.
JITTER = 0.1
#: Slack over the request timeout for the loop-side guard of a blocking transport (DNS is
#: outside requests' timeout). An async transport keeps its own timeout (its contract).
GUARD_SECONDS = 1.0
#: Polls due within this share of the poll interval go out on the same timer wake-up.
TICK_SHARE = 0.02
#: ...but never more than this many seconds early.
MAX_TICK = 0.01
PASSCODE = re.compile(r"[0-9]{4,10}")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
#: The `backend` label of this module's metrics (the config section).
METRIC_LABEL = "secsign"

#: An HTTP exchange on the loop: `await transport(request, seconds)`, TransportError if none.
AsyncTransport = Callable[[HttpRequest, float], Awaitable[HttpResponse]]


class _Deadline:
    """What a push's future holds when `push_timeout_seconds` ran out first."""


_DEADLINE: Final = _Deadline()


class Dialect(Protocol):
    """What the client needs of an API: request builders and answer readers (no I/O)."""

    name: str

    def start(self, server: str, secsign_id: str, service_name: str,
              service_address: str) -> HttpRequest: ...
    def state(self, server: str, session: AuthSession) -> HttpRequest: ...
    def cancel(self, server: str, session: AuthSession) -> HttpRequest: ...
    def read_start(self, response: HttpResponse) -> Reply: ...
    def read_state(self, response: HttpResponse, session: AuthSession) -> Reply: ...
    def read_cancel(self, response: HttpResponse) -> Reply: ...


@dataclass(slots=True, eq=False)
class _Watch:
    """A waiting push as the poll scheduler holds it; `state` is the last one seen.

    `log_keys` are the request's logging context (its request_id and client), which the
    scheduler's workers do not run in: each poll binds them, so its lines carry them too.
    """

    session: AuthSession
    api: Dialect
    future: asyncio.Future[Reply | _Deadline]
    state: int
    log_keys: dict[str, Any]
    failures: int = 0

    def request(self, server: str) -> HttpRequest:
        return self.api.state(server, self.session)

    def read(self, response: HttpResponse) -> Reply:
        return self.api.read_state(response, self.session)


#: A started push, waiting for the phone, or the outcome of a start that went no further.
Begun = _Watch | PushResult


class SecSignClient:
    """`SecondFactor` against the SecSign ID servers of `config`, tried in order.

    By default HTTP runs on the event loop (`aio_transport.py`), and so does any
    async `transport`; a blocking one (tests, or requests via `RequestsTransport`) runs on a
    bounded thread pool instead. TLS verification is always on (`ca_file` or the system CAs).
    """

    def __init__(self, config: SecSignConfig, *,
                 transport: Transport | AsyncTransport | None = None) -> None:
        self._config = config
        self._servers = tuple(server.rstrip("/") for server in config.servers)
        self._rest = RestApi(config)
        self._api: Dialect = LegacyApi(config) if config.api == "legacy" else self._rest
        self._owned: Http11Transport | None = None
        self._aio: AsyncTransport | None = None
        self._transport: Transport | None = None
        if transport is None:
            self._aio = self._owned = Http11Transport(config.ca_file, config.max_connections)
        elif _is_async(transport):
            self._aio = transport  # type: ignore[assignment]  # checked by _is_async
        else:
            self._transport = transport  # type: ignore[assignment]
        self._timeout = config.request_timeout_seconds
        # threads only for a blocking transport; an async one runs on the loop
        self._executor = None if self._transport is None else \
            ThreadPoolExecutor(config.max_connections, thread_name_prefix="secsign")
        self._slots = asyncio.Semaphore(config.max_connections)
        self._down_until: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._rng = random.Random()  # noqa: S311 (poll jitter, not a secret)
        interval = config.poll_interval_seconds
        self._poll_low = interval * (1 - JITTER)
        self._poll_spread = interval * 2 * JITTER
        self._polls = PollScheduler[_Watch](self._poll, config.max_connections,
                                             min(MAX_TICK, interval * TICK_SHARE))
        self._orders = {first: (first, *(s for s in self._servers if s != first))
                        for first in self._servers}
        self._closing = self._closed = False
        _warn_about(config, self._servers)
        for server in self._servers:
            METRICS.backend_up.labels(METRIC_LABEL, server).set(1)

    # -- the SecondFactor port ------------------------------------------------------------
    async def push(self, secsign_id: str, service_name: str, service_address: str) -> PushResult:
        """Send a push and wait for the phone, at most `push_timeout_seconds`."""
        if self._closing:
            return PushResult(PushOutcome.FAILED, "the SecSign ID client is closed")
        asked = normalize_secsign_id(secsign_id)
        if asked is None:
            _log.warning("secsign.invalid_id", secsign_id=secsign_id[:80])
            return PushResult(PushOutcome.UNKNOWN_ID, "not a valid SecSign ID")
        name = service_name.strip() or self._config.plugin_name or "radius-proxy"
        address = service_address.strip() or name
        deadline = asyncio.get_running_loop().time() + self._config.push_timeout_seconds
        begun = await self._begin(asked, name, address, deadline)
        if isinstance(begun, PushResult):
            return _finished(asked, begun)
        return _finished(asked, await self._wait(begun, deadline))

    async def verify_code(self, secsign_id: str, code: str) -> PushResult:
        """Check a TOTP passcode at the ID server (REST only: the legacy API has no TOTP)."""
        if self._closing:
            return PushResult(PushOutcome.FAILED, "the SecSign ID client is closed")
        asked = normalize_secsign_id(secsign_id)
        if asked is None:
            return PushResult(PushOutcome.UNKNOWN_ID, "not a valid SecSign ID")
        if self._config.api == "legacy" and not self._config.pin_account:
            return PushResult(PushOutcome.FAILED, "passcodes need the REST API")
        digits = code.strip()
        if not PASSCODE.fullmatch(digits):
            return PushResult(PushOutcome.DENIED, "not a passcode")
        rest = self._rest
        try:
            async with asyncio.timeout(self._config.push_timeout_seconds):
                _, reply = await self._ask(lambda s: rest.verify(s, asked, digits),
                                           rest.read_verify, idempotent=True, what="totp")
        except TimeoutError:
            return PushResult(PushOutcome.TIMEOUT, "no ID server answered the passcode check")
        if isinstance(reply, Verdict):
            _log.debug("secsign.passcode", secsign_id=asked, valid=reply.valid)
            return PushResult(PushOutcome.APPROVED if reply.valid else PushOutcome.DENIED,
                              "passcode valid" if reply.valid else "wrong passcode")
        return _failure(asked, reply)

    async def probe(self) -> bool:
        """Whether some ID server gives any HTTP answer below 500 (for /readyz and test-user).

        REST asks the harmless ServerInfo call; the legacy API has none, so its root is asked.
        """
        if self._closing:
            return False
        rest = self._rest

        def build(server: str) -> HttpRequest:
            if self._api is rest:
                return rest.probe(server)
            return HttpRequest("GET", server + "/")

        _, reply = await self._ask(build, rest.read_probe, idempotent=True, what="probe")
        return isinstance(reply, Done)

    async def close(self) -> None:
        """Let cancels in flight finish (bounded by the request timeout), then free threads
        and connections. New pushes after this fail."""
        if self._closing:
            return
        self._closing = True
        if self._background:
            _, late = await asyncio.wait(set(self._background), timeout=self._timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._closed = True
        await self._polls.close(_closed)
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._owned is not None:
            await self._owned.close()

    # -- a push, step by step ---------------------------------------------------------------
    async def _begin(self, asked: str, name: str, address: str, deadline: float) -> Begun:
        """Start the session, in a task of its own so that giving up cannot lose it.

        If the deadline passes or the caller is cancelled while the start is in flight, the
        ID server may already have created the session; the start then runs on, and its
        session is withdrawn as soon as it is known. Once started, the task is dropped: a
        waiting push holds no task of its own.
        """
        start = asyncio.get_running_loop().create_task(self._start(asked, name, address))
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(start)
        except TimeoutError:
            self._spawn(self._cancel_when_started(start))
            return PushResult(PushOutcome.TIMEOUT, "no ID server answered within "
                                                   f"{self._config.push_timeout_seconds:g} s")
        except (asyncio.CancelledError, Exception):  # a bug re-raises to the server's boundary
            _log.debug("secsign.push.abandoned", secsign_id=asked)
            self._spawn(self._cancel_when_started(start))
            raise

    async def _start(self, asked: str, name: str, address: str) -> Begun:
        api = self._api
        server, reply = await self._ask(lambda s: api.start(s, asked, name, address),
                                         api.read_start, idempotent=False, what="start")
        if isinstance(reply, Started) and server is not None:
            session = AuthSession(reply.session_id, reply.request_id, asked, server)
            _log.debug("secsign.push.started", secsign_id=asked, server=server, api=api.name,
                       authsessionid=reply.session_id)
            state = SessionState.PENDING if reply.state is None else reply.state
            first = StateReply(state, reply.secsign_id)
            if _still_waiting(session, first):
                return _Watch(session, api, asyncio.get_running_loop().create_future(), state,
                              structlog.contextvars.get_contextvars())
            return self._conclude(session, first)
        return _failure(asked, reply)

    async def _wait(self, watch: _Watch, deadline: float) -> PushResult:
        """Wait for a final state, polled by the scheduler; withdraw the push unless the
        phone or the server ended it.

        The deadline is a plain timer that resolves the push's future: it ends the wait on
        time even while a poll is in flight, and needs no task of its own.
        """
        loop = asyncio.get_running_loop()
        self._polls.schedule(watch, loop.time() + self._interval())
        expiry = loop.call_at(deadline, _expire, watch.future, context=QUIET)
        try:
            final = await watch.future
        except (asyncio.CancelledError, Exception):  # a bug re-raises to the server's boundary
            _log.debug("secsign.push.abandoned", secsign_id=watch.session.secsign_id)
            self._withdraw(watch.session)
            raise
        finally:
            expiry.cancel()
        if isinstance(final, _Deadline):
            self._withdraw(watch.session)
            return PushResult(PushOutcome.TIMEOUT, "the phone did not answer within "
                                                   f"{self._config.push_timeout_seconds:g} s")
        return self._conclude(watch.session, final)

    def _conclude(self, session: AuthSession, reply: Reply) -> PushResult:
        """A started push's final answer as its outcome; a FAILED push is withdrawn, since
        the session may still be open at the ID server."""
        result = _verdict(session, reply)
        if result.outcome is PushOutcome.FAILED:
            self._withdraw(session)
        return result

    async def _poll(self, watch: _Watch) -> None:
        """One state request for a waiting push (run by the scheduler's workers): schedule
        the next one, or hand the final answer to the push's coroutine.

        The verdict, and its log line, is left to that coroutine. A worker runs in a context
        of its own, polling one push after another, so each poll replaces the worker's log
        keys with its request's. MAX_POLL_FAILURES rounds in a row without a usable answer
        end the wait.
        """
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**watch.log_keys)
        session = watch.session
        _, reply = await self._ask(watch.request, watch.read, idempotent=True,
                                   first=session.server, what="state")
        if watch.future.done():  # the deadline passed, or the caller gave up, meanwhile
            return
        if isinstance(reply, StateReply):
            watch.failures = 0
            if _still_waiting(session, reply):
                if reply.state != watch.state:
                    watch.state = reply.state
                    _log.debug("secsign.push.state", secsign_id=session.secsign_id,
                               authsessionid=session.session_id, state=state_name(reply.state))
                self._polls.schedule(watch, asyncio.get_running_loop().time() + self._interval())
                return
        elif not isinstance(reply, Refused):
            watch.failures += 1
            _log.debug("secsign.push.poll_failed", secsign_id=session.secsign_id,
                       attempt=watch.failures, error=detail_of(reply))
            if watch.failures < MAX_POLL_FAILURES:
                self._polls.schedule(watch, asyncio.get_running_loop().time() + self._interval())
                return
        watch.future.set_result(reply)

    def _withdraw(self, session: AuthSession) -> None:
        """Cancel the push's session at the ID server, so the phone stops asking.

        The cancel runs as its own task, so a second cancellation of the caller cannot stop
        it, and the caller does not wait for it: the NAS must get its reject before its own
        timeout, which the push timeout already nearly fills. `close()` waits for it.
        """
        self._spawn(self._cancel(session))

    async def _cancel_when_started(self, start: asyncio.Task[Begun]) -> None:
        try:
            begun = await start
        except Exception:  # the start itself broke; push() re-raises it
            return
        if not isinstance(begun, PushResult):
            await self._cancel(begun.session)

    async def _cancel(self, session: AuthSession) -> None:
        api = self._api
        _, reply = await self._ask(lambda s: api.cancel(s, session), api.read_cancel,
                                   idempotent=True, first=session.server, what="cancel")
        if isinstance(reply, Done):
            _log.debug("secsign.push.cancelled", secsign_id=session.secsign_id,
                       authsessionid=session.session_id)
        else:
            _log.warning("secsign.cancel_failed", secsign_id=session.secsign_id,
                         error=detail_of(reply))

    def _interval(self) -> float:
        """The poll interval with +-JITTER, so pushes that started together spread out."""
        return self._poll_low + self._poll_spread * self._rng.random()

    # -- servers and HTTP ---------------------------------------------------------------------
    async def _ask(
        self,
        build: Callable[[str], HttpRequest],
        read: Callable[[HttpResponse], Reply],
        *,
        idempotent: bool,
        what: str,
        first: str | None = None,
    ) -> tuple[str | None, Reply]:
        """Ask the servers in order until one answers definitively (see `falls_back`).

        When none does: Garbage if any answered nonsense, else Unavailable, with every
        server's problem in the detail.
        """
        if not self._servers:  # never UNREACHABLE: failmode "safe" would let users in
            return None, Refused(PushOutcome.FAILED, "no ID server configured")
        problems: list[str] = []
        nonsense = False
        for server in self._order(first):
            if self._closed:
                return None, Refused(PushOutcome.FAILED, "the SecSign ID client is closed")
            try:
                reply = read(await self._send(build(server)))
            except TransportError as error:
                reply = _unanswered(error)
            if not falls_back(reply, idempotent):
                self._healthy(server)
                return server, reply
            self._fall_back(server, reply, what)
            problems.append(f"{server}: {detail_of(reply)}")
            nonsense = nonsense or isinstance(reply, Garbage)
        detail = "; ".join(problems)
        return None, Garbage(detail) if nonsense else Unavailable(detail)

    def _order(self, first: str | None) -> tuple[str, ...] | list[str]:
        """`server_order`, precomputed for the common case: every server healthy."""
        if self._down_until:
            return server_order(self._servers, self._down_until, time.monotonic(), first)
        return self._servers if first is None else self._orders.get(first, self._servers)

    async def _send(self, request: HttpRequest) -> HttpResponse:
        """One exchange, on the loop or on a worker thread (a blocking transport).

        A slot is held until the exchange is really done, so at most `max_connections` run,
        even when a caller gave up waiting. Our transport has the same bound, but its queue
        counts toward the request's timeout: a burst of starts would then time out in the
        queue and mark a healthy server down. Here the wait has no deadline. On the loop the
        transport's own timeout bounds the exchange: a second timer per exchange cost more
        than the rest of a poll, and a push's deadline still ends its wait on time whatever
        a transport does.
        """
        if self._aio is not None:
            if self._closed:
                raise TransportError("the SecSign ID client is closed")
            async with self._slots:
                return await self._aio(request, self._timeout)
        assert self._transport is not None
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        await self._slots.acquire()
        try:
            future = loop.run_in_executor(self._executor, self._transport, request,
                                          self._timeout)
        except RuntimeError:  # the executor is shut down
            self._slots.release()
            raise TransportError("the SecSign ID client is closed") from None
        future.add_done_callback(functools.partial(_settle, self._slots))
        try:
            async with asyncio.timeout(self._timeout + GUARD_SECONDS):
                return await asyncio.shield(future)
        except TimeoutError:
            raise TransportError(f"no answer within {self._timeout:g} s") from None

    def _fall_back(self, server: str, reply: Reply, what: str) -> None:
        now = time.monotonic()
        was_up = self._down_until.get(server, 0.0) <= now
        self._down_until[server] = now + SERVER_RETRY_SECONDS
        METRICS.backend_errors.labels(METRIC_LABEL).inc()
        METRICS.backend_up.labels(METRIC_LABEL, server).set(0)
        event = "secsign.server_fallback"
        detail = detail_of(reply)
        if was_up:
            _log.warning(event, server=server, request=what, error=detail)
        else:
            _log.debug(event, server=server, request=what, error=detail)

    def _healthy(self, server: str) -> None:
        if self._down_until.pop(server, None) is not None:
            METRICS.backend_up.labels(METRIC_LABEL, server).set(1)
            _log.info("secsign.server_up", server=server)

    def _spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task the client keeps a reference to (and `close` waits for)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _still_waiting(session: AuthSession, reply: StateReply) -> bool:
    """A state the phone has yet to leave, reported for the SecSign ID that was asked."""
    return outcome_for_state(reply.state) is None and _same_id(session, reply)


def _same_id(session: AuthSession, reply: StateReply) -> bool:
    """The ID check: the server may report the ID, and it must be ours (any spelling)."""
    reported = reply.secsign_id
    return reported is None or reported == session.secsign_id or \
        normalize_secsign_id(reported) == session.secsign_id


def _verdict(session: AuthSession, reply: Reply) -> PushResult:
    """A wait's final answer as an outcome, with the log line it deserves."""
    if isinstance(reply, StateReply):
        if not _same_id(session, reply):
            _log.warning("secsign.push.wrong_id", secsign_id=session.secsign_id,
                         reported=(reply.secsign_id or "")[:80],
                         authsessionid=session.session_id)
            return PushResult(PushOutcome.FAILED, "the ID server reported another SecSign ID")
        return PushResult(outcome_for_state(reply.state) or PushOutcome.FAILED,
                          state_name(reply.state))
    if isinstance(reply, Refused):
        return _failure(session.secsign_id, reply)
    return PushResult(PushOutcome.FAILED,
                      f"the ID server failed during the push: {detail_of(reply)}")


def _unanswered(error: TransportError) -> Reply:
    """A failed exchange as a reply. Bytes that are not HTTP are an answer, and nonsense:
    a start that got them is FAILED, never UNREACHABLE (which `failmode = "safe"` would let
    in), and is not sent to the next server. Everything else means "ask the next one"."""
    if error.kind is ErrorKind.GARBAGE:
        return Garbage(str(error))
    return Unavailable(str(error))


def _expire(future: asyncio.Future[Reply | _Deadline]) -> None:
    if not future.done():
        future.set_result(_DEADLINE)


def _closed(watch: _Watch) -> None:
    watch.future.set_result(Refused(PushOutcome.FAILED, "the SecSign ID client is closed"))


def _is_async(transport: object) -> bool:
    """Whether calling the transport gives an awaitable (a coroutine function or object)."""
    return inspect.iscoroutinefunction(transport) or \
        inspect.iscoroutinefunction(type(transport).__call__)


def _failure(asked: str, reply: Reply) -> PushResult:
    """A reply that is not the expected one, as an outcome, with the log line it deserves."""
    if isinstance(reply, Unavailable):
        _log.warning("secsign.unreachable", secsign_id=asked, error=reply.detail)
        return PushResult(PushOutcome.UNREACHABLE, f"no ID server answered: {reply.detail}")
    if isinstance(reply, Refused):
        event = {PushOutcome.UNKNOWN_ID: "secsign.unknown_id",
                 PushOutcome.FROZEN: "secsign.frozen"}.get(reply.outcome, "secsign.refused")
        _log.warning(event, secsign_id=asked, detail=reply.detail)
        return reply.result()
    detail = detail_of(reply)
    _log.warning("secsign.bad_answer", secsign_id=asked, error=detail)
    return PushResult(PushOutcome.FAILED, f"the ID server answered nonsense: {detail}")


def _finished(asked: str, result: PushResult) -> PushResult:
    _log.debug("secsign.push.finished", secsign_id=asked, outcome=result.outcome.value,
               detail=result.detail)
    return result


def _settle(slots: asyncio.Semaphore, future: asyncio.Future[HttpResponse]) -> None:
    """Free the slot, and collect an error nobody waits for any more (no "never retrieved")."""
    slots.release()
    if not future.cancelled():
        future.exception()


def _warn_about(config: SecSignConfig, servers: tuple[str, ...]) -> None:
    """Settings that work but are probably wrong, said once at start."""
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            _log.warning("secsign.insecure_server", server=server,
                         fix="use https:// (plain http is for the local simulator)")
    if config.api == "rest" and not config.pin_account:
        _log.warning("secsign.no_pin_account", fix="set secsign.pin_account: REST needs it")


__all__ = ["Dialect", "SecSignClient"]
