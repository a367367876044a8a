"""Challenge mode end to end: the proxy checks the password, then answers Access-Challenge
with the `[policy.messages] start` text; pam_radius_auth (with `prompt_attribute`) shows it
and sends what the user typed back with the State: an empty line sends the push, digits are
a passcode.

pamtester answers the prompts line by line from stdin and prints them on stderr, so what
the user would read is checked there. The State rules (single use, bound to the user) need
control over the packets, so that case is driven with pyrad-built requests.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyrad import packet as rp

from radius_proxy.simulator import parse_rules
from tests.clients import build_request, pam_service, udp_exchange
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts
from tests.e2e.conftest import audits, log_types, outcome, totp_code, wrong_code

CHALLENGE = {"mode": "challenge"}
START_TEXT = "Push or code? Press Enter for a push, or type the code from the app"


def _login(proxy: RunningProxy, tmp_path: Path,
           answers: list[str]) -> subprocess.CompletedProcess[str]:
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, 60)], "prompt_attribute") as svc:
        return svc.authenticate("alice", answers)


@pytest.mark.parametrize(("rule", "accepted", "reason"), [
    ("*=approve:0.2", True, "push_approved"),
    ("*=deny:0.2", False, "push_denied"),
])
def test_prompt_then_enter_sends_the_push(start_proxy, simulator, tmp_path: Path, rule: str,
                                          accepted: bool, reason: str) -> None:
    simulator.simulator.set_rules(parse_rules([rule]))
    proxy = start_proxy(legacy=True, policy={**CHALLENGE, "messages": {"start": START_TEXT}})
    result = _login(proxy, tmp_path, ["alicepass", ""])
    assert (result.returncode == 0) is accepted, outcome(result)
    assert f"Password: {START_TEXT}" in outcome(result)  # the second prompt is our text
    assert [(e["outcome"], e["reason"]) for e in audits(proxy, 2)] == [
        ("challenge", "challenge_sent"), ("accept" if accepted else "reject", reason)]
    assert session_starts(simulator) == 1


def test_wrong_password_gets_no_challenge(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy=CHALLENGE)
    result = _login(proxy, tmp_path, ["not-her-password", ""])
    assert result.returncode != 0, outcome(result)
    assert "SecSign ID" not in outcome(result)
    assert [e["reason"] for e in audits(proxy, 1)] == ["primary_rejected"]
    assert log_types(simulator) == []


def test_code_at_the_prompt_logs_in_without_a_push(start_proxy, simulator,
                                                   tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy=CHALLENGE)
    result = _login(proxy, tmp_path, ["alicepass", totp_code(simulator, "alice.test")])
    assert result.returncode == 0, outcome(result)
    assert log_types(simulator) == ["totp"]
    assert [e["reason"] for e in audits(proxy, 2)] == ["challenge_sent", "passcode_accepted"]


def test_wrong_code_at_the_prompt_fails(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy=CHALLENGE)
    result = _login(proxy, tmp_path, ["alicepass", wrong_code(simulator, "alice.test")])
    assert result.returncode != 0, outcome(result)
    assert log_types(simulator) == ["totp"]
    assert [e["reason"] for e in audits(proxy, 2)] == ["challenge_sent", "passcode_rejected"]


@pytest.mark.parametrize("show", [True, False])
def test_show_secsign_id_puts_the_id_in_the_prompt(start_proxy, simulator, tmp_path: Path,
                                                   show: bool) -> None:
    proxy = start_proxy(legacy=True, policy={**CHALLENGE, "show_secsign_id": show})
    result = _login(proxy, tmp_path, ["alicepass", ""])
    assert result.returncode == 0, outcome(result)
    assert "Password: SecSign ID: press Enter" in outcome(result)  # the default text
    assert ("alice.test" in outcome(result)) is show


# --- the State, with packets built by hand ------------------------------------------------


def _exchange(proxy: RunningProxy, user: str, password: str, *, state: bytes | None = None,
              identifier: int) -> rp.Packet:
    extra = [("State", state)] if state is not None else []
    raw, request = build_request(PROXY_SECRET, user, password, identifier=identifier,
                                 extra=extra)
    data = udp_exchange((proxy.host, proxy.port), raw, timeout=15)
    assert data is not None, "no reply"
    reply = request.CreateReply(packet=data)
    assert request.VerifyReply(reply, data, enforce_ma=True)
    return reply


def _challenge(proxy: RunningProxy, identifier: int) -> bytes:
    reply = _exchange(proxy, "alice", "alicepass", identifier=identifier)
    assert reply.code == rp.AccessChallenge
    [state] = reply["State"]
    [message] = reply["Reply-Message"]
    assert len(state) >= 16
    assert 0 < len(message.encode()) <= 253
    assert len(reply["Prompt"]) == 1
    return bytes(state)


def test_state_is_single_use_and_bound_to_the_user(start_proxy, simulator) -> None:
    proxy = start_proxy(policy=CHALLENGE)
    state = _challenge(proxy, identifier=1)
    first = _exchange(proxy, "alice", "", state=state, identifier=2)
    assert first.code == rp.AccessAccept
    replayed = _exchange(proxy, "alice", "", state=state, identifier=3)
    assert replayed.code == rp.AccessReject

    other = _challenge(proxy, identifier=4)
    borrowed = _exchange(proxy, "bob", "", state=other, identifier=5)
    assert borrowed.code == rp.AccessReject

    made_up = _exchange(proxy, "alice", "", state=b"\x00" * 16, identifier=6)
    assert made_up.code == rp.AccessReject

    assert [e["reason"] for e in audits(proxy, 6)] == [
        "challenge_sent", "push_approved", "invalid_state",
        "challenge_sent", "invalid_state", "invalid_state"]
    assert session_starts(simulator) == 1
