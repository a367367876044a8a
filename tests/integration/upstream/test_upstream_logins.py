"""Logins through the real proxy with upstream RADIUS as the password check.

`radius-proxy serve` runs as a child process with primary backend "radius" against a real
FreeRADIUS; the SecSign ID simulator approves every push. What an administrator sees: the
upstream's pass-through attributes arrive at the NAS (radclient), an upstream OTP challenge
is relayed and answered through pam_radius_auth (pamtester), an unreachable upstream is a
clean reject, and no password or secret reaches the log even at DEBUG level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from radius_proxy.simulator import BackgroundSimulator
from tests.clients import pam_service, radclient
from tests.servers.freeradius import BOB_AVPAIRS, CAROL_OTP, FreeRadius
from tests.support import free_port

StartProxy = Callable[..., Any]


def upstream_sections(servers: list[str], secret: str, **upstream: Any) -> dict[str, Any]:
    """Config sections: FreeRADIUS checks the password; SecSign ID = user name + ".test"."""
    section: dict[str, Any] = {
        "servers": servers, "secret": secret, "timeout_seconds": 2, "retries": 1,
        "require_message_authenticator": True, "dead_server_seconds": 5,
    }
    section.update(upstream)
    return {"primary": {"backend": "radius"}, "radius_upstream": section,
            "identity": {"sources": ["username"], "username_suffix": ".test"}}


def send(proxy: Any, user: str, password: str) -> Any:
    return radclient(proxy.address, proxy.secret,
                     [f'User-Name = "{user}"', f'User-Password = "{password}"',
                      'NAS-Identifier = "upstream-test"'], timeout=10)


def test_pass_through_attributes_reach_radclient(start_proxy: StartProxy,
                                                 freeradius: FreeRadius,
                                                 simulator: BackgroundSimulator) -> None:
    proxy = start_proxy(**upstream_sections(
        [freeradius.ma_address], freeradius.secret,
        pass_through=["Class", "Filter-Id", "Cisco-AVPair"]))
    accepted = send(proxy, "bob", "bobpass")
    assert accepted.code == "Access-Accept", accepted.output
    assert [e.secsignid for e in simulator.simulator.log() if e.kind == "start"] == ["bob.test"]
    assert accepted.attributes["Class"] == ["0x" + b"bob-class".hex()]
    assert accepted.attributes["Filter-Id"] == ["vpn-users"]
    assert accepted.attributes["Cisco-AVPair"] == list(BOB_AVPAIRS)
    assert "Reply-Message" not in accepted.attributes  # not listed in pass_through
    rejected = send(proxy, "bob", "wrong")
    assert rejected.code == "Access-Reject"
    assert "Class" not in rejected.attributes
    events = proxy.wait_event("auth", 2)
    assert [(e["outcome"], e["reason"]) for e in events] == [
        ("accept", "push_approved"), ("reject", "primary_rejected")]
    assert events[1]["primary_reason"] == "primary_rejected"
    log = proxy.log()
    for secret in ("bobpass", freeradius.secret):
        assert secret not in log


def test_upstream_challenge_answered_through_pamtester(start_proxy: StartProxy,
                                                       freeradius: FreeRadius, tmp_path: Path,
                                                       simulator: BackgroundSimulator) -> None:
    """carol's upstream asks for an OTP; pam_radius shows the prompt and sends the answer."""
    proxy = start_proxy(legacy=True,
                        **upstream_sections([freeradius.ma_address], freeradius.secret))
    with pam_service(tmp_path, [(proxy.address, proxy.secret, 10)]) as pam:
        ok = pam.authenticate("carol", ["carolpass", CAROL_OTP])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Enter OTP code" in ok.stdout + ok.stderr
        wrong = pam.authenticate("carol", ["carolpass", "000000"])
        assert wrong.returncode != 0
    events = proxy.wait_event("auth", 4)
    assert [(e["outcome"], e["reason"]) for e in events] == [
        ("challenge", "upstream_challenge"), ("accept", "push_approved"),
        ("challenge", "upstream_challenge"), ("reject", "primary_rejected")]
    assert CAROL_OTP not in proxy.log()


def test_unreachable_upstream_is_a_clean_reject(start_proxy: StartProxy) -> None:
    nothing = f"127.0.0.1:{free_port()}"
    proxy = start_proxy(**upstream_sections([nothing], "unreachable-secret-0123456",
                                            timeout_seconds=0.5, retries=0))
    assert send(proxy, "alice", "alicepass").code == "Access-Reject"
    event = proxy.wait_event("auth", 1)[0]
    assert (event["reason"], event["primary_reason"]) == ("primary_unavailable",
                                                          "upstream_timeout")
    assert proxy.events("upstream_dead")[0]["server"] == nothing
