"""The ports of the pipeline: what each stage is given, and what it answers.

Every stage is a small `typing.Protocol` with one async method, so the server hands in the
real backend and a unit test hands in a fake. A port whose methods need no current Task
(no `asyncio.timeout`, no `asyncio.current_task`) may say so with a class attribute
`runs_without_task = True`: a request is answered without a Task when nothing waits
(radius_proxy.eager) and every port it calls says so; before calling any other port, the
pipeline moves into a Task. (The state store is called only for a State, a second factor
or a relayed challenge, so a store that needs a Task, Redis, costs a plain answer nothing.)

Results are frozen values; an expected outcome (wrong password, denied push, timeout) is a
value, never an exception. Exceptions mean a bug or a misconfiguration and end at the
server's fail-closed boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

#: A decoded attribute value as pyrad hands it out: text, integer, address text or octets.
AttrValue = str | int | bytes

#: Request attributes by dictionary name ("NAS-Identifier"), every value in packet order.
Attributes = Mapping[str, tuple[AttrValue, ...]]


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One PAP login as the pipeline sees it, after the packet checks.

    `password` is bytes because RFC 2865 section 5.2 hides octets, not text; a proxy relays
    them unchanged. `state` is the State the NAS sent, already unwrapped by the flow where
    it wrapped an upstream's State.
    """

    request_id: str
    client: str
    client_ip: str
    username: str
    password: bytes = field(repr=False)
    attributes: Attributes = field(default_factory=dict)
    state: bytes | None = None

    def first(self, name: str) -> AttrValue | None:
        """The first value of a request attribute, or None."""
        values = self.attributes.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """What a directory (LDAP, the users file) knows about a user beyond the password."""

    source: str
    secsign_id: str | None = None
    groups: frozenset[str] = frozenset()
    dn: str | None = None


class PrimaryOutcome(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"  # the primary (an upstream OTP) asks a question of its own
    UNAVAILABLE = "unavailable"  # no server could answer: never an accept


@dataclass(frozen=True, slots=True)
class PrimaryResult:
    """The password check's verdict.

    `reason` is a short machine word for the audit log (`bad_password`, `unknown_user`,
    `account_disabled`, `upstream_timeout`, ...). `reply_attributes` are copied into our
    Access-Accept (pass-through) or, for a CHALLENGE, carry the upstream's Reply-Message.
    """

    outcome: PrimaryOutcome
    reason: str = ""
    reply_attributes: tuple[tuple[str, AttrValue], ...] = ()
    challenge_state: bytes | None = None
    entry: DirectoryEntry | None = None


class PrimaryAuthenticator(Protocol):
    """Stage 2: is the password right?"""

    name: str

    async def authenticate(self, request: AuthRequest) -> PrimaryResult: ...


class IdentitySource(Protocol):
    """Stage 3: where a user's SecSign ID (and directory groups) come from.

    `primary` is the password check's result, so a source can reuse the directory entry the
    check already found instead of asking again.
    """

    name: str

    async def lookup(self, username: str, primary: PrimaryResult) -> DirectoryEntry | None: ...


class PushOutcome(enum.Enum):
    APPROVED = "approved"
    DENIED = "denied"
    TIMEOUT = "timeout"  # our deadline passed, or the ID server let the session expire
    CANCELED = "canceled"  # withdrawn, or suspended by a newer session for the same ID
    UNKNOWN_ID = "unknown_id"  # the ID server does not know this SecSign ID (20000)
    FROZEN = "frozen"  # the SecSign ID is frozen (20006, REST 409)
    UNREACHABLE = "unreachable"  # no ID server answered before a push started
    FAILED = "failed"  # the ID server failed after the push started, or answered nonsense


@dataclass(frozen=True, slots=True)
class PushResult:
    """The second factor's verdict; only APPROVED lets a user in."""

    outcome: PushOutcome
    detail: str = ""

    @property
    def approved(self) -> bool:
        return self.outcome is PushOutcome.APPROVED


class SecondFactor(Protocol):
    """Stage 5: the SecSign ID push, or a passcode checked at the ID server."""

    async def push(self, secsign_id: str, service_name: str, service_address: str) -> PushResult:
        """Start a push and wait for the phone, at most the configured push timeout."""
        ...

    async def verify_code(self, secsign_id: str, code: str) -> PushResult:
        """Check a TOTP passcode; APPROVED when valid."""
        ...
