"""The orchestrator: primary -> identity -> policy -> second factor -> reply.

It reads top to bottom as PRODUCT.md section 1. Every stage is a port (see `ports.py`);
every outcome is a `Decision` value that the server encodes; one audit event per request
records what happened and why (PRODUCT.md section 6). Retransmits never reach this far
(the server's duplicate cache drops them); a second request for the same user, NAS and
station while a push is pending joins that push instead of starting another.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from radius_proxy.config import ClientConfig, Config
from radius_proxy.eager import Deadline, in_task, shielded
from radius_proxy.errors import StateUnavailable
from radius_proxy.log import info_enabled, info_event
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline import policy as pol
from radius_proxy.pipeline.ports import (
    AttrValue,
    AuthRequest,
    DirectoryEntry,
    IdentitySource,
    PrimaryAuthenticator,
    PrimaryOutcome,
    PrimaryResult,
    PushOutcome,
    PushResult,
    SecondFactor,
)
from radius_proxy.pipeline.templates import fill_templates
from radius_proxy.state import ChallengeContext, StateStore

audit_log = structlog.get_logger("radius_proxy.audit")
log = structlog.get_logger(__name__)

ACCEPT, REJECT, CHALLENGE, DROP = "accept", "reject", "challenge", "drop"
MAX_REPLY_MESSAGE = 253
RATE_LIMITED = "rate_limited"
#: How long a finished push's outcome stays readable for requests that joined it.
SHARED_OUTCOME_SECONDS = 30.0
#: Identity found nowhere and no groups: a frozen value, made once.
_NO_ENTRY = DirectoryEntry("", None, frozenset())


@functools.lru_cache(maxsize=64)
def _plain(outcome: str, reason: str) -> Decision:
    """A decision without reply attributes, made once: decisions are frozen values, the
    reasons a fixed vocabulary, and the policy's verdict is needed for every request."""
    return Decision(outcome, reason)


def _shared_result(outcome: str | None) -> PushResult | None:
    """Another instance's published outcome as a result; None when it was rate limited."""
    if outcome == RATE_LIMITED:
        return None
    try:
        return PushResult(PushOutcome(outcome), "joined another instance's push")
    except ValueError:
        return PushResult(PushOutcome.FAILED, "no outcome from the instance that ran the push")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer: `outcome` is accept, reject or challenge; `reason` goes to the audit."""

    outcome: str
    reason: str
    attributes: tuple[tuple[str, AttrValue], ...] = ()


@dataclass(slots=True)
class _Trace:
    """The facts an audit event reports, filled in as the request moves along."""

    started: float
    secsign_id: str | None = None
    primary_ms: float | None = None
    second_factor_ms: float | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _runs_without_task(port: object) -> bool:
    """Whether a port declares that it needs no current Task (pipeline/ports.py)."""
    return getattr(port, "runs_without_task", False) is True


def split_passcode(password: bytes) -> tuple[bytes, str | None]:
    """"password,123456" -> (b"password", "123456"): the last comma, 6 to 8 digits after it."""
    head, sep, tail = password.rpartition(b",")
    if sep and 6 <= len(tail) <= 8 and tail.isdigit():
        return head, tail.decode("ascii")
    return password, None


class Pipeline:
    """One instance per configuration; `handle` is called once per new Access-Request."""

    def __init__(self, *, config: Config, primary: PrimaryAuthenticator,
                 identity: Sequence[IdentitySource], second_factor: SecondFactor,
                 store: StateStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.primary = primary
        self.identity = tuple(identity)
        self.second_factor = second_factor
        self.store = store
        self._clock = clock
        self._pending: dict[str, asyncio.Task[PushResult | None]] = {}
        # Ports that need no current Task let a request be answered in the server's
        # hand-driven step (radius_proxy.eager); before any other it moves into its Task.
        # The store is asked only for a State, a second factor or a relayed challenge, so
        # a plain accept or reject never moves for a store that needs a Task (Redis).
        self._without_task = all(_runs_without_task(port) for port in (primary, *self.identity))
        self._store_without_task = _runs_without_task(store)

    def with_config(self, config: Config) -> Pipeline:
        """A pipeline on the same backends and store with new policy (reload).

        Pushes pending in this pipeline stay joinable: the new one shares their table.
        """
        new = Pipeline(config=config, primary=self.primary, identity=self.identity,
                       second_factor=self.second_factor, store=self.store, clock=self._clock)
        new._pending = self._pending
        return new

    @property
    def pending_pushes(self) -> int:
        return len(self._pending)

    async def handle(self, request: AuthRequest, client: ClientConfig) -> Decision:
        """Answer one login, within the client's NAS timeout; log the audit event."""
        trace = _Trace(self._clock())
        try:
            # asyncio.timeout, but free when nothing waits (and usable without a Task)
            decision = await Deadline(self._run(request, client, trace),
                                      client.nas_timeout_seconds)
        except TimeoutError:
            decision = Decision(REJECT, "timeout")
        except StateUnavailable:
            drop = self.config.state.unavailable == "drop"
            decision = Decision(DROP if drop else REJECT, "state_unavailable")
        self._audit(request, decision, trace)
        return decision

    async def cancel_pushes(self) -> None:
        """Withdraw every pending push (shutdown); each is cancelled at the ID server."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the stages, in order ---------------------------------------------------------

    async def _run(self, request: AuthRequest, client: ClientConfig, trace: _Trace) -> Decision:
        if not self._without_task:
            await in_task()
        if request.state is not None:
            if not self._store_without_task:
                await in_task()
            context = await self.store.take_challenge(request.state)
            if context is None or context.client != client.name or \
                    context.username != request.username:
                return Decision(REJECT, "invalid_state")
            if context.kind == "secsign":
                trace.secsign_id = context.secsign_id
                return await self._answer_challenge(request, client, context, trace)
            request = replace(request, state=context.upstream_state)
        password, code = split_passcode(request.password) if self.config.policy.passcodes \
            else (request.password, None)
        primary = await self._check_password(request, password, code, trace)
        if primary.outcome is PrimaryOutcome.CHALLENGE:
            return await self._relay_challenge(request, client, primary)
        if primary.outcome is not PrimaryOutcome.ACCEPT:
            trace.notes["primary_reason"] = primary.reason
            reason = "primary_unavailable" if primary.outcome is PrimaryOutcome.UNAVAILABLE \
                else "primary_rejected"
            return Decision(REJECT, reason)
        entry = await self._lookup_identity(request.username, primary)
        trace.secsign_id = entry.secsign_id
        verdict = pol.decide(self.config.policy, groups=entry.groups, secsign_id=entry.secsign_id)
        if verdict.action is not pol.Action.SECOND_FACTOR or entry.secsign_id is None:
            return self._final(verdict, primary)
        return await self._second_factor(request, client, primary, entry.secsign_id,
                                         code if primary.reason != "full_password" else None,
                                         trace)

    async def _check_password(self, request: AuthRequest, password: bytes, code: str | None,
                              trace: _Trace) -> PrimaryResult:
        """Stage 2. With a passcode split off and the rest refused, the whole string is tried:
        the password itself may end in a comma and digits."""
        t0 = self._clock()
        if password != request.password:
            request_without_code = replace(request, password=password)
        else:
            request_without_code = request
        result = await self.primary.authenticate(request_without_code)
        if code is not None and result.outcome is PrimaryOutcome.REJECT:
            whole = await self.primary.authenticate(request)
            if whole.outcome is PrimaryOutcome.ACCEPT:
                result = replace(whole, reason="full_password")
        trace.primary_ms = (self._clock() - t0) * 1000
        return result

    async def _lookup_identity(self, username: str, primary: PrimaryResult) -> DirectoryEntry:
        """Stage 3: the first source with a SecSign ID wins; groups from every entry found."""
        groups = frozenset(primary.entry.groups) if primary.entry else frozenset()
        found: DirectoryEntry | None = None
        for source in self.identity:
            entry = await source.lookup(username, primary)
            if entry is None:
                continue
            groups |= entry.groups
            if found is None and entry.secsign_id:
                found = entry
        if found is None:
            return DirectoryEntry("", None, groups) if groups else _NO_ENTRY
        return DirectoryEntry(found.source, found.secsign_id, groups)

    def _final(self, verdict: pol.Verdict, primary: PrimaryResult) -> Decision:
        if verdict.action is pol.Action.ACCEPT:
            if primary.reply_attributes:
                return Decision(ACCEPT, verdict.reason, primary.reply_attributes)
            return _plain(ACCEPT, verdict.reason)
        return _plain(REJECT, verdict.reason)

    async def _second_factor(self, request: AuthRequest, client: ClientConfig,
                             primary: PrimaryResult, secsign_id: str, code: str | None,
                             trace: _Trace) -> Decision:
        """Stage 5: remembered login, passcode, challenge or push."""
        if not self._store_without_task:
            await in_task()
        policy = self.config.policy
        remember_key = self._remember_key(request, client)
        if policy.remember_minutes and await self.store.is_remembered(remember_key):
            return Decision(ACCEPT, "remembered", primary.reply_attributes)
        if code is not None:
            return await self._verify_code(request, client, primary, secsign_id, code, trace)
        if policy.mode == "challenge":
            return await self._challenge(request, client, primary, secsign_id)
        return await self._push(request, client, primary, secsign_id, trace)

    async def _challenge(self, request: AuthRequest, client: ClientConfig,
                         primary: PrimaryResult, secsign_id: str) -> Decision:
        """Challenge mode: ask first ("press Enter to send a push, or type a code")."""
        token = secrets.token_bytes(16)
        context = ChallengeContext("secsign", client.name, request.username, secsign_id,
                                   reply_attributes=primary.reply_attributes)
        await self.store.put_challenge(token, context, self.config.policy.challenge_timeout_seconds)
        text = self.config.policy.messages.start
        if self.config.policy.show_secsign_id:
            text = f"{text} ({secsign_id})"
        message = text.encode("utf-8")[:MAX_REPLY_MESSAGE].decode("utf-8", "ignore")
        return Decision(CHALLENGE, "challenge_sent",
                        (("Reply-Message", message), ("State", token), ("Prompt", 1)))

    async def _answer_challenge(self, request: AuthRequest, client: ClientConfig,
                                context: ChallengeContext, trace: _Trace) -> Decision:
        """The NAS's answer to our challenge: empty starts the push, digits are a passcode."""
        answer = request.password.strip()
        secsign_id = context.secsign_id or ""
        primary = PrimaryResult(PrimaryOutcome.ACCEPT, reply_attributes=context.reply_attributes)
        if not answer:
            return await self._push(request, client, primary, secsign_id, trace)
        if answer.isdigit() and 6 <= len(answer) <= 8 and self.config.policy.passcodes:
            return await self._verify_code(request, client, primary, secsign_id,
                                           answer.decode("ascii"), trace)
        return Decision(REJECT, "invalid_answer")

    async def _verify_code(self, request: AuthRequest, client: ClientConfig,
                           primary: PrimaryResult, secsign_id: str, code: str,
                           trace: _Trace) -> Decision:
        if await self._over_limit(request.username):
            return Decision(REJECT, "rate_limited")
        t0 = self._clock()
        await in_task()  # the ID server's client is no port that runs without a Task
        result = await self.second_factor.verify_code(secsign_id, code)
        trace.second_factor_ms = (self._clock() - t0) * 1000
        verdict = pol.push_verdict(result.outcome, self.config.policy.failmode, passcode=True)
        return await self._after_second_factor(request, client, primary, verdict)

    async def _push(self, request: AuthRequest, client: ClientConfig, primary: PrimaryResult,
                    secsign_id: str, trace: _Trace) -> Decision:
        """Start a push, or join the one pending for this user, NAS and station.

        A retransmit with a new ID (pam_radius after a timeout, or a NAS failing over to
        another instance) must not start a second push: the ID server would suspend the
        first, and the user would be asked twice.
        """
        key = self._remember_key(request, client)
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._lead_or_follow(key, request, client, secsign_id))
            self._pending[key] = task
            task.add_done_callback(lambda t: self._forget_push(key, t))
        else:
            log.info("push_joined", username=request.username, client=client.name)
        t0 = self._clock()
        result = await asyncio.shield(task)
        trace.second_factor_ms = (self._clock() - t0) * 1000
        if result is None:
            return Decision(REJECT, "rate_limited")
        trace.notes["push_detail"] = result.detail
        verdict = pol.push_verdict(result.outcome, self.config.policy.failmode)
        return await self._after_second_factor(request, client, primary, verdict)

    async def _lead_or_follow(self, key: str, request: AuthRequest, client: ClientConfig,
                              secsign_id: str) -> PushResult | None:
        """Run the push when this instance wins the claim, else wait for the winner's outcome.

        None means the push limit refused it.
        """
        secsign = self.config.secsign
        ttl = secsign.push_timeout_seconds + secsign.request_timeout_seconds + 5
        if not await self.store.claim_push(key, ttl):
            log.info("push_joined_other_instance", username=request.username)
            return _shared_result(await self.store.wait_push(key, ttl))
        outcome = PushOutcome.FAILED.value
        try:
            if await self._over_limit(request.username):
                outcome = RATE_LIMITED
                return None
            name, address = self._service_texts(request, client)
            started = self._clock()
            result = await self.second_factor.push(secsign_id, name, address)
            METRICS.push_seconds.observe(self._clock() - started)
            outcome = result.outcome.value
            return result
        finally:
            await shielded(self.store.finish_push(key, outcome, SHARED_OUTCOME_SECONDS))

    async def _after_second_factor(self, request: AuthRequest, client: ClientConfig,
                                   primary: PrimaryResult, verdict: pol.Verdict) -> Decision:
        minutes = self.config.policy.remember_minutes
        if verdict.action is pol.Action.ACCEPT and minutes and verdict.reason != "failmode_safe":
            await self.store.remember(self._remember_key(request, client), minutes * 60)
        return self._final(verdict, primary)

    async def _relay_challenge(self, request: AuthRequest, client: ClientConfig,
                               primary: PrimaryResult) -> Decision:
        """An upstream's own challenge (an OTP there) goes to the NAS under our State."""
        if not self._store_without_task:
            await in_task()
        token = secrets.token_bytes(16)
        context = ChallengeContext("upstream", client.name, request.username,
                                   upstream_state=primary.challenge_state)
        await self.store.put_challenge(token, context, self.config.policy.challenge_timeout_seconds)
        attributes = [a for a in primary.reply_attributes if a[0] in ("Reply-Message", "Prompt")]
        if not any(name == "Reply-Message" for name, _ in attributes):
            attributes.append(("Reply-Message", "Enter the response: "))
        return Decision(CHALLENGE, "upstream_challenge", (*attributes, ("State", token)))

    # --- helpers ----------------------------------------------------------------------

    async def _over_limit(self, username: str) -> bool:
        policy = self.config.policy
        count = await self.store.count_push(username, policy.push_window_minutes * 60)
        return count > policy.max_pushes_per_user

    def _forget_push(self, key: str, task: asyncio.Task[PushResult | None]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]

    @staticmethod
    def _remember_key(request: AuthRequest, client: ClientConfig) -> str:
        station = str(request.first("Calling-Station-Id") or "")
        return f"{request.username}\x00{client.name}\x00{station}"

    @staticmethod
    def _service_texts(request: AuthRequest, client: ClientConfig) -> tuple[str, str]:
        values = {"client": client.name, "user_name": request.username}
        name, address = fill_templates((client.service_name, client.service_address),
                                       request.attributes, values)
        return name, address

    def _audit(self, request: AuthRequest, decision: Decision, trace: _Trace) -> None:
        """The audit event (PRODUCT.md section 6): its keys and their order are a contract."""
        if not info_enabled():
            return

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        first = request.first
        fields = {
            "request_id": request.request_id, "client": request.client,
            "nas_ip": first("NAS-IP-Address") or first("NAS-IPv6-Address"),
            "nas_identifier": first("NAS-Identifier"),
            "calling_station_id": first("Calling-Station-Id"),
            "username": request.username, "secsign_id": trace.secsign_id,
            "outcome": decision.outcome, "reason": decision.reason,
            "primary_ms": ms(trace.primary_ms), "second_factor_ms": ms(trace.second_factor_ms),
            "total_ms": ms((self._clock() - trace.started) * 1000), **trace.notes,
        }
        info_event(audit_log, "auth", fields)
