"""Debian's pam_radius_auth (driven by pamtester) against the proxy: a real NAS-side client.

pam_radius_auth 2.0 cannot send Message-Authenticator, so its client entry is marked legacy
(require_message_authenticator = false, limit_proxy_state stays on).
"""

from __future__ import annotations

from pathlib import Path

from tests.clients import pam_service
from tests.conftest import PROXY_SECRET, session_starts


def test_pamtester_accept_and_reject(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True)
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, 10)]) as svc:
        ok = svc.authenticate("alice", ["alicepass"])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "successfully authenticated" in ok.stdout + ok.stderr
        bad = svc.authenticate("alice", ["not-her-password"])
        assert bad.returncode != 0
    events = proxy.wait_event("auth", count=2)
    assert [e["outcome"] for e in events] == ["accept", "reject"]
    assert events[0]["nas_identifier"] == svc.name  # pam_radius sends the service name
    assert events[0]["calling_station_id"] == "198.51.100.7"  # PAM_RHOST
    assert session_starts(simulator) == 1


def test_pamtester_against_a_proxy_requiring_message_authenticator(start_proxy,
                                                                   tmp_path: Path) -> None:
    proxy = start_proxy()  # the default: signatures required, so pam_radius 2.0 is dropped
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, 3)]) as svc:
        result = svc.authenticate("alice", ["alicepass"], timeout=30)
    assert result.returncode != 0
    assert proxy.wait_event("packet_dropped")[-1]["reason"] == "missing_message_authenticator"
