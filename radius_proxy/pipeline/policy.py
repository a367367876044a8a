"""The policy decision: pure functions from facts to a verdict, tested table by table.

`decide` runs after the password check and the identity lookup and says whether the user
is refused, let in without a second factor, or must pass one. `push_verdict` turns the
second factor's outcome into the reply, applying `failmode` exactly as PRODUCT.md section 4
says: `safe` lets a user in on the password alone only when the ID server could not be
reached before a push started; a started push that fails is always a reject.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from radius_proxy.config import PolicyConfig
from radius_proxy.pipeline.ports import PushOutcome


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    SECOND_FACTOR = "second_factor"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str


def member(groups: Iterable[str], wanted: Iterable[str]) -> bool:
    """Group names compare case-insensitively, as Active Directory does."""
    if not wanted:
        return False
    have = {g.casefold() for g in groups}
    return any(w.casefold() in have for w in wanted)


def decide(policy: PolicyConfig, *, groups: frozenset[str], secsign_id: str | None) -> Verdict:
    """Who may log in, and who needs the second factor (PRODUCT.md section 3, [policy])."""
    if policy.allow_groups and not member(groups, policy.allow_groups):
        return _NOT_ALLOWED
    if policy.bypass_2fa_groups and member(groups, policy.bypass_2fa_groups):
        return _BYPASS
    if policy.require_2fa_groups and not member(groups, policy.require_2fa_groups):
        return _NOT_REQUIRED
    if secsign_id is None:
        return _NO_ID_ACCEPT if policy.no_secsign_id == "accept" else _NO_ID_REJECT
    return _SECOND_FACTOR


# The verdicts are frozen values; made once, as `decide` runs for every request.
_NOT_ALLOWED = Verdict(Action.REJECT, "not_in_allowed_group")
_BYPASS = Verdict(Action.ACCEPT, "bypass_group")
_NOT_REQUIRED = Verdict(Action.ACCEPT, "2fa_not_required")
_NO_ID_ACCEPT = Verdict(Action.ACCEPT, "no_secsign_id")
_NO_ID_REJECT = Verdict(Action.REJECT, "no_secsign_id")
_SECOND_FACTOR = Verdict(Action.SECOND_FACTOR, "second_factor")


_PUSH_REASONS = {
    PushOutcome.APPROVED: "push_approved",
    PushOutcome.DENIED: "push_denied",
    PushOutcome.TIMEOUT: "push_timeout",
    PushOutcome.CANCELED: "push_canceled",
    PushOutcome.UNKNOWN_ID: "unknown_secsign_id",
    PushOutcome.FROZEN: "frozen_secsign_id",
    PushOutcome.UNREACHABLE: "id_server_unreachable",
    PushOutcome.FAILED: "push_failed",
}


def push_verdict(outcome: PushOutcome, failmode: str, *, passcode: bool = False) -> Verdict:
    """The reply to a finished push or passcode check."""
    if outcome is PushOutcome.UNREACHABLE and failmode == "safe":
        return Verdict(Action.ACCEPT, "failmode_safe")
    if passcode:
        if outcome is PushOutcome.APPROVED:
            return Verdict(Action.ACCEPT, "passcode_accepted")
        if outcome is PushOutcome.DENIED:
            return Verdict(Action.REJECT, "passcode_rejected")
    action = Action.ACCEPT if outcome is PushOutcome.APPROVED else Action.REJECT
    return Verdict(action, _PUSH_REASONS[outcome])
