"""No secret in any log byte, over a run of every backend at DEBUG level (PRODUCT.md s6).

Four proxies run one after another, all logging JSON at DEBUG (the most they ever write):
the users file in push mode and in challenge mode, slapd as the directory, FreeRADIUS as
the upstream. Between them they see pushes, passcodes (right and wrong, after the password
and typed at a challenge), wrong passwords, an upstream OTP challenge and requests signed
with a wrong secret. Then every byte each process wrote (stdout and stderr) is searched for
the user passwords, the client secret, the upstream secret, the LDAP bind password, the PIN
password, the codes typed, and the hidden User-Password octets in hex or base64.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any

from pyrad import packet as rp

from radius_proxy.simulator import BackgroundSimulator
from tests.clients import radclient
from tests.conftest import PROXY_SECRET, RunningProxy
from tests.e2e.conftest import totp_code, wrong_code
from tests.robustness.conftest import RawLogin, ldap_sections, upstream_sections
from tests.servers import slapd as slapd_server
from tests.servers.freeradius import CAROL_OTP, FreeRadius
from tests.servers.slapd import Slapd

WRONG_PASSWORD = "Wr0ng-Pa55word-x9"
WRONG_SECRET = "wrong-secret-1b5c3d9e7f2a4c6e"
PIN_PASSWORD = "test-pin-password"  # tests/conftest.py base_config
POLICY = {"max_pushes_per_user": 100}


class Run:
    """What one test run typed and sent, to be looked for in the logs afterwards."""

    def __init__(self) -> None:
        self.texts: set[str] = {PROXY_SECRET, WRONG_SECRET, PIN_PASSWORD, WRONG_PASSWORD,
                                slapd_server.SERVICE_PASSWORD}
        self.codes: set[str] = set()
        self.hidden: list[bytes] = []
        self.proxies: list[RunningProxy] = []
        self.serial = 0

    def login(self, proxy: RunningProxy, user: str, password: str,
              state: bytes | None = None, secret: str | None = None) -> bytes | None:
        """One Access-Request (State to answer a challenge); the reply, or None."""
        self.serial += 1
        extra = [("State", state)] if state is not None else []
        login = RawLogin(proxy, user, password, identifier=self.serial % 256, extra=extra,
                         secret=secret, station=f"192.0.2.{self.serial % 250}")
        if password.isdigit():
            self.codes.add(password)  # searched for as a number, see the test
        elif password:
            self.texts.add(password)
        self.hidden.append(login.hidden_password)
        reply = login.exchange(10)
        if reply is not None:
            login.code(reply)  # verifies it
        return reply

    def needles(self) -> set[bytes]:
        out = {t.encode() for t in self.texts if len(t) >= 6}
        out |= {t.encode().hex().encode() for t in self.texts if len(t) >= 6}
        for hidden in self.hidden:
            out |= {hidden.hex().encode(), hidden.hex().upper().encode(),
                    base64.b64encode(hidden), base64.b64encode(hidden).rstrip(b"=")}
        return out


def code(reply: bytes | None) -> int | None:
    return None if reply is None else reply[0]


def state_of(reply: bytes) -> bytes:
    """The State attribute of a reply (RFC 2865 section 5.24)."""
    pos = 20
    while pos < len(reply):
        kind, length = reply[pos], reply[pos + 1]
        if kind == 24:
            return reply[pos + 2:pos + length]
        pos += length
    raise AssertionError("no State in the challenge")


def reasons(proxy: RunningProxy) -> set[str]:
    return {e["reason"] for e in proxy.events("auth")}


def without_timestamps(text: str) -> Iterable[str]:
    """The log's lines with the generated timestamp left out (its microseconds are six
    digits, like a passcode)."""
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            yield line
            continue
        if isinstance(event, dict):
            event.pop("timestamp", None)
            yield json.dumps(event)
        else:
            yield line


def debug_events(log: bytes) -> set[str]:
    """Names of the DEBUG events in a log: every run pushes once, so these always appear.

    Which other DEBUG lines appear depends on timing (a poll may or may not see FETCHED
    before the approval), so the check names the lines every push writes.
    """
    events = (json.loads(line) for line in log.splitlines() if line.startswith(b"{"))
    return {event["event"] for event in events if event.get("level") == "debug"}


def users_file_push(start_proxy: Any, simulator: BackgroundSimulator, run: Run) -> None:
    proxy = start_proxy(policy=POLICY)
    run.proxies.append(proxy)
    good, bad = totp_code(simulator, "alice.test"), wrong_code(simulator, "alice.test")
    run.codes |= {good, bad}
    assert code(run.login(proxy, "alice", "alicepass")) == rp.AccessAccept
    assert code(run.login(proxy, "alice", WRONG_PASSWORD)) == rp.AccessReject
    assert code(run.login(proxy, "alice", f"alicepass,{good}")) == rp.AccessAccept
    assert code(run.login(proxy, "alice", f"alicepass,{bad}")) == rp.AccessReject
    assert code(run.login(proxy, "bob", "bob,pass")) == rp.AccessAccept
    assert run.login(proxy, "alice", "alicepass", secret=WRONG_SECRET) is None
    assert radclient(proxy.address, WRONG_SECRET, ["User-Name = alice",
                                                   "User-Password = alicepass"],
                     retries=1, timeout=1).no_reply
    proxy.wait_event("auth", 5)
    assert {"push_approved", "primary_rejected", "passcode_accepted",
            "passcode_rejected"} <= reasons(proxy)
    assert len(proxy.events("packet_dropped")) == 2  # both wrong-secret requests


def users_file_challenge(start_proxy: Any, simulator: BackgroundSimulator, run: Run) -> None:
    proxy = start_proxy(policy={**POLICY, "mode": "challenge"})
    run.proxies.append(proxy)
    good, bad = totp_code(simulator, "alice.test"), wrong_code(simulator, "alice.test")
    run.codes |= {good, bad}
    for answer, expected in (("", rp.AccessAccept), (good, rp.AccessAccept),
                             (bad, rp.AccessReject)):
        challenge = run.login(proxy, "alice", "alicepass")
        assert code(challenge) == rp.AccessChallenge
        assert challenge is not None
        assert code(run.login(proxy, "alice", answer, state=state_of(challenge))) == expected
    assert code(run.login(proxy, "alice", WRONG_PASSWORD)) == rp.AccessReject
    proxy.wait_event("auth", 7)
    assert {"challenge_sent", "push_approved", "passcode_accepted", "passcode_rejected",
            "primary_rejected"} <= reasons(proxy)


def ldap_run(start_proxy: Any, simulator: BackgroundSimulator, slapd: Slapd, run: Run) -> None:
    proxy = start_proxy(policy=POLICY, **ldap_sections(slapd))
    run.proxies.append(proxy)
    good = totp_code(simulator, "bob.secsign")
    run.codes.add(good)
    run.texts |= {"alicepass", "bobpass"}
    assert code(run.login(proxy, "alice", "alicepass")) == rp.AccessAccept
    assert code(run.login(proxy, "bob", WRONG_PASSWORD)) == rp.AccessReject
    assert code(run.login(proxy, "bob", f"bobpass,{good}")) == rp.AccessAccept
    proxy.wait_event("auth", 3)
    assert {"push_approved", "primary_rejected", "passcode_accepted"} <= reasons(proxy)


def upstream_run(start_proxy: Any, freeradius: FreeRadius, run: Run) -> None:
    proxy = start_proxy(policy=POLICY,
                        **upstream_sections([freeradius.ma_address], freeradius.secret))
    run.proxies.append(proxy)
    run.texts |= {freeradius.secret, "carolpass"}
    run.codes.add(CAROL_OTP)
    assert code(run.login(proxy, "bob", "bobpass")) == rp.AccessAccept
    challenge = run.login(proxy, "carol", "carolpass")
    assert code(challenge) == rp.AccessChallenge
    assert challenge is not None
    assert code(run.login(proxy, "carol", CAROL_OTP, state=state_of(challenge))) == \
        rp.AccessAccept
    assert code(run.login(proxy, "alice", WRONG_PASSWORD)) == rp.AccessReject
    proxy.wait_event("auth", 4)
    assert {"push_approved", "upstream_challenge", "primary_rejected"} <= reasons(proxy)


def test_no_secret_in_any_log_byte_of_a_multi_backend_run(start_proxy, simulator,
                                                          slapd: Slapd,
                                                          freeradius: FreeRadius) -> None:
    run = Run()
    users_file_push(start_proxy, simulator, run)
    users_file_challenge(start_proxy, simulator, run)
    ldap_run(start_proxy, simulator, slapd, run)
    upstream_run(start_proxy, freeradius, run)

    logs = []
    for proxy in run.proxies:
        proxy.process.stop()  # everything flushed, shutdown lines included
        logs.append(proxy.process.log_path.read_bytes())
        assert {"secsign.push.started", "secsign.push.finished"} <= debug_events(logs[-1]), \
            "a proxy did not log at DEBUG"
    everything = b"\n".join(logs)
    assert b'"username": "carol"' in everything  # the search does see the audit events
    assert len(run.codes) >= 3  # the same step gives the same code on every proxy
    assert len(run.hidden) >= 20

    found = sorted(n.decode() for n in run.needles() if n in everything)
    assert found == [], f"secrets in the log: {found}"
    text = "\n".join(without_timestamps(everything.decode("utf-8", "replace")))
    typed = sorted(c for c in run.codes if re.search(rf"(?<!\d){c}(?!\d)", text))
    assert typed == [], f"typed codes in the log: {typed}"
