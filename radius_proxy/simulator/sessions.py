"""The simulated ID server's memory: auth sessions, their state machine, the request log.

States and their numbers are those of secsign-id-api.md section 3.3. A session's state is
computed lazily from the injected clock whenever it is looked at, so a scripted ``approve:2``
needs no timer task and a unit test can move time by hand. Outcomes the real server reports
as errors (unknown or frozen ID) are returned as ``Refusal`` values, not raised.

Rules of this module: no I/O. The clock is injected; a lock makes the object safe to drive
from a test thread while the HTTP server runs on its own event-loop thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
MAX_SESSIONS = 10_000
MAX_LOG_ENTRIES = 100_000


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass
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
    ) -> None:
        if not session_lifetime_seconds > 0:
            raise ValueError("session_lifetime_seconds must be > 0")
        self._rules = tuple(rules)
        self._account = parse_account(account)
        self._lifetime = float(session_lifetime_seconds)
        self._clock = clock
        self._epoch_offset = time.time() - clock()
        self._totp_key = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self._sessions: dict[int, _Session] = {}
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
            self._log.clear()

    # -- sessions -----------------------------------------------------------------------
    def refusal_for(self, secsignid: str) -> Refusal | None:
        """Whether the ID exists and may authenticate, by the first matching rule."""
        return find_rule(self._rules, secsignid).refusal()

    def start(self, secsignid: str, servicename: str, serviceaddress: str) -> SessionInfo | Refusal:
        """ReqRequestAuthSession: suspend a waiting session of the same ID, open a new one."""
        with self._lock:
            refusal = self.refusal_for(secsignid)
            if refusal is not None:
                return refusal
            now = self._clock()
            self._prune(now)
            for session in self._sessions.values():
                self._advance(session, now)
                if session.info.secsignid == secsignid and session.info.state in WAITING:
                    self._set_state(session, AuthSessionState.SUSPENDED)
            info = SessionInfo(self._new_id(), secrets.token_hex(32).upper(), secsignid,
                               servicename, serviceaddress, AuthSessionState.PENDING,
                               now + self._epoch_offset)
            self._sessions[info.id] = _Session(info, now, find_rule(self._rules, secsignid))
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

    @staticmethod
    def _set_state(session: _Session, state: AuthSessionState) -> SessionInfo:
        session.info = replace(session.info, state=state)
        return session.info

    def _new_id(self) -> int:
        """A random signed 64-bit id, like the real server's (it can be negative)."""
        while True:
            candidate = secrets.randbits(64) - 2**63
            if candidate != 0 and candidate not in self._sessions:
                return candidate

    def _prune(self, now: float) -> None:
        """Bound memory: drop sessions long past their lifetime, and the oldest beyond a cap."""
        horizon = self._lifetime + RETAIN_SECONDS
        for key in [k for k, s in self._sessions.items() if now - s.started > horizon]:
            del self._sessions[key]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
