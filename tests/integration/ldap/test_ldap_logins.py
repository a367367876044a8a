"""Logins through the real proxy with an LDAP directory: radclient and pam_radius_auth.

`radius-proxy serve` runs as a child process with primary backend and identity source
"ldap" against the session's slapd (and Samba AD); the SecSign ID simulator approves every
push. What an administrator sees: the directory's password and account state decide, the
SecSign ID comes from the directory attribute, nested groups drive the group policy, a
directory outage is a clean reject, and no password reaches the log even at DEBUG level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from radius_proxy.simulator import BackgroundSimulator
from tests.clients import pam_service, radclient
from tests.servers import samba as samba_server
from tests.servers import slapd as slapd_server
from tests.servers.samba import SambaDC
from tests.servers.slapd import Slapd
from tests.support import free_port

StartProxy = Callable[..., Any]


def ldap_sections(server: Slapd, **ldap: Any) -> dict[str, Any]:
    """The config sections that make slapd the primary backend and identity source."""
    section: dict[str, Any] = {
        "urls": [server.ldap_url], "ca_file": str(server.pki.ca_file),
        "bind_dn": slapd_server.SERVICE_DN, "bind_password": slapd_server.SERVICE_PASSWORD,
        "base_dn": slapd_server.SUFFIX, "user_filter": slapd_server.USER_FILTER,
        "secsign_id_attribute": "secsignId", "timeout_seconds": 2,
    }
    section.update(ldap)
    return {"primary": {"backend": "ldap"}, "identity": {"sources": ["ldap"]},
            "ldap": section}


def login(proxy: Any, user: str, password: str) -> str | None:
    result = radclient(proxy.address, proxy.secret,
                       [f'User-Name = "{user}"', f'User-Password = "{password}"',
                        'NAS-Identifier = "ldap-test"'], timeout=10)
    return result.code


def pushed_ids(simulator: BackgroundSimulator) -> list[str | None]:
    return [e.secsignid for e in simulator.simulator.log() if e.kind == "start"]


def audit(proxy: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = proxy.wait_event("auth", count)
    return events


def test_radclient_logins_against_slapd(start_proxy: StartProxy, slapd: Slapd,
                                        simulator: BackgroundSimulator) -> None:
    proxy = start_proxy(**ldap_sections(slapd, urls=[slapd.ldaps_url]))
    assert login(proxy, "alice", "alicepass") == "Access-Accept"
    assert pushed_ids(simulator) == ["alice.secsign"]
    assert login(proxy, "EXAMPLE\\bob", "bobpass") == "Access-Accept"
    assert login(proxy, "alice", "wrong") == "Access-Reject"
    assert login(proxy, "erin", "erinpass") == "Access-Reject"
    assert login(proxy, "dave", "davepass") == "Access-Reject"  # no SecSign ID
    assert login(proxy, "*", "alicepass") == "Access-Reject"
    events = audit(proxy, 6)
    assert [(e["outcome"], e["reason"], e.get("primary_reason")) for e in events] == [
        ("accept", "push_approved", None),
        ("accept", "push_approved", None),
        ("reject", "primary_rejected", "bad_password"),
        ("reject", "primary_rejected", "account_disabled"),
        ("reject", "no_secsign_id", None),
        ("reject", "primary_rejected", "unknown_user"),
    ]
    assert events[0]["secsign_id"] == "alice.secsign"
    assert pushed_ids(simulator) == ["alice.secsign", "bob.secsign"]
    log = proxy.log()
    for secret in ("alicepass", "bobpass", "erinpass", slapd_server.SERVICE_PASSWORD):
        assert secret not in log


def test_nested_group_policy(start_proxy: StartProxy, slapd: Slapd,
                             simulator: BackgroundSimulator) -> None:
    proxy = start_proxy(**ldap_sections(slapd),
                        policy={"allow_groups": ["g3"], "bypass_2fa_groups": ["LOOP-B"]})
    assert login(proxy, "alice", "alicepass") == "Access-Accept"  # alice in g1 in g2 in g3
    assert login(proxy, "carol", "carolpass") == "Access-Reject"  # only in vpn-users
    events = audit(proxy, 2)
    assert [(e["outcome"], e["reason"]) for e in events] == [
        ("accept", "push_approved"), ("reject", "not_in_allowed_group")]
    proxy2 = start_proxy(**ldap_sections(slapd), policy={"bypass_2fa_groups": ["LOOP-B"]})
    assert login(proxy2, "bob", "bobpass") == "Access-Accept"  # by group name, any case
    assert audit(proxy2, 1)[0]["reason"] == "bypass_group"


def test_directory_down_is_a_clean_reject(start_proxy: StartProxy, slapd: Slapd) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    proxy = start_proxy(**ldap_sections(slapd, urls=[dead], timeout_seconds=1))
    assert login(proxy, "alice", "alicepass") == "Access-Reject"
    event = audit(proxy, 1)[0]
    assert (event["reason"], event["primary_reason"]) == ("primary_unavailable",
                                                          "directory_unavailable")


def test_pamtester_login_through_the_proxy(start_proxy: StartProxy, slapd: Slapd,
                                           tmp_path: Path,
                                           simulator: BackgroundSimulator) -> None:
    proxy = start_proxy(legacy=True, **ldap_sections(slapd, urls=[slapd.ldap_url],
                                                     start_tls=True))
    with pam_service(tmp_path, [(proxy.address, proxy.secret, 10)]) as pam:
        ok = pam.authenticate("alice", ["alicepass"])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        bad = pam.authenticate("alice", ["nope"])
        assert bad.returncode != 0
    assert pushed_ids(simulator) == ["alice.secsign"]


@pytest.mark.slow
def test_radclient_logins_against_samba(start_proxy: StartProxy, samba: SambaDC,
                                        simulator: BackgroundSimulator) -> None:
    proxy = start_proxy(
        primary={"backend": "ldap"}, identity={"sources": ["ldap"]},
        ldap={"urls": [samba.ldaps_url], "ca_file": str(samba.pki.ca_file),
              "bind_dn": samba_server.SERVICE_DN, "bind_password": samba_server.SERVICE_PASSWORD,
              "base_dn": samba_server.BASE_DN,
              "secsign_id_attribute": samba_server.SECSIGN_ATTRIBUTE, "timeout_seconds": 3},
        policy={"allow_groups": ["g3"]},
    )
    assert login(proxy, "alice@example.test", "AlicePass!1") == "Access-Accept"
    assert login(proxy, "alice", "WrongPass!1") == "Access-Reject"
    assert login(proxy, "bob", "BobPass!1") == "Access-Reject"  # not in g3
    assert login(proxy, "erin", "ErinPass!1") == "Access-Reject"  # disabled
    assert [(e["reason"], e.get("primary_reason")) for e in audit(proxy, 4)] == [
        ("push_approved", None), ("primary_rejected", "bad_password"),
        ("not_in_allowed_group", None), ("primary_rejected", "account_disabled")]
    assert pushed_ids(simulator) == ["alice.secsign"]
