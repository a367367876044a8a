"""What an ID server's answer means, independent of which of its two APIs carried it.

The legacy form API (`legacy.py`) and REST v2 (`rest.py`) read an HTTP answer into one of
the reply values below; the client (`client.py`) decides on those values only. Keeping the
meaning here, away from sockets and threads, lets every garbage body and every error code be
tested as plain data (secsign-id-api.md sections 3 and 7).

Rules of this module: no I/O, no clock; values in, values out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from radius_proxy.pipeline.ports import PushOutcome, PushResult


class SessionState(enum.IntEnum):
    """`authsessionstate`, numbered alike in every SecSign client (section 3.3)."""

    NOSTATE = 0
    PENDING = 1
    EXPIRED = 2
    AUTHENTICATED = 3
    DENIED = 4
    SUSPENDED = 5
    CANCELED = 6
    FETCHED = 7
    INVALID = 8


#: Every SecSign client keeps polling on these two and on nothing else (section 3.3).
WAITING = frozenset({SessionState.PENDING, SessionState.FETCHED})

_FINAL: dict[int, PushOutcome] = {
    SessionState.AUTHENTICATED: PushOutcome.APPROVED,
    SessionState.DENIED: PushOutcome.DENIED,
    SessionState.EXPIRED: PushOutcome.TIMEOUT,
    SessionState.SUSPENDED: PushOutcome.CANCELED,
    SessionState.CANCELED: PushOutcome.CANCELED,
}

#: `errorcode` values the ID server uses for the SecSign ID itself (section 3.2).
UNKNOWN_ID_CODE = 20000
FROZEN_CODE = 20006

_SECSIGN_ID = re.compile(r"[\w@.\-]{1,255}", re.ASCII)
#: Compiled once: the legacy API sends these as text in every state answer.
_INT_TEXT = re.compile(r"-?\d{1,19}")
_STATE_TEXT = re.compile(r"\d{1,3}")


def state_name(state: int) -> str:
    """A readable name for logs and details, also for numbers the reference does not know."""
    try:
        return SessionState(state).name
    except ValueError:
        return f"state {state}"


def outcome_for_state(state: int) -> PushOutcome | None:
    """The push's verdict for a state, or None to keep polling.

    Only AUTHENTICATED lets a user in; NOSTATE, INVALID and any number the reference does
    not list fail, as every SecSign client treats them (section 3.3).
    """
    if state in WAITING:
        return None
    return _FINAL.get(state, PushOutcome.FAILED)


def normalize_secsign_id(text: str) -> str | None:
    """Trim and lower-case as SecSign's clients do; None when it cannot be a SecSign ID.

    The charset is the clients' own check (section 2.1), so a mapping typo is caught here
    instead of travelling to the ID server.
    """
    candidate = text.strip().lower()
    return candidate if _SECSIGN_ID.fullmatch(candidate) else None


def parse_int(value: object) -> int | None:
    """A signed 64-bit integer from JSON or from text: an `authsessionid` (it can be
    negative) or an `errorcode`. Never a bool, a float or a number out of range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _INT_TEXT.fullmatch(text):
            return None
        value = int(text)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return None


def parse_state(value: object) -> int | None:
    """An `authsessionstate` number, from JSON or from text; never a bool or a float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 1000 else None
    if isinstance(value, str) and _STATE_TEXT.fullmatch(value.strip()):
        return int(value)
    return None


# -- reply values --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Started:
    """A new auth session. `request_id` is the legacy API's session token ("" for REST)."""

    session_id: int
    request_id: str = ""
    secsign_id: str | None = None
    state: int | None = None


@dataclass(frozen=True, slots=True)
class StateReply:
    """The current state of a session, and the SecSign ID the server reports for it."""

    state: int
    secsign_id: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """A call without a payload of interest succeeded (cancel, a probe)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A TOTP passcode check's answer."""

    valid: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The ID server answered definitively with an error: no other server is asked."""

    outcome: PushOutcome
    detail: str

    def result(self) -> PushResult:
        return PushResult(self.outcome, self.detail)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No usable answer from this server (connection, timeout, 5xx): the next one is asked."""

    detail: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """The server answered something that is not the protocol: never trusted, never raised."""

    detail: str


Reply = Started | StateReply | Done | Verdict | Refused | Unavailable | Garbage


def falls_back(reply: Reply, idempotent: bool) -> bool:
    """Whether to ask the next server after this reply.

    Connection errors and 5xx always fall back. A garbage answer falls back only for calls
    that can be repeated harmlessly (state, cancel, TOTP, probe): a start that a server may
    have half-done is not sent again elsewhere, so a push never starts twice. A definitive
    answer (4xx, an error in the body, a valid state) never falls back: asking again would
    only hide the answer.
    """
    if isinstance(reply, Unavailable):
        return True
    return isinstance(reply, Garbage) and idempotent


def detail_of(reply: Reply) -> str:
    """The human part of a reply, for logs and `PushResult.detail`."""
    if isinstance(reply, Refused | Unavailable | Garbage):
        return reply.detail
    return f"unexpected {type(reply).__name__} answer"


def refusal(errorcode: int | None, message: str, prefix: str) -> Refused:
    """An ID-server error as an outcome: unknown and frozen IDs are distinct (section 3.2).

    Without an `errorcode` the message is read the way Nextcloud's client does ("does not
    exist"), so an older server that omits the code still yields UNKNOWN_ID, not FAILED.
    """
    text = message.lower()
    if errorcode == UNKNOWN_ID_CODE or (errorcode is None and "not exist" in text):
        return Refused(PushOutcome.UNKNOWN_ID, "the ID server does not know this SecSign ID")
    if errorcode == FROZEN_CODE or (errorcode is None and "frozen" in text):
        return Refused(PushOutcome.FROZEN, "the SecSign ID is frozen (concurrent logins); "
                                           "the user must reactivate it in the app")
    code = "" if errorcode is None else f" (errorcode {errorcode})"
    return Refused(PushOutcome.FAILED, f"{prefix}{code}: {clip(message)}")


def clip(text: str, limit: int = 200) -> str:
    """Server text goes into logs and details: keep it to one short line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class AuthSession:
    """A started push as the client tracks it; `server` is the one that started it, asked
    first while polling because a session may live only there."""

    session_id: int
    request_id: str
    secsign_id: str
    server: str


def server_order(
    servers: Sequence[str], down_until: Mapping[str, float], now: float, first: str | None = None
) -> list[str]:
    """Every server once, in configured order, but those that failed recently last.

    A server that just failed is not skipped (it may be the only one left), only asked after
    the others, so a hanging primary costs one request timeout per `SERVER_RETRY_SECONDS`
    rather than one per push. `first` (the server that started a session) leads while it is
    healthy, because a session may be known only to the server that created it.
    """
    healthy = [s for s in servers if down_until.get(s, 0.0) <= now]
    resting = [s for s in servers if down_until.get(s, 0.0) > now]
    if first is not None and first in healthy:
        healthy.remove(first)
        healthy.insert(0, first)
    return healthy + resting
