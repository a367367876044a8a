"""Faults in every backend: each has its documented outcome, within a bound, and the proxy
keeps answering everyone else (Status-Server, and another user's login) while it lasts.

- LDAP stopped: reject `primary_unavailable`, and logins work again once it is back.
- LDAP that accepts the connection and never answers (the only URL, timeout 1 s): reject
  within the budget of one connect plus one operation.
- Upstream RADIUS stopped, and a UDP black hole: reject `primary_unavailable` within
  timeout x (retries + 1), for several users at once rather than one after another.
- The ID server: HTTP 500 at the start (`failmode` secure rejects `id_server_unreachable`,
  safe accepts `failmode_safe`); 200 with garbage (never an accept, even in failmode safe);
  a connection accepted and never answered (reject within the request timeout); a TLS
  certificate that does not verify (reject; works with `secsign.ca_file`); an answer that
  says another SecSign ID was authenticated (reject).

Everyone else: while an ID-server fault holds alice's login, bob (in the bypass group, so
he needs no ID server) is accepted and a Status-Server answered, before alice gets her
answer. The directory and the upstream are needed by every login, so there the others are
logins in parallel that are all answered within one timeout (not queued behind the fault),
and a Status-Server answered while they wait.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as rp

from tests.conftest import RunningProxy
from tests.robustness.conftest import (
    HANG,
    BlackHole,
    FakeIdServer,
    RawLogin,
    Script,
    accepted,
    json_body,
    ldap_sections,
    self_signed,
    started,
    state,
    status_ok,
    upstream_sections,
)
from tests.servers.freeradius import FreeRadiusFactory
from tests.servers.slapd import Slapd
from tests.support import wait_for

#: bob is in "admins": he logs in on his password alone, whatever the ID server does.
BYPASS = {"bypass_2fa_groups": ["admins"], "max_pushes_per_user": 1000}
#: Slack over a configured timeout for a loaded 2-core machine.
SLACK = 1.5


def audit_of(proxy: RunningProxy, user: str, count: int = 1) -> dict[str, Any]:
    """The latest audit event of `user`, once `count` of them are logged."""
    wait_for(lambda: len([e for e in proxy.events("auth") if e["username"] == user]) >= count,
             15, f"{count} audit event(s) of {user}")
    return [e for e in proxy.events("auth") if e["username"] == user][-1]


def timed_reply(login: RawLogin, limit: float) -> tuple[bytes, float]:
    """Send, and the reply with the seconds it took; fails if none comes within limit."""
    t0 = time.monotonic()
    login.send()
    reply = login.receive(limit + 5)
    took = time.monotonic() - t0
    assert reply is not None, f"no answer to {login.user} within {limit + 5:g} s"
    return reply, took


def others_answered(proxy: RunningProxy, *, bob_accepted: bool = True,
                    bob_password: str = "bob,pass") -> None:  # noqa: S107 - a test user's
    """Status-Server and bob's login are answered now (bob accepted, or at least answered)."""
    assert status_ok(proxy), "Status-Server unanswered during the fault"
    bob = RawLogin(proxy, "bob", bob_password, station="192.0.2.250")
    reply = bob.exchange(5)
    assert reply is not None, "bob's login unanswered during the fault"
    code = bob.code(reply)
    if bob_accepted:
        assert code == rp.AccessAccept


def held_then_answered(proxy: RunningProxy, login: RawLogin, arrived: Callable[[], bool],
                       limit: float) -> tuple[int, float]:
    """Send login; once the fault holds it (`arrived()`), Status-Server and bob are answered
    while it still waits; then its own answer comes within limit. Returns (code, seconds)."""
    t0 = time.monotonic()
    login.send()
    wait_for(arrived, 5, "the faulty backend to hold the login")
    others_answered(proxy)
    assert login.receive(0.0) is None, "the held login was answered before the others"
    reply = login.receive(limit + 5)
    took = time.monotonic() - t0
    assert reply is not None, f"no answer within {limit + 5:g} s"
    return login.code(reply), took


# --- LDAP ---------------------------------------------------------------------------------


def test_ldap_down_rejects_primary_unavailable_and_recovers(start_proxy,
                                                            own_slapd: Slapd) -> None:
    proxy = start_proxy(**ldap_sections(own_slapd, timeout_seconds=1))
    alice = RawLogin(proxy, "alice", "alicepass", identifier=1)
    assert accepted(alice, alice.exchange(10))

    own_slapd.stop()
    down = RawLogin(proxy, "alice", "alicepass", identifier=2)
    reply, took = timed_reply(down, 2 + SLACK)
    assert down.code(reply) == rp.AccessReject
    assert took < 2 + SLACK, f"the reject took {took:.1f} s"
    event = audit_of(proxy, "alice", 2)
    assert (event["outcome"], event["reason"]) == ("reject", "primary_unavailable")
    others_answered(proxy, bob_accepted=False, bob_password="bobpass")
    bob = audit_of(proxy, "bob")
    assert bob["reason"] == "primary_unavailable"
    assert proxy.events("ldap_server_down"), "the outage is not logged"

    own_slapd.start()
    again = RawLogin(proxy, "alice", "alicepass", identifier=3)
    assert accepted(again, again.exchange(10)), "no recovery after the directory came back"


def test_ldap_that_never_answers_rejects_within_the_timeout(start_proxy, black_hole) -> None:
    """alice and bob at once: both rejected within one budget, Status-Server answered while
    they wait."""
    hole: BlackHole = black_hole(socket.SOCK_STREAM)
    proxy = start_proxy(primary={"backend": "ldap"}, identity={"sources": ["ldap"]},
                        ldap={"urls": [f"ldap://{hole.address}"],
                              "bind_dn": "cn=svc,dc=example,dc=com", "bind_password": "x-pw",
                              "base_dn": "dc=example,dc=com", "timeout_seconds": 1})
    logins = [RawLogin(proxy, "alice", "alicepass"), RawLogin(proxy, "bob", "bobpass")]
    budget = 2.0  # one connect plus one operation, 1 s each
    t0 = time.monotonic()
    for login in logins:
        login.send()
    wait_for(lambda: hole.received >= 1, 5, "the directory to accept a connection")
    assert status_ok(proxy), "Status-Server unanswered during the fault"
    assert all(login.receive(0.0) is None for login in logins)
    for login in logins:
        reply = login.receive(budget + SLACK + 5)
        assert reply is not None
        assert login.code(reply) == rp.AccessReject
    took = time.monotonic() - t0
    assert took < budget + SLACK, f"the rejects took {took:.1f} s"
    for user in ("alice", "bob"):
        event = audit_of(proxy, user)
        assert (event["outcome"], event["reason"]) == ("reject", "primary_unavailable")


# --- upstream RADIUS ------------------------------------------------------------------------


def test_upstream_down_rejects_primary_unavailable_and_recovers(
        start_proxy, make_freeradius: FreeRadiusFactory) -> None:
    server = make_freeradius()
    proxy = start_proxy(**upstream_sections([server.ma_address], server.secret))
    bob = RawLogin(proxy, "bob", "bobpass", identifier=1)
    assert accepted(bob, bob.exchange(10))

    server.stop()
    down = RawLogin(proxy, "alice", "alicepass", identifier=2)
    budget = 2.0  # timeout 1 s x (1 retry + 1)
    reply, took = timed_reply(down, budget + SLACK)
    assert down.code(reply) == rp.AccessReject
    assert took < budget + SLACK, f"the reject took {took:.1f} s"
    event = audit_of(proxy, "alice")
    assert (event["outcome"], event["reason"]) == ("reject", "primary_unavailable")
    others_answered(proxy, bob_accepted=False, bob_password="bobpass")
    assert audit_of(proxy, "bob", 2)["reason"] == "primary_unavailable"

    server.start()
    again = RawLogin(proxy, "bob", "bobpass", identifier=3)
    assert accepted(again, again.exchange(10)), "no recovery after the upstream came back"


def test_upstream_black_hole_rejects_everyone_in_parallel_within_the_timeout(
        start_proxy, black_hole) -> None:
    hole: BlackHole = black_hole(socket.SOCK_DGRAM)
    proxy = start_proxy(**upstream_sections([hole.address], "upstream-secret-7d1e0c55aa"))
    users = ("alice", "carol", "dave")
    logins = [RawLogin(proxy, user, f"{user}pass", station=f"192.0.2.{i}")
              for i, user in enumerate(users, 1)]
    budget = 2.0

    def forwarded() -> int:
        return hole.codes.count(rp.AccessRequest)

    t0 = time.monotonic()
    for login in logins:
        login.send()
    wait_for(lambda: forwarded() >= len(users), 5, "the requests to reach the black hole")
    assert status_ok(proxy), "Status-Server unanswered during the fault"
    assert all(login.receive(0.0) is None for login in logins)
    for login in logins:
        reply = login.receive(budget + SLACK + 5)
        assert reply is not None
        assert login.code(reply) == rp.AccessReject
    took = time.monotonic() - t0
    # one after another would take 3 x 2 s
    assert took < budget + SLACK, f"three rejects took {took:.1f} s"
    for user in users:
        event = audit_of(proxy, user)
        assert (event["outcome"], event["reason"]) == ("reject", "primary_unavailable")
    assert forwarded() == 2 * len(users)  # each sent once and retransmitted once


# --- the SecSign ID server -------------------------------------------------------------------


def id_server_proxy(start_proxy: Any, server: FakeIdServer, failmode: str = "secure",
                    **secsign: Any) -> RunningProxy:
    proxy: RunningProxy = start_proxy(
        policy={**BYPASS, "failmode": failmode},
        secsign={"servers": [server.url], "request_timeout_seconds": 1, **secsign})
    return proxy


@pytest.mark.parametrize(("failmode", "code", "reason"), [
    ("secure", rp.AccessReject, "id_server_unreachable"),
    ("safe", rp.AccessAccept, "failmode_safe"),
])
def test_id_server_answering_500_follows_failmode(start_proxy, fake_id_server, failmode: str,
                                                  code: int, reason: str) -> None:
    error = (500, b"<html>Internal Server Error</html>")
    server: FakeIdServer = fake_id_server(Script(start=error, state=error, probe=error))
    proxy = id_server_proxy(start_proxy, server, failmode)
    alice = RawLogin(proxy, "alice", "alicepass")
    reply, _ = timed_reply(alice, 5)
    assert alice.code(reply) == code
    event = audit_of(proxy, "alice")
    assert event["reason"] == reason
    assert server.kinds() == ["start"]  # asked once, no fallback loop, no poll
    others_answered(proxy)


GARBAGE: dict[str, Script] = {
    "start not JSON": Script(start=(200, b"<html><body>Welcome</body></html>")),
    "start empty body": Script(start=(200, b"")),
    "start a JSON list": Script(start=json_body(["4242"])),
    "start id not a number": Script(start=json_body({"authsessionid": "forty-two"})),
    "start id a boolean": Script(start=json_body({"authsessionid": True})),
    "start id a float": Script(start=json_body({"authsessionid": 4242.5})),
    "start secsignid a number": Script(start=json_body({"authsessionid": 1, "secsignid": 7})),
    "state truncated JSON": Script(state=(200, b'{"authsessionstate": 3')),
    "state JSON null": Script(state=(200, b"null")),
    "state a boolean": Script(state=state(True)),
    "state a float": Script(state=state(3.0)),
    "state a list": Script(state=state([3])),
    "state a word": Script(state=state("AUTHENTICATED")),
    "state out of range": Script(state=state(3000)),
    "state of another session": Script(state=json_body({"authsessionid": 1,
                                                        "authsessionstate": 3})),
    "state over a megabyte": Script(state=(200, json.dumps(
        {"authsessionstate": 3, "pad": "x" * (2 << 20)}).encode())),
}


def test_garbage_from_the_id_server_is_never_an_accept(start_proxy, fake_id_server) -> None:
    """failmode safe, the most lenient setting: still a reject for each kind of nonsense."""
    server: FakeIdServer = fake_id_server()
    proxy = id_server_proxy(start_proxy, server, "safe")
    alice = RawLogin(proxy, "alice", "alicepass", identifier=1)
    assert accepted(alice, alice.exchange(5)), "the fake ID server's valid script fails"
    for n, (case, script) in enumerate(GARBAGE.items(), 2):
        server.script = script
        login = RawLogin(proxy, "alice", "alicepass", identifier=n)
        reply, _ = timed_reply(login, 10)
        assert login.code(reply) == rp.AccessReject, case
        event = audit_of(proxy, "alice", n)
        assert (event["outcome"], event["reason"]) == ("reject", "push_failed"), case
    others_answered(proxy)


@pytest.mark.parametrize(("where", "budget", "reason"), [
    ("start", 2.0, "id_server_unreachable"),  # request timeout 1 s + the loop's 1 s guard
    ("state", 3.5, "push_failed"),  # three polls of 1 s each fail the started push
])
def test_id_server_that_never_answers_rejects_within_the_timeout(
        start_proxy, fake_id_server, where: str, budget: float, reason: str) -> None:
    script = Script(start=HANG) if where == "start" else Script(state=HANG)
    server: FakeIdServer = fake_id_server(script)
    proxy = id_server_proxy(start_proxy, server)
    alice = RawLogin(proxy, "alice", "alicepass")
    code, took = held_then_answered(proxy, alice, lambda: where in server.kinds(),
                                    budget + SLACK)
    assert code == rp.AccessReject
    assert took < budget + SLACK, f"the reject took {took:.1f} s"
    event = audit_of(proxy, "alice")
    assert (event["outcome"], event["reason"]) == ("reject", reason)


@pytest.fixture
def tls_id_server(fake_id_server, tmp_path: Path) -> tuple[FakeIdServer, Path]:
    cert, key = self_signed(tmp_path)
    server: FakeIdServer = fake_id_server(Script(), tls=(cert, key))
    return server, cert


def tls_log_lines(proxy: RunningProxy) -> list[str]:
    return [line for line in proxy.log().splitlines()
            if re.search(r"SSL|TLS|certificate", line, re.IGNORECASE)]


def test_id_server_certificate_that_does_not_verify_is_refused(
        start_proxy, tls_id_server: tuple[FakeIdServer, Path]) -> None:
    server, _ = tls_id_server
    proxy = id_server_proxy(start_proxy, server)
    alice = RawLogin(proxy, "alice", "alicepass")
    reply, _ = timed_reply(alice, 5)
    assert alice.code(reply) == rp.AccessReject
    event = audit_of(proxy, "alice")
    assert (event["outcome"], event["reason"]) == ("reject", "id_server_unreachable")
    assert server.calls == [], "a request went through a TLS session that did not verify"
    assert tls_log_lines(proxy), "no log line names the TLS failure"
    others_answered(proxy)


def test_id_server_certificate_failure_log_names_verification(
        start_proxy, tls_id_server: tuple[FakeIdServer, Path]) -> None:
    server, _ = tls_id_server
    proxy = id_server_proxy(start_proxy, server)
    alice = RawLogin(proxy, "alice", "alicepass")
    reply, _ = timed_reply(alice, 5)
    assert alice.code(reply) == rp.AccessReject
    audit_of(proxy, "alice")
    lines = tls_log_lines(proxy)
    assert any(re.search(r"verif", line, re.IGNORECASE) for line in lines), lines


def test_id_server_certificate_trusted_through_ca_file_works(
        start_proxy, tls_id_server: tuple[FakeIdServer, Path]) -> None:
    server, cert = tls_id_server
    proxy = id_server_proxy(start_proxy, server, ca_file=str(cert))
    alice = RawLogin(proxy, "alice", "alicepass")
    reply, _ = timed_reply(alice, 5)
    assert alice.code(reply) == rp.AccessAccept
    assert audit_of(proxy, "alice")["reason"] == "push_approved"
    assert server.kinds()[:2] == ["start", "state"]


@pytest.mark.parametrize("where", ["start", "state"])
def test_id_server_reporting_another_secsign_id_is_a_reject(start_proxy, fake_id_server,
                                                            where: str) -> None:
    """The ID server says mallory.test approved alice's push: never an accept."""
    script = Script(start=started("mallory.test")) if where == "start" else \
        Script(state=state(3, "mallory.test"))
    server: FakeIdServer = fake_id_server(script)
    proxy = id_server_proxy(start_proxy, server, "safe")
    alice = RawLogin(proxy, "alice", "alicepass")
    reply, _ = timed_reply(alice, 5)
    assert alice.code(reply) == rp.AccessReject
    event = audit_of(proxy, "alice")
    assert (event["outcome"], event["reason"]) == ("reject", "push_failed")
    assert proxy.events("secsign.push.wrong_id")
    others_answered(proxy)
