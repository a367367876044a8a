"""The policy decision, table by table (PRODUCT.md sections 3 [policy] and 4 "Failmode").

`decide`: allow / bypass / require groups (case-insensitive, as Active Directory compares
them) and users without a SecSign ID. `push_verdict`: every PushOutcome under failmode
secure and safe, for a push and for a passcode.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from radius_proxy.config import PolicyConfig
from radius_proxy.pipeline.policy import Action, Verdict, decide, member, push_verdict
from radius_proxy.pipeline.ports import PushOutcome

ACCEPT, REJECT, SECOND = Action.ACCEPT, Action.REJECT, Action.SECOND_FACTOR
P = PolicyConfig()
ID = "alice.example"


@pytest.mark.parametrize(
    ("policy", "groups", "secsign_id", "expected"),
    [
        # no group rules: everyone with an ID needs the second factor
        (P, set(), ID, Verdict(SECOND, "second_factor")),
        (P, {"vpn-users"}, ID, Verdict(SECOND, "second_factor")),
        # no SecSign ID
        (P, set(), None, Verdict(REJECT, "no_secsign_id")),
        (replace(P, no_secsign_id="accept"), set(), None, Verdict(ACCEPT, "no_secsign_id")),
        (replace(P, no_secsign_id="reject"), {"vpn-users"}, None,
         Verdict(REJECT, "no_secsign_id")),
        # allow_groups: only members log in at all
        (replace(P, allow_groups=("vpn-users",)), {"vpn-users"}, ID, Verdict(SECOND,
                                                                            "second_factor")),
        (replace(P, allow_groups=("vpn-users",)), {"staff"}, ID,
         Verdict(REJECT, "not_in_allowed_group")),
        (replace(P, allow_groups=("vpn-users",)), set(), ID,
         Verdict(REJECT, "not_in_allowed_group")),
        (replace(P, allow_groups=("vpn-users", "admins")), {"admins"}, ID,
         Verdict(SECOND, "second_factor")),
        (replace(P, allow_groups=("VPN-Users",)), {"vpn-users"}, ID,
         Verdict(SECOND, "second_factor")),
        (replace(P, allow_groups=("vpn-users",)), {"VPN-USERS"}, ID,
         Verdict(SECOND, "second_factor")),
        # allow_groups is checked before everything, even without an ID or in a bypass group
        (replace(P, allow_groups=("vpn-users",), no_secsign_id="accept"), {"staff"}, None,
         Verdict(REJECT, "not_in_allowed_group")),
        (replace(P, allow_groups=("vpn-users",), bypass_2fa_groups=("svc",)), {"svc"}, ID,
         Verdict(REJECT, "not_in_allowed_group")),
        # bypass_2fa_groups: password alone, with or without an ID
        (replace(P, bypass_2fa_groups=("svc",)), {"svc"}, ID, Verdict(ACCEPT, "bypass_group")),
        (replace(P, bypass_2fa_groups=("svc",)), {"svc"}, None, Verdict(ACCEPT, "bypass_group")),
        (replace(P, bypass_2fa_groups=("SVC",)), {"Svc"}, ID, Verdict(ACCEPT, "bypass_group")),
        (replace(P, bypass_2fa_groups=("svc",)), {"staff"}, ID, Verdict(SECOND,
                                                                       "second_factor")),
        (replace(P, allow_groups=("vpn",), bypass_2fa_groups=("svc",)), {"vpn", "svc"}, ID,
         Verdict(ACCEPT, "bypass_group")),
        # require_2fa_groups: only members need the second factor
        (replace(P, require_2fa_groups=("admins",)), {"admins"}, ID,
         Verdict(SECOND, "second_factor")),
        (replace(P, require_2fa_groups=("admins",)), {"ADMINS"}, ID,
         Verdict(SECOND, "second_factor")),
        (replace(P, require_2fa_groups=("admins",)), {"staff"}, ID,
         Verdict(ACCEPT, "2fa_not_required")),
        (replace(P, require_2fa_groups=("admins",)), set(), None,
         Verdict(ACCEPT, "2fa_not_required")),
        (replace(P, require_2fa_groups=("admins",)), {"admins"}, None,
         Verdict(REJECT, "no_secsign_id")),
        (replace(P, require_2fa_groups=("admins",), no_secsign_id="accept"), {"admins"}, None,
         Verdict(ACCEPT, "no_secsign_id")),
        # bypass is decided before require (config forbids the same group in both)
        (replace(P, require_2fa_groups=("admins",), bypass_2fa_groups=("svc",)),
         {"admins", "svc"}, ID, Verdict(ACCEPT, "bypass_group")),
        # all three
        (replace(P, allow_groups=("vpn",), require_2fa_groups=("admins",),
                 bypass_2fa_groups=("svc",)), {"vpn", "admins"}, ID,
         Verdict(SECOND, "second_factor")),
        (replace(P, allow_groups=("vpn",), require_2fa_groups=("admins",),
                 bypass_2fa_groups=("svc",)), {"vpn"}, ID, Verdict(ACCEPT, "2fa_not_required")),
    ],
)
def test_decide(policy: PolicyConfig, groups: set[str], secsign_id: str | None,
                expected: Verdict) -> None:
    assert decide(policy, groups=frozenset(groups), secsign_id=secsign_id) == expected


@pytest.mark.parametrize(
    ("groups", "wanted", "expected"),
    [({"a"}, ("a",), True), ({"A"}, ("a",), True), ({"a"}, ("A",), True),
     ({"straße"}, ("STRASSE",), True),  # casefold, not lower
     ({"a"}, ("b",), False), (set(), ("a",), False), ({"a"}, (), False),
     ({"vpn-users"}, ("vpn",), False), ({"CN=vpn,DC=x"}, ("vpn",), False)],
)
def test_member(groups: set[str], wanted: tuple[str, ...], expected: bool) -> None:
    assert member(groups, wanted) is expected


# -- push_verdict: every outcome under both failmodes --------------------------------------
PUSH_TABLE = {
    #  outcome                     secure                              safe
    PushOutcome.APPROVED: (Verdict(ACCEPT, "push_approved"), Verdict(ACCEPT, "push_approved")),
    PushOutcome.DENIED: (Verdict(REJECT, "push_denied"), Verdict(REJECT, "push_denied")),
    PushOutcome.TIMEOUT: (Verdict(REJECT, "push_timeout"), Verdict(REJECT, "push_timeout")),
    PushOutcome.CANCELED: (Verdict(REJECT, "push_canceled"), Verdict(REJECT, "push_canceled")),
    PushOutcome.UNKNOWN_ID: (Verdict(REJECT, "unknown_secsign_id"),
                             Verdict(REJECT, "unknown_secsign_id")),
    PushOutcome.FROZEN: (Verdict(REJECT, "frozen_secsign_id"),
                         Verdict(REJECT, "frozen_secsign_id")),
    # the only fail-open row: the ID server could not be reached before a push started
    PushOutcome.UNREACHABLE: (Verdict(REJECT, "id_server_unreachable"),
                              Verdict(ACCEPT, "failmode_safe")),
    # a push that started and then failed is a reject under both
    PushOutcome.FAILED: (Verdict(REJECT, "push_failed"), Verdict(REJECT, "push_failed")),
}


def test_push_table_covers_every_outcome() -> None:
    assert set(PUSH_TABLE) == set(PushOutcome)


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest.mark.parametrize("outcome", list(PushOutcome), ids=lambda o: o.value)
def test_push_verdict(outcome: PushOutcome, failmode: str) -> None:
    expected = PUSH_TABLE[outcome][failmode == "safe"]
    assert push_verdict(outcome, failmode) == expected


PASSCODE_TABLE = {
    PushOutcome.APPROVED: Verdict(ACCEPT, "passcode_accepted"),
    PushOutcome.DENIED: Verdict(REJECT, "passcode_rejected"),
}


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest.mark.parametrize("outcome", list(PushOutcome), ids=lambda o: o.value)
def test_passcode_verdict(outcome: PushOutcome, failmode: str) -> None:
    expected = PASSCODE_TABLE.get(outcome, PUSH_TABLE[outcome][failmode == "safe"])
    assert push_verdict(outcome, failmode, passcode=True) == expected


@pytest.mark.parametrize("passcode", [False, True])
@pytest.mark.parametrize("outcome", list(PushOutcome), ids=lambda o: o.value)
def test_only_approved_or_failmode_safe_ever_accepts(outcome: PushOutcome,
                                                     passcode: bool) -> None:
    for failmode in ("secure", "safe"):
        verdict = push_verdict(outcome, failmode, passcode=passcode)
        accepted = outcome is PushOutcome.APPROVED or (
            outcome is PushOutcome.UNREACHABLE and failmode == "safe")
        assert (verdict.action is ACCEPT) is accepted
        assert verdict.action is not Action.SECOND_FACTOR
