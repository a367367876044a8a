"""The simulated ID server's memory: auth sessions, their state machine, the request log.

States and their numbers are those of secsign-id-api.md section 3.3. A session's state is
computed lazily from the injected clock whenever it is looked at, so a scripted ``approve:2``
needs no timer task and a unit test can move time by hand. Outcomes the real server reports
as errors (unknown or frozen ID) are returned as ``Refusal`` values, not raised.

Every protocol request costs O(1), however many sessions are retained: the benchmarks keep
10 000+ logins waiting at once. Sessions live in a dict by id; an index holds the newest
session of each SecSign ID (the only one that can still be waiting, since a start suspends
the waiting one); and a queue in start order, which is also expiry order, lets a start drop
the sessions past their retention from the front without looking at the others.

Rules of this module: no I/O. The clock is injected; a lock makes the object safe to drive
from a test thread while the HTTP server runs on its own event-loop thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from radius_proxy.simulator import totp
from radius_proxy.simulator.rules import Refusal, Rule, find_rule


class AuthSessionState(IntEnum):
    """``authsessionstate`` values, identical in every SecSign client."""

    NOSTATE = 0
    PENDING = 1
    EXPIRED = 2
    AUTHENTICATED = 3
    DENIED = 4
    SUSPENDED = 5
    CANCELED = 6
    FETCHED = 7
    INVALID = 8


WAITING = frozenset({AuthSessionState.PENDING, AuthSessionState.FETCHED})
_SCRIPTED_END = {
    "approve": AuthSessionState.AUTHENTICATED,
    "deny": AuthSessionState.DENIED,
    "expire": AuthSessionState.EXPIRED,
}
#: How long a finished session stays visible on the control API after its lifetime ended.
RETAIN_SECONDS = 600.0
#: Sessions kept at most, oldest dropped first: room for 10 000+ logins waiting at once plus
#: the recent history, at about 0.5 KiB each (50 MiB when full).
MAX_SESSIONS = 100_000
MAX_LOG_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of one auth session; ``created`` is Unix time."""

    id: int
    request_id: str
    secsignid: str
    servicename: str
    serviceaddress: str
    state: AuthSessionState
    created: float

    def to_json(self) -> dict[str, object]:
        """The control-API shape; the id is a string because JavaScript numbers hold 53 bits."""
        return {
            "id": str(self.id),
            "secsignid": self.secsignid,
            "servicename": self.servicename,
            "serviceaddress": self.serviceaddress,
            "state": int(self.state),
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One protocol request as received; ``kind`` is start|state|cancel|totp|release."""

    kind: str
    api: str
    secsignid: str | None
    time: float
    authsessionid: int | None = None

    def to_json(self) -> dict[str, object]:
        sid = None if self.authsessionid is None else str(self.authsessionid)
        return {"type": self.kind, "api": self.api, "secsignid": self.secsignid,
                "time": self.time, "authsessionid": sid}


@dataclass(slots=True)
class _Session:
    info: SessionInfo
    started: float
    rule: Rule


def parse_account(account: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` to a pair; ValueError when the user part is missing."""
    if account is None:
        return None
    user, sep, password = account.partition(":")
    if not sep or not user:
        raise ValueError("account must be USER:PASSWORD with a non-empty USER")
    return user, password


class Simulator:
    """Sessions, rules and the request log of one simulated SecSign ID server."""

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        account: str | None = None,
        session_lifetime_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_sessions: int | None = None,
        retain_seconds: float | None = None,
    ) -> None:
        """``max_sessions`` and ``retain_seconds`` default to the module's ``MAX_SESSIONS`` and
        ``RETAIN_SECONDS`` as they are when the simulator is made."""
        if not session_lifetime_seconds > 0:
            raise ValueError("session_lifetime_seconds must be > 0")
        self._rules = tuple(rules)
        self._account = parse_account(account)
        self._lifetime = float(session_lifetime_seconds)
        self._max_sessions = max(1, MAX_SESSIONS if max_sessions is None else max_sessions)
        retain = RETAIN_SECONDS if retain_seconds is None else retain_seconds
        self._horizon = self._lifetime + retain
        self._clock = clock
        self._epoch_offset = time.time() - clock()
        self._totp_key = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self._sessions: dict[int, _Session] = {}
        self._newest: dict[str, int] = {}  # SecSign ID -> its newest session's id
        self._order: deque[_Session] = deque()  # start order, which is expiry order
        self._log: deque[LogEntry] = deque(maxlen=MAX_LOG_ENTRIES)

    # -- configuration ------------------------------------------------------------------
    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """Replace the rules; sessions already started keep the rule they began with."""
        with self._lock:
            self._rules = tuple(rules)

    def wall_time(self) -> float:
        """Unix time as seen through the injected clock (log times, TOTP)."""
        return self._clock() + self._epoch_offset

    def credentials_ok(self, user: str, password: str) -> bool:
        """REST Basic auth: any non-empty credentials, or exactly the configured account."""
        if self._account is None:
            return bool(user or password)
        want_user, want_password = self._account
        user_ok = secrets.compare_digest(user.encode(), want_user.encode())
        return secrets.compare_digest(password.encode(), want_password.encode()) and user_ok

    # -- the log ------------------------------------------------------------------------
    def record(
        self, kind: str, api: str, secsignid: str | None, authsessionid: int | None = None
    ) -> None:
        """Append one protocol request to the log (tests assert on it)."""
        with self._lock:
            self._log.append(LogEntry(kind, api, secsignid, self.wall_time(), authsessionid))

    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """Forget every session and log entry; rules and account stay."""
        with self._lock:
            self._sessions.clear()
            self._newest.clear()
            self._order.clear()
            self._log.clear()

    # -- sessions -----------------------------------------------------------------------
    def refusal_for(self, secsignid: str) -> Refusal | None:
        """Whether the ID exists and may authenticate, by the first matching rule."""
        return find_rule(self._rules, secsignid).refusal()

    def start(self, secsignid: str, servicename: str, serviceaddress: str) -> SessionInfo | Refusal:
        """ReqRequestAuthSession: suspend a waiting session of the same ID, open a new one."""
        with self._lock:
            rule = find_rule(self._rules, secsignid)
            refusal = rule.refusal()
            if refusal is not None:
                return refusal
            now = self._clock()
            self._prune(now)
            self._suspend_waiting(secsignid, now)
            session_id, request_id = self._new_ids()
            info = SessionInfo(session_id, request_id, secsignid, servicename, serviceaddress,
                               AuthSessionState.PENDING, now + self._epoch_offset)
            session = _Session(info, now, rule)
            self._sessions[info.id] = session
            self._newest[secsignid] = info.id
            self._order.append(session)
            return info

    def poll(self, session_id: int) -> SessionInfo | None:
        """The current state; None for an unknown session or one that was cancelled."""
        with self._lock:
            session = self._current(session_id)
            if session is None or session.info.state is AuthSessionState.CANCELED:
                return None
            return session.info

    def cancel(self, session_id: int) -> SessionInfo | None:
        """ReqCancelAuthSession: state 6 from any state; None if unknown or cancelled already."""
        with self._lock:
            session = self._current(session_id)
            if session is None or session.info.state is AuthSessionState.CANCELED:
                return None
            return self._set_state(session, AuthSessionState.CANCELED)

    def decide(self, session_id: int, approve: bool) -> SessionInfo | None:
        """The user taps Approve or Deny; a session no longer waiting is returned unchanged."""
        with self._lock:
            session = self._current(session_id)
            if session is None:
                return None
            if session.info.state not in WAITING:
                return session.info
            end = AuthSessionState.AUTHENTICATED if approve else AuthSessionState.DENIED
            return self._set_state(session, end)

    def sessions(self) -> list[SessionInfo]:
        """Every retained session, oldest first, with its state brought up to date."""
        with self._lock:
            now = self._clock()
            for session in self._sessions.values():
                self._advance(session, now)
            return sorted((s.info for s in self._sessions.values()), key=lambda i: i.created)

    # -- TOTP ---------------------------------------------------------------------------
    def totp_code(self, secsignid: str) -> str | Refusal:
        """The code the ID's app would show right now."""
        refusal = self.refusal_for(secsignid)
        if refusal is not None:
            return refusal
        return totp.totp(totp.derive_secret(self._totp_key, secsignid), self.wall_time())

    def verify_totp(self, secsignid: str, code: str) -> bool | Refusal:
        refusal = self.refusal_for(secsignid)
        if refusal is not None:
            return refusal
        return totp.verify(totp.derive_secret(self._totp_key, secsignid), code, self.wall_time())

    # -- internals ----------------------------------------------------------------------
    def _current(self, session_id: int) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            self._advance(session, self._clock())
        return session

    def _advance(self, session: _Session, now: float) -> None:
        """Play the session's rule forward to ``now``: FETCHED halfway, then the outcome."""
        if session.info.state not in WAITING:
            return
        elapsed = now - session.started
        rule = session.rule
        end_at, end = self._lifetime, AuthSessionState.EXPIRED
        if rule.action in _SCRIPTED_END and rule.seconds < self._lifetime:
            end_at, end = rule.seconds, _SCRIPTED_END[rule.action]
        if elapsed >= end_at:
            self._set_state(session, end)
        elif rule.action in ("approve", "deny") and elapsed >= rule.seconds / 2:
            self._set_state(session, AuthSessionState.FETCHED)

    def _suspend_waiting(self, secsignid: str, now: float) -> None:
        """A new start suspends the ID's waiting session. Only its newest session can be
        waiting (every earlier start suspended the one before), so the index finds it."""
        newest = self._sessions.get(self._newest.get(secsignid, 0))
        if newest is not None:
            self._advance(newest, now)
            if newest.info.state in WAITING:
                self._set_state(newest, AuthSessionState.SUSPENDED)

    @staticmethod
    def _set_state(session: _Session, state: AuthSessionState) -> SessionInfo:
        old = session.info  # built directly: dataclasses.replace costs several times more
        session.info = SessionInfo(old.id, old.request_id, old.secsignid, old.servicename,
                                   old.serviceaddress, state, old.created)
        return session.info

    def _new_ids(self) -> tuple[int, str]:
        """A random signed 64-bit session id, like the real server's (it can be negative),
        and a 64-hex-digit request id; one read of the system's CSPRNG for both."""
        while True:
            raw = secrets.token_bytes(40)
            candidate = int.from_bytes(raw[:8], "big", signed=True)
            if candidate != 0 and candidate not in self._sessions:
                return candidate, raw[8:].hex().upper()

    def _prune(self, now: float) -> None:
        """Bound memory: drop sessions long past their lifetime, and the oldest beyond the
        cap. Both are at the front of the start-order queue, so this is O(1) amortised."""
        order = self._order
        while order and (now - order[0].started > self._horizon
                         or len(order) >= self._max_sessions):
            self._drop(order.popleft())

    def _drop(self, session: _Session) -> None:
        info = session.info
        del self._sessions[info.id]
        if self._newest.get(info.secsignid) == info.id:
            del self._newest[info.secsignid]
