"""Two proxy processes sharing one Redis: what a NAS with two `server` lines relies on.

pam_radius_auth and VPN concentrators list several RADIUS servers and move to the next one
after a timeout; sites also balance logins across instances. With `state.backend = "redis"`
every instance sees the same challenges, pending pushes, remembered logins and push counts,
and when Redis is away every instance rejects (fail closed) until it is back, without a
restart; with `unavailable = "drop"` it does not answer, so pam_radius_auth moves on to its
next server line. Requests are built with pyrad, so a test can send the answer to a
challenge, or the same login, to the other instance, as a NAS failing over does.
"""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as rp

from radius_proxy.simulator import BackgroundSimulator, parse_rules
from tests.clients import build_request, pam_service, udp_exchange
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts
from tests.servers.redis import RedisServer
from tests.support import REPO, free_port, python_module_cmd, wait_for

STATION = "198.51.100.7"


@dataclass
class Reply:
    code: int
    packet: Any

    @property
    def state(self) -> bytes:
        return bytes(self.packet[24][0])


def login(proxy: RunningProxy, user: str, password: str, *, state: bytes | None = None,
          identifier: int = 1, timeout: float = 30.0) -> Reply:
    """One Access-Request from the test NAS, with its station; the verified reply."""
    extra: list[tuple[str, object]] = [("Calling-Station-Id", STATION)]
    if state is not None:
        extra.append(("State", state))
    raw, request = build_request(PROXY_SECRET, user, password, identifier=identifier,
                                 extra=extra)
    data = udp_exchange((proxy.host, proxy.port), raw, timeout=timeout)
    assert data is not None, f"no reply from {proxy.address}"
    reply = request.CreateReply(packet=data)
    assert request.VerifyReply(reply, data, enforce_ma=True)
    return Reply(reply.code, reply)


def reasons(proxy: RunningProxy) -> list[str]:
    return [e["reason"] for e in proxy.events("auth")]


@pytest.fixture
def pair(start_proxy: Any, redis: RedisServer) -> Any:
    """start(**sections): instances A and B on one Redis, with the same other settings.

    `a_state` overrides A's [state] keys (a Redis A cannot reach, say).
    """

    def start(a_state: dict[str, Any] | None = None,
              **sections: Any) -> tuple[RunningProxy, RunningProxy]:
        state = {"backend": "redis", "redis_url": redis.url, "key_prefix": "e2e:",
                 "timeout_seconds": 0.5}
        return (start_proxy(state={**state, **(a_state or {})}, **sections),
                start_proxy(state=state, **sections))

    return start


def unreachable_redis() -> str:
    """A Redis URL nobody listens on: an instance cut off from Redis (connection refused)."""
    return f"redis://127.0.0.1:{free_port(socket.SOCK_STREAM)}/0"


def test_a_challenge_started_on_a_is_answered_on_b(pair: Any,
                                                    simulator: BackgroundSimulator) -> None:
    a, b = pair(policy={"mode": "challenge"})
    challenge = login(a, "alice", "alicepass")
    assert challenge.code == rp.AccessChallenge
    accept = login(b, "alice", "", state=challenge.state, identifier=2)
    assert accept.code == rp.AccessAccept
    assert session_starts(simulator) == 1
    again = login(a, "alice", "", state=challenge.state, identifier=3)  # single use
    assert again.code == rp.AccessReject
    assert reasons(a) == ["challenge_sent", "invalid_state"]
    assert reasons(b) == ["push_approved"]


def test_a_pending_push_is_joined_from_the_other_instance(
        pair: Any, simulator: BackgroundSimulator) -> None:
    simulator.simulator.set_rules(parse_rules(["*=approve:3"]))
    a, b = pair()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(login, a, "alice", "alicepass", identifier=10)
        wait_for(lambda: session_starts(simulator) == 1, 10, "the push to start on A")
        second = pool.submit(login, b, "alice", "alicepass", identifier=11)
        replies = [first.result(), second.result()]
    assert [r.code for r in replies] == [rp.AccessAccept, rp.AccessAccept]
    assert session_starts(simulator) == 1
    assert b.events("push_joined_other_instance")
    assert reasons(a) == reasons(b) == ["push_approved"]


def test_a_login_remembered_on_a_is_honoured_by_b(pair: Any,
                                                   simulator: BackgroundSimulator) -> None:
    a, b = pair(policy={"remember_minutes": 5})
    assert login(a, "alice", "alicepass").code == rp.AccessAccept
    assert login(b, "alice", "alicepass", identifier=2).code == rp.AccessAccept
    assert session_starts(simulator) == 1
    assert reasons(b) == ["remembered"]


def test_the_push_limit_counts_both_instances(pair: Any,
                                              simulator: BackgroundSimulator) -> None:
    a, b = pair(policy={"max_pushes_per_user": 3})
    codes = [login(proxy, "alice", "alicepass", identifier=i).code
             for i, proxy in enumerate((a, b, a, b))]
    assert codes == [rp.AccessAccept] * 3 + [rp.AccessReject]
    assert session_starts(simulator) == 3
    assert reasons(b)[-1] == "rate_limited"


def test_redis_away_rejects_on_both_and_back_needs_no_restart(
        pair: Any, redis: RedisServer, simulator: BackgroundSimulator) -> None:
    a, b = pair()
    assert login(a, "alice", "alicepass").code == rp.AccessAccept
    redis.stop()
    for i, proxy in enumerate((a, b), start=2):
        t0 = time.monotonic()
        assert login(proxy, "alice", "alicepass", identifier=i).code == rp.AccessReject
        assert time.monotonic() - t0 < 5
        assert reasons(proxy)[-1] == "state_unavailable"
        [line] = proxy.events("state_unavailable")
        assert line["level"] == "warning"
        assert line["action"] == "reject"
    assert session_starts(simulator) == 1  # no push without the shared state
    redis.start()
    for i, proxy in enumerate((a, b), start=4):
        assert login(proxy, "alice", "alicepass", identifier=i).code == rp.AccessAccept
        assert proxy.events("state_available")
        assert proxy.process.alive()
    assert session_starts(simulator) == 3


def test_drop_lets_pam_radius_fail_over_to_the_instance_that_reaches_redis(
        pair: Any, simulator: BackgroundSimulator, tmp_path: Path) -> None:
    """A partition: A cannot reach Redis. A reject would be final for the NAS; no reply
    sends pam_radius_auth on to its second server line, which logs the user in."""
    a, b = pair(a_state={"redis_url": unreachable_redis(), "unavailable": "drop"},
                legacy=True)
    servers = [(a.address, PROXY_SECRET, 3), (b.address, PROXY_SECRET, 10)]
    with pam_service(tmp_path, servers) as svc:
        t0 = time.monotonic()
        result = svc.authenticate("alice", ["alicepass"], rhost=STATION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 3 <= time.monotonic() - t0 < 10  # one pam timeout on A, then B
    assert [(e["outcome"], e["reason"]) for e in a.events("auth")] == \
        [("drop", "state_unavailable")]
    assert reasons(b) == ["push_approved"]
    assert session_starts(simulator) == 1


def test_memory_keeps_an_instance_working_without_redis(
        start_proxy: Any, simulator: BackgroundSimulator) -> None:
    proxy = start_proxy(state={"backend": "redis", "redis_url": unreachable_redis(),
                               "timeout_seconds": 0.5, "unavailable": "memory"},
                        policy={"remember_minutes": 5})
    assert login(proxy, "alice", "alicepass").code == rp.AccessAccept
    assert login(proxy, "alice", "alicepass", identifier=2).code == rp.AccessAccept
    assert reasons(proxy) == ["push_approved", "remembered"]  # remembered in memory
    assert proxy.events("state_unavailable")[0]["action"] == "memory"
    assert session_starts(simulator) == 1


@pytest.mark.parametrize("name", ["radius-proxy-a.toml", "radius-proxy-b.toml"])
def test_the_shipped_ha_configs_pass_check_config(name: str) -> None:
    proc = subprocess.run(python_module_cmd("check-config", "-c",
                                            str(REPO / "deploy" / "ha" / name)),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
