"""Retransmit storms during pushes: several logins at once, each retransmitted every second
while its phone takes 3 s to approve.

radclient (`-r 5 -t 1`, one process per login, each user at its own station) and pyrad-built
packets on raw sockets retransmit in parallel. Each login must start exactly one push at the
ID server and get exactly one Access-Accept; the retransmits that arrive while the push is
pending get nothing (RFC 5080 section 2.2.2), and those after the answer get the very same
octets again from the reply cache.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyrad import packet as rp

from radius_proxy.passwords import hash_password
from radius_proxy.simulator import parse_rules
from tests.clients import RadclientResult, radclient
from tests.conftest import RunningProxy, simulator_log
from tests.robustness.conftest import RawLogin
from tests.tomlwriter import dumps

APPROVE_AFTER = 3.0
RADCLIENT_USERS = ("storm1", "storm2", "storm3", "storm4")
RAW_USERS = ("raw1", "raw2", "raw3")
#: Retransmits each raw login sends after its answer, to read the reply cache.
AFTER_ANSWER = 2


def password(user: str) -> str:
    return f"{user}-pw-{len(user)}"


@pytest.fixture
def storm_users(tmp_path: Path) -> Path:
    path = tmp_path / "storm-users.toml"
    path.write_text(dumps({"users": {
        user: {"password": hash_password(password(user), ln=10), "secsign_id": f"{user}.test"}
        for user in (*RADCLIENT_USERS, *RAW_USERS)}}))
    return path


def radclient_login(proxy: RunningProxy, user: str, station: int) -> RadclientResult:
    return radclient(proxy.address, proxy.secret,
                     [f'User-Name = "{user}"', f'User-Password = "{password(user)}"',
                      'NAS-Identifier = "storm-nas"',
                      f'Calling-Station-Id = "198.51.100.{station}"'],
                     retries=5, timeout=1)


@dataclass
class RawStorm:
    """A raw login that retransmits every second until answered, then AFTER_ANSWER times."""

    login: RawLogin
    sent_before_answer: int = 0
    replies: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        for _ in range(6):
            self.login.send()
            self.sent_before_answer += 1
            reply = self.login.receive(1.0)
            if reply is not None:
                self.replies.append(reply)
                break
        else:
            self.errors.append("no answer after 6 transmissions")
            return
        for _ in range(AFTER_ANSWER):
            reply = self.login.exchange(2.0)
            if reply is None:
                self.errors.append("a retransmit after the answer got nothing")
                return
            self.replies.append(reply)
        late = self.login.receive(0.3)
        if late is not None:
            self.replies.append(late)


def test_retransmit_storm_starts_one_push_per_login(start_proxy, simulator,
                                                    storm_users: Path) -> None:
    simulator.simulator.set_rules(parse_rules([f"*=approve:{APPROVE_AFTER:g}"]))
    proxy = start_proxy(users_file={"path": str(storm_users)})
    raws = [RawStorm(RawLogin(proxy, user, password(user), identifier=100 + i,
                              station=f"203.0.113.{i}"))
            for i, user in enumerate(RAW_USERS, 1)]
    threads = [threading.Thread(target=storm.run) for storm in raws]

    t0 = time.monotonic()
    with ThreadPoolExecutor(len(RADCLIENT_USERS)) as pool:
        futures = [pool.submit(radclient_login, proxy, user, i)
                   for i, user in enumerate(RADCLIENT_USERS, 1)]
        for thread in threads:
            thread.start()
        results = [f.result() for f in futures]
        for thread in threads:
            thread.join(30)
    took = time.monotonic() - t0

    for user, result in zip(RADCLIENT_USERS, results, strict=True):
        assert result.code == "Access-Accept", f"{user}:\n{result.output}"
    for storm in raws:
        assert storm.errors == [], (storm.login.user, storm.errors)
        first = storm.replies[0]
        assert storm.login.code(first) == rp.AccessAccept
        assert storm.sent_before_answer >= 3, "the answer came before the storm"
        assert len(storm.replies) == 1 + AFTER_ANSWER, "a retransmit got a second answer"
        assert all(reply == first for reply in storm.replies), "cached reply differs"

    starts = Counter(e["secsignid"] for e in simulator_log(simulator) if e["type"] == "start")
    assert starts == {f"{user}.test": 1 for user in (*RADCLIENT_USERS, *RAW_USERS)}
    audits = proxy.wait_event("auth", count=len(starts))
    assert sorted(e["username"] for e in audits) == sorted((*RADCLIENT_USERS, *RAW_USERS))
    assert {(e["outcome"], e["reason"]) for e in audits} == {("accept", "push_approved")}
    # the storm really happened: retransmits arrived while the pushes were pending
    in_flight = len(proxy.events("duplicate_in_flight"))
    assert in_flight >= 2 * (len(RADCLIENT_USERS) + len(RAW_USERS)), in_flight
    assert len(proxy.events("duplicate_answered")) >= AFTER_ANSWER * len(RAW_USERS)
    assert took < APPROVE_AFTER + 10
