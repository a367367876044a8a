"""Push mode end to end: pamtester + Debian's pam_radius_auth 2.0 -> the proxy -> the SecSign
ID simulator, the way an SSH host or any PAM service uses it.

pam_radius_auth 2.0 cannot sign requests, so the proxy's client entry is legacy. Its
`timeout` is 60 s unless a case needs pam_radius's own retransmits. Each case checks what the
user sees (pamtester's exit status), what the ID server saw (the simulator's protocol log)
and what the administrator reads (the audit event's `reason`).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from radius_proxy.simulator import parse_rules
from tests.clients import pam_service
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts, simulator_log
from tests.e2e.conftest import audits, log_types, outcome, totp_code, wrong_code
from tests.support import free_port

PAM_TIMEOUT = 60
AUDIT_FIELDS = ("event", "request_id", "client", "nas_ip", "nas_identifier",
                "calling_station_id", "username", "secsign_id", "outcome", "reason",
                "primary_ms", "second_factor_ms", "total_ms")


def _login(proxy: RunningProxy, tmp_path: Path, user: str, password: str, *,
           timeout: int = PAM_TIMEOUT, options: str = "",
           rhost: str = "198.51.100.7") -> subprocess.CompletedProcess[str]:
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, timeout)], options) as svc:
        return svc.authenticate(user, [password], rhost=rhost)


@pytest.mark.parametrize(("rule", "accepted", "reason"), [
    ("*=approve:0.2", True, "push_approved"),
    ("*=deny:0.2", False, "push_denied"),
    ("*=expire:1", False, "push_timeout"),
])
def test_push_decides_the_login(start_proxy, simulator, tmp_path: Path, rule: str,
                                accepted: bool, reason: str) -> None:
    simulator.simulator.set_rules(parse_rules([rule]))
    proxy = start_proxy(legacy=True)
    result = _login(proxy, tmp_path, "alice", "alicepass")
    assert (result.returncode == 0) is accepted, outcome(result)
    assert ("successfully authenticated" in result.stdout) is accepted
    [event] = audits(proxy, 1)
    assert (event["outcome"], event["reason"]) == ("accept" if accepted else "reject", reason)
    assert session_starts(simulator) == 1


def test_retransmits_during_a_pending_push_start_one_push(start_proxy, simulator,
                                                          tmp_path: Path) -> None:
    """pam_radius with timeout 3 and retry=2 sends the same packet at 0, 3 and 6 s while the
    phone answers at 7 s: one push, one login, and the last transmission gets the reply."""
    simulator.simulator.set_rules(parse_rules(["*=approve:7"]))
    proxy = start_proxy(legacy=True)
    result = _login(proxy, tmp_path, "alice", "alicepass", timeout=3, options="retry=2")
    assert result.returncode == 0, outcome(result)
    assert session_starts(simulator) == 1
    assert len(proxy.events("duplicate_in_flight")) == 2
    [event] = audits(proxy, 1)
    assert event["reason"] == "push_approved"


def test_remembered_login_skips_the_push_only_from_the_same_station(start_proxy, simulator,
                                                                    tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy={"remember_minutes": 5})
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, PAM_TIMEOUT)]) as svc:
        for rhost in ("198.51.100.7", "198.51.100.7"):
            result = svc.authenticate("alice", ["alicepass"], rhost=rhost)
            assert result.returncode == 0, outcome(result)
        assert session_starts(simulator) == 1
        other = svc.authenticate("alice", ["alicepass"], rhost="203.0.113.9")
        assert other.returncode == 0, outcome(other)
    assert session_starts(simulator) == 2
    assert [e["reason"] for e in audits(proxy, 3)] == ["push_approved", "remembered",
                                                       "push_approved"]


def test_push_limit_rejects_the_fourth_push(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy={"max_pushes_per_user": 3,
                                             "push_window_minutes": 10})
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, PAM_TIMEOUT)]) as svc:
        codes = [svc.authenticate("alice", ["alicepass"]).returncode for _ in range(4)]
    assert codes[:3] == [0, 0, 0]
    assert codes[3] != 0
    assert [e["reason"] for e in audits(proxy, 4)] == ["push_approved"] * 3 + ["rate_limited"]
    assert session_starts(simulator) == 3


@pytest.mark.parametrize(("failmode", "accepted", "reason"), [
    ("safe", True, "failmode_safe"),
    ("secure", False, "id_server_unreachable"),
])
def test_unreachable_id_server_follows_failmode(start_proxy, simulator, tmp_path: Path,
                                                failmode: str, accepted: bool,
                                                reason: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = start_proxy(legacy=True, policy={"failmode": failmode},
                        secsign={"servers": [closed], "request_timeout_seconds": 2})
    result = _login(proxy, tmp_path, "alice", "alicepass")
    assert (result.returncode == 0) is accepted, outcome(result)
    [event] = audits(proxy, 1)
    assert (event["outcome"], event["reason"]) == ("accept" if accepted else "reject", reason)


class _FailingIdServer(ThreadingHTTPServer):
    """Answers a REST push start (and health probes) correctly, then fails every other
    request: HTTP 500, or a connection closed without an answer."""

    daemon_threads = True

    def __init__(self, failure: str) -> None:
        super().__init__(("127.0.0.1", 0), _FailingHandler)
        self.failure = failure
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FailingHandler(BaseHTTPRequestHandler):
    server: _FailingIdServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/rest/v2/AuthSession":
            self.server.requests.append("start")
            self._json({"authsessionid": 1, "secsignid": "alice.test", "authsessionstate": 1})
        elif path.startswith("/rest/v2/PluginRegistration/"):  # a health probe: all is well
            self.server.requests.append("probe")
            self._json({})
        else:
            self._fail("state" if path == "/rest/v2/AuthSession/1" else path)

    def _json(self, data: dict[str, object]) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self) -> None:
        self._fail("cancel")

    def _fail(self, what: str) -> None:
        self.server.requests.append(what)
        if self.server.failure == "close":
            self.close_connection = True  # no status line at all
            return
        body = b'{"errormsg": "internal error"}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads `server.requests`."""


@pytest.fixture(params=["http_500", "close"])
def failing_id_server(request: pytest.FixtureRequest) -> Iterator[_FailingIdServer]:
    server = _FailingIdServer(request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("failmode", ["safe", "secure"])
def test_started_push_that_fails_rejects_in_every_failmode(start_proxy, tmp_path: Path,
                                                           failing_id_server: _FailingIdServer,
                                                           failmode: str) -> None:
    proxy = start_proxy(legacy=True, policy={"failmode": failmode},
                        secsign={"servers": [failing_id_server.url]})
    result = _login(proxy, tmp_path, "alice", "alicepass")
    assert result.returncode != 0, outcome(result)
    [event] = audits(proxy, 1)
    assert (event["outcome"], event["reason"]) == ("reject", "push_failed")
    seen = [r for r in failing_id_server.requests if r != "probe"]
    assert seen[0] == "start"  # the push really started...
    assert seen.count("start") == 1
    assert seen.count("state") >= 1  # ...and then the ID server failed


def test_passcode_after_the_password_logs_in_without_a_push(start_proxy, simulator,
                                                            tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True)
    code = totp_code(simulator, "alice.test")
    result = _login(proxy, tmp_path, "alice", f"alicepass,{code}")
    assert result.returncode == 0, outcome(result)
    assert log_types(simulator) == ["totp"]
    [event] = audits(proxy, 1)
    assert (event["outcome"], event["reason"]) == ("accept", "passcode_accepted")


def test_wrong_passcode_fails(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True)
    result = _login(proxy, tmp_path, "alice", f"alicepass,{wrong_code(simulator, 'alice.test')}")
    assert result.returncode != 0, outcome(result)
    assert log_types(simulator) == ["totp"]
    [event] = audits(proxy, 1)
    assert (event["outcome"], event["reason"]) == ("reject", "passcode_rejected")


def test_allow_groups_admits_members_only(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy={"allow_groups": ["vpn-users"]})
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, PAM_TIMEOUT)]) as svc:
        alice = svc.authenticate("alice", ["alicepass"])
        bob = svc.authenticate("bob", ["bob,pass"])
    assert alice.returncode == 0, outcome(alice)
    assert bob.returncode != 0, outcome(bob)
    assert [(e["username"], e["reason"]) for e in audits(proxy, 2)] == [
        ("alice", "push_approved"), ("bob", "not_in_allowed_group")]
    assert [e["secsignid"] for e in simulator_log(simulator) if e["type"] == "start"] == [
        "alice.test"]


def test_bypass_group_logs_in_without_a_push(start_proxy, simulator, tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True, policy={"bypass_2fa_groups": ["admins"]})
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, PAM_TIMEOUT)]) as svc:
        bob = svc.authenticate("bob", ["bob,pass"])
        wrong = svc.authenticate("bob", ["bob,wrong"])
    assert bob.returncode == 0, outcome(bob)
    assert wrong.returncode != 0, "the bypass skips the push, never the password"
    assert [e["reason"] for e in audits(proxy, 2)] == ["bypass_group", "primary_rejected"]
    assert log_types(simulator) == []


@pytest.mark.parametrize(("setting", "accepted"), [("reject", False), ("accept", True)])
def test_user_without_secsign_id(start_proxy, simulator, tmp_path: Path, setting: str,
                                 accepted: bool) -> None:
    proxy = start_proxy(legacy=True, policy={"no_secsign_id": setting})
    result = _login(proxy, tmp_path, "carol", "carolpass")
    assert (result.returncode == 0) is accepted, outcome(result)
    [event] = audits(proxy, 1)
    assert (event["outcome"], event["reason"]) == ("accept" if accepted else "reject",
                                                   "no_secsign_id")
    assert event["secsign_id"] is None
    assert log_types(simulator) == []


def test_audit_event_of_a_push_login_has_every_field(start_proxy, simulator,
                                                     tmp_path: Path) -> None:
    proxy = start_proxy(legacy=True)
    with pam_service(tmp_path, [(proxy.address, PROXY_SECRET, PAM_TIMEOUT)]) as svc:
        result = svc.authenticate("alice", ["alicepass"], rhost="198.51.100.23")
    assert result.returncode == 0, outcome(result)
    [event] = audits(proxy, 1)
    missing = [name for name in AUDIT_FIELDS if event.get(name) in (None, "")]
    assert missing == [], event
    assert event["event"] == "auth"
    assert event["client"] == "test"
    assert event["nas_identifier"] == svc.name  # pam_radius sends the PAM service name
    assert event["calling_station_id"] == "198.51.100.23"  # PAM_RHOST
    assert (event["username"], event["secsign_id"]) == ("alice", "alice.test")
    assert (event["outcome"], event["reason"]) == ("accept", "push_approved")
    assert event["second_factor_ms"] >= 200  # the phone approves after 0.2 s
    assert event["total_ms"] >= event["primary_ms"] + event["second_factor_ms"]
    text = proxy.log()  # JSON at DEBUG level: the most the proxy ever writes
    assert "alicepass" not in text
    assert PROXY_SECRET not in text


def test_poll_lines_carry_the_request_id_of_their_login(start_proxy, simulator,
                                                        tmp_path: Path) -> None:
    """The poll scheduler's workers poll one push after another in a context of their own;
    each poll's lines still carry its login's request_id and client, so one login can be
    followed from the packet to the phone's answer."""
    simulator.simulator.set_rules(parse_rules(["*=approve:1"]))  # FETCHED at 0.5 s
    proxy = start_proxy(legacy=True)
    result = _login(proxy, tmp_path, "alice", "alicepass")
    assert result.returncode == 0, outcome(result)
    [event] = audits(proxy, 1)
    polled = proxy.events("secsign.push.state")  # the poll that saw FETCHED (every 0.1 s)
    assert polled, proxy.log()
    assert {(e.get("request_id"), e.get("client")) for e in polled} == \
        {(event["request_id"], "test")}
