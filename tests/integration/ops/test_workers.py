"""`server.workers = 2`: the real supervisor and two real workers on one port, one real Redis.

What an administrator relies on when turning workers on: both workers answer on the one
port (the kernel spreads NASes by source port), a challenge answered on the other worker
completes, `/metrics` adds both workers up, SIGHUP reloads every worker (and a broken file
none), a killed worker comes back, SIGTERM drains the pushes in flight and exits 0, and
check-config refuses workers without shared state.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as rp

from radius_proxy.simulator import BackgroundSimulator, parse_rules
from tests.clients import build_request, radclient, udp_exchange
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts
from tests.integration.ops.helpers import http_get, http_port, scrape, value
from tests.servers.redis import RedisServer
from tests.support import python_module_cmd, wait_for
from tests.tomlwriter import dumps

StartProxy = Callable[..., RunningProxy]
SECOND_SECRET = "second-client-secret-5d1e8b"
LOGIN = ["User-Name = alice", "User-Password = alicepass", "NAS-Identifier = workers-test",
         "Calling-Station-Id = 192.0.2.10"]


@pytest.fixture
def start_workers(start_proxy: StartProxy,
                  redis: RedisServer) -> Callable[..., tuple[RunningProxy, int]]:
    """start(**sections): two workers on Redis with the monitor on; (proxy, HTTP port)."""

    def start(**sections: Any) -> tuple[RunningProxy, int]:
        port = http_port()
        proxy = start_proxy(server={"workers": 2},
                            state={"backend": "redis", "redis_url": redis.url,
                                   "key_prefix": "workers:"},
                            http={"listen": f"127.0.0.1:{port}"}, **sections)
        proxy.wait_event("workers_started", timeout=20)
        return proxy, port

    return start


def _worker_of_last_auth(proxy: RunningProxy, before: int) -> int:
    events = proxy.wait_event("auth", before + 1)
    return int(events[before]["worker"])


def _code(reply: bytes | None) -> int | None:
    """The reply's code, None for no reply."""
    return reply[0] if reply else None


def _reject(proxy: RunningProxy, sock: socket.socket, identifier: int) -> None:
    """carol with a wrong password from sock: a quick Access-Reject, no push."""
    raw, request = build_request(PROXY_SECRET, "carol", "wrong", identifier=identifier)
    reply = udp_exchange((proxy.host, proxy.port), raw, timeout=5, sock=sock)
    assert _code(reply) == rp.AccessReject
    assert request.VerifyReply(request.CreateReply(packet=reply), reply, enforce_ma=True)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """NAS sockets, each on its own source port, closed after the test."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _nas_per_worker(proxy: RunningProxy, sockets: list[socket.socket]) -> dict[int, socket.socket]:
    """A NAS socket that the kernel sends to each worker (tried until both were hit)."""
    found: dict[int, socket.socket] = {}
    for attempt in range(60):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        before = len(proxy.events("auth"))
        _reject(proxy, sock, identifier=attempt)
        found.setdefault(_worker_of_last_auth(proxy, before), sock)
        if len(found) == 2:
            return found
    pytest.fail(f"60 source ports all reached worker(s) {sorted(found)}")


def test_two_workers_share_the_port_and_the_metrics(
        start_workers: Callable[..., tuple[RunningProxy, int]],
        simulator: BackgroundSimulator, sockets: list[socket.socket]) -> None:
    proxy, port = start_workers()
    _nas_per_worker(proxy, sockets)
    for i in range(20):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(sock)
        _reject(proxy, sock, identifier=i)
    events = proxy.events("auth")
    per_worker = {w: sum(1 for e in events if e["worker"] == w) for w in (0, 1)}
    assert min(per_worker.values()) >= 1, per_worker
    samples = scrape(port)
    rejected = value(samples, "radius_proxy_requests_total", client="test", outcome="reject",
                     reason="primary_rejected")
    assert rejected == len(events) == sum(per_worker.values())
    assert ("radius_proxy_in_flight", ()) in samples  # the workers write it, summed here
    assert value(samples, "radius_proxy_in_flight") == 0
    assert value(samples, "radius_proxy_worker_restarts_total") == 0
    assert http_get(port, "/healthz").status == 200
    wait_for(lambda: http_get(port, "/readyz").status == 200, 20, "/readyz to turn ready")
    body = http_get(port, "/readyz").json()
    assert body["backends"] == {"secsign": True, "state": True}
    assert sorted(body["workers"]) == ["0", "1"]


def test_a_challenge_started_on_one_worker_is_answered_on_the_other(
        start_workers: Callable[..., tuple[RunningProxy, int]],
        simulator: BackgroundSimulator, sockets: list[socket.socket]) -> None:
    proxy, _ = start_workers(policy={"mode": "challenge"})
    nas = _nas_per_worker(proxy, sockets)
    before = len(proxy.events("auth"))
    raw, request = build_request(PROXY_SECRET, "alice", "alicepass", identifier=200)
    reply = udp_exchange((proxy.host, proxy.port), raw, timeout=5, sock=nas[0])
    assert _code(reply) == rp.AccessChallenge
    state = bytes(request.CreateReply(packet=reply)[24][0])
    raw, request = build_request(PROXY_SECRET, "alice", "", identifier=201,
                                 extra=[("State", state)])
    reply = udp_exchange((proxy.host, proxy.port), raw, timeout=20, sock=nas[1])
    assert _code(reply) == rp.AccessAccept
    answered = [(e["worker"], e["reason"]) for e in proxy.events("auth")[before:]]
    assert answered == [(0, "challenge_sent"), (1, "push_approved")]
    assert session_starts(simulator) == 1


def test_sighup_reloads_every_worker_and_a_broken_file_none(
        start_workers: Callable[..., tuple[RunningProxy, int]],
        simulator: BackgroundSimulator) -> None:
    first = {"name": "first", "networks": ["127.0.0.1/32"], "secret": PROXY_SECRET}
    proxy, _ = start_workers(clients=[first])
    good = tomllib.loads(proxy.config_path.read_text())
    good["clients"].append({"name": "second", "networks": ["127.0.0.2/32"],
                            "secret": SECOND_SECRET})
    proxy.config_path.write_text(dumps(good))
    proxy.process.signal(signal.SIGHUP)
    reloaded = proxy.wait_event("reloaded", 2)
    assert sorted(e["worker"] for e in reloaded) == [0, 1]
    for identifier in range(60):  # new source ports until both workers answered the client
        raw, _ = build_request(SECOND_SECRET, "carol", "wrong", identifier=identifier)
        reply = udp_exchange((proxy.host, proxy.port), raw, timeout=5, source="127.0.0.2")
        assert _code(reply) == rp.AccessReject
        if {e["worker"] for e in proxy.wait_event("auth", identifier + 1)} == {0, 1}:
            break
    else:
        pytest.fail("60 source ports all reached the same worker")

    proxy.config_path.write_text(dumps(good) + "\n[server\n")
    proxy.process.signal(signal.SIGHUP)
    proxy.wait_event("reload_refused")
    assert len(proxy.events("reloaded")) == 2
    assert proxy.process.alive()


def test_a_killed_worker_is_replaced(start_workers: Callable[..., tuple[RunningProxy, int]],
                                     simulator: BackgroundSimulator) -> None:
    proxy, port = start_workers()
    victim = proxy.events("worker_started")[0]["pid"]
    subprocess.run(["kill", "-KILL", str(victim)], check=True)
    exited = proxy.wait_event("worker_exited")[0]
    assert (exited["worker"], exited["exit_code"]) == (0, -signal.SIGKILL)
    restarted = proxy.wait_event("worker_restarted", timeout=15)[0]
    assert restarted["pid"] != victim
    wait_for(lambda: http_get(port, "/healthz").status == 200, 15, "/healthz after the restart")
    for identifier in range(6):
        result = radclient(proxy.address, PROXY_SECRET,
                           ["User-Name = carol", "User-Password = wrong"], timeout=5)
        assert result.code == "Access-Reject", (identifier, result.output)
    assert value(scrape(port), "radius_proxy_worker_restarts_total") == 1


def test_sigterm_drains_every_worker_and_exits_0(
        start_workers: Callable[..., tuple[RunningProxy, int]],
        simulator: BackgroundSimulator) -> None:
    simulator.simulator.set_rules(parse_rules(["*=approve:3"]))
    proxy, _ = start_workers()
    with ThreadPoolExecutor(max_workers=1) as pool:
        nas = pool.submit(radclient, proxy.address, PROXY_SECRET, LOGIN, timeout=20, retries=1)
        wait_for(lambda: session_starts(simulator) == 1, 10, "the push to start")
        proxy.process.signal(signal.SIGTERM)
        result = nas.result(timeout=30)
    assert result.code == "Access-Accept", result.output
    assert proxy.process.proc.wait(timeout=20) == 0
    stopped = [e.get("worker") for e in proxy.events("stopped")]
    assert sorted(stopped, key=str) == [0, 1, None]  # both workers, then the supervisor
    assert [e["exit_code"] for e in proxy.events("worker_stopped")] == [0, 0]
    assert not proxy.events("stop_cut_short")


def test_check_config_refuses_workers_without_shared_state(tmp_path: Path,
                                                           users_file: Path) -> None:
    from tests.conftest import base_config

    secret = tmp_path / "secret"
    secret.write_text(PROXY_SECRET)
    config = base_config(1812, secret, users_file, "http://127.0.0.1:9")
    config["server"]["workers"] = 2
    path = tmp_path / "workers.toml"
    path.write_text(dumps(config))
    proc = subprocess.run(python_module_cmd("check-config", "-c", str(path)),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2, proc.stdout
    assert f"{path}: server.workers: 2 workers need shared state" in proc.stderr
    assert 'set [state] backend = "redis"' in proc.stderr


def test_a_worker_that_cannot_start_fails_serve(start_proxy: StartProxy, redis: RedisServer,
                                                simulator: BackgroundSimulator) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))  # a port taken without SO_REUSEPORT
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        proxy = start_proxy(server={"workers": 2, "listen": [taken]}, expect_failure=True,
                            state={"backend": "redis", "redis_url": redis.url})
        assert proxy.process.proc.wait(timeout=30) == 1, proxy.log()
    assert proxy.events("worker_failed_to_start"), proxy.log()
    assert "Address already in use" in proxy.log()
