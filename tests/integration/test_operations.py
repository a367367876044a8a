"""Operating the real `radius-proxy serve` process: metrics, health, readiness, signals.

What an administrator relies on: `/metrics` moves as logins flow, `/healthz` answers while
the process runs, `/readyz` follows the directory going away and coming back, SIGHUP adds a
client while a push waits for a phone, and SIGTERM lets that push finish before exiting 0.
"""

from __future__ import annotations

import signal
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as rp

from radius_proxy.simulator import BackgroundSimulator, parse_rules
from tests.clients import RadclientResult, build_request, radclient, udp_exchange
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts
from tests.integration.ops.helpers import http_get, http_port, ldap_sections, scrape, value
from tests.servers.slapd import Slapd
from tests.support import wait_for
from tests.tomlwriter import dumps

StartProxy = Callable[..., RunningProxy]
LOGIN = ["User-Name = alice", "User-Password = alicepass", "NAS-Identifier = ops-test",
         "Calling-Station-Id = 192.0.2.10"]
SECOND_SECRET = "second-client-secret-5d1e8b"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for a NAS that waits for a push while the test does something else."""
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of this test's own, since the test stops it."""
    server = Slapd(tmp_path / "slapd")
    try:
        yield server
    finally:
        server.stop()


def _monitored(start_proxy: StartProxy, **sections: Any) -> tuple[RunningProxy, int]:
    port = http_port()
    proxy = start_proxy(http={"listen": f"127.0.0.1:{port}"}, **sections)
    proxy.wait_event("http_listening")
    return proxy, port


def _pushing(pool: ThreadPoolExecutor, proxy: RunningProxy, simulator: BackgroundSimulator,
             nas_timeout: float = 20) -> Future[RadclientResult]:
    """A NAS sends alice's login; returns once her push is pending at the ID server."""
    nas = pool.submit(radclient, proxy.address, PROXY_SECRET, LOGIN, timeout=nas_timeout,
                      retries=1)
    wait_for(lambda: session_starts(simulator) == 1, 10, "the push to start")
    return nas


def test_metrics_move_as_requests_flow(start_proxy: StartProxy,
                                       simulator: BackgroundSimulator) -> None:
    proxy, port = _monitored(start_proxy)
    before = scrape(port)
    assert radclient(proxy.address, PROXY_SECRET, LOGIN, timeout=5).code == "Access-Accept"
    wrong = ["User-Name = alice", "User-Password = nope", "NAS-Identifier = ops-test"]
    assert radclient(proxy.address, PROXY_SECRET, wrong, timeout=5).code == "Access-Reject"
    silent = radclient(proxy.address, "not-the-secret-of-this-client", LOGIN, timeout=1)
    assert silent.no_reply
    proxy.wait_event("packet_dropped")
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "radius_proxy_requests_total"
    assert moved(requests, client="test", outcome="accept", reason="push_approved") == 1
    assert moved(requests, client="test", outcome="reject", reason="primary_rejected") == 1
    assert moved("radius_proxy_dropped_total", reason="bad_message_authenticator") >= 1
    assert moved("radius_proxy_push_seconds_count") == 1
    assert 0 < moved("radius_proxy_push_seconds_sum") < 5
    assert moved("radius_proxy_push_seconds_bucket", le="5.0") == 1
    assert value(after, "radius_proxy_in_flight") == 0
    assert value(after, "radius_proxy_backend_up", backend="secsign", server=simulator.url) == 1


def test_healthz_and_readyz(start_proxy: StartProxy, simulator: BackgroundSimulator) -> None:
    proxy, port = _monitored(start_proxy)
    health = http_get(port, "/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    wait_for(lambda: http_get(port, "/readyz").status == 200, 15, "/readyz to turn ready")
    ready = http_get(port, "/readyz")
    assert ready.content_type == "application/json"
    assert ready.json() == {"status": "ready", "backends": {"secsign": True}}
    assert http_get(port, "/nothing").status == 404
    assert http_get(port, "/metrics", method="POST").status == 405
    checks = proxy.wait_event("backend_check")
    assert [(e["backend"], e["ok"]) for e in checks] == [("secsign", True)]


def test_readyz_follows_the_directory(start_proxy: StartProxy, own_slapd: Slapd,
                                      simulator: BackgroundSimulator) -> None:
    proxy, port = _monitored(start_proxy, **ldap_sections(own_slapd))
    wait_for(lambda: http_get(port, "/readyz").status == 200, 15, "/readyz to turn ready")
    assert http_get(port, "/readyz").json()["backends"] == {"ldap": True, "secsign": True}
    assert {e["backend"]: e["ok"] for e in proxy.wait_event("backend_check", 2)} == \
        {"ldap": True, "secsign": True}

    own_slapd.stop()
    wait_for(lambda: http_get(port, "/readyz").status == 503, 20, "/readyz to turn unready")
    body = http_get(port, "/readyz").json()
    assert body["status"] == "unready"
    assert body["failing"] == ["ldap"]
    assert body["backends"] == {"ldap": False, "secsign": True}
    assert http_get(port, "/healthz").status == 200  # alive, only not ready
    samples = scrape(port)
    assert value(samples, "radius_proxy_backend_up", backend="ldap", server="any") == 0
    assert value(samples, "radius_proxy_backend_up", backend="ldap",
                 server=own_slapd.ldap_url) == 0
    assert value(samples, "radius_proxy_backend_errors_total", backend="ldap") >= 1
    proxy.wait_event("backend_unready")

    own_slapd.start()
    wait_for(lambda: http_get(port, "/readyz").status == 200, 20, "/readyz to turn ready again")
    samples = scrape(port)
    assert value(samples, "radius_proxy_backend_up", backend="ldap", server="any") == 1
    assert value(samples, "radius_proxy_backend_up", backend="ldap",
                 server=own_slapd.ldap_url) == 1
    proxy.wait_event("backend_ready")


def test_sighup_adds_a_client_without_dropping_a_push(start_proxy: StartProxy,
                                                      simulator: BackgroundSimulator,
                                                      pool: ThreadPoolExecutor) -> None:
    simulator.simulator.set_rules(parse_rules(["*=approve:3"]))
    first = {"name": "first", "networks": ["127.0.0.1/32"], "secret": PROXY_SECRET}
    proxy = start_proxy(clients=[first])
    raw, request = build_request(SECOND_SECRET, "alice", "wrong-password")
    assert udp_exchange((proxy.host, proxy.port), raw, timeout=1, source="127.0.0.2") is None

    nas = _pushing(pool, proxy, simulator)
    config = tomllib.loads(proxy.config_path.read_text())
    config["clients"].append({"name": "second", "networks": ["127.0.0.2/32"],
                              "secret": SECOND_SECRET})
    proxy.config_path.write_text(dumps(config))
    proxy.process.signal(signal.SIGHUP)
    reloaded = proxy.wait_event("reloaded")[-1]
    assert (reloaded["clients"], reloaded["needs_restart"]) == (2, [])
    assert not nas.done(), "the push should still be waiting for the phone"

    raw, request = build_request(SECOND_SECRET, "alice", "wrong-password", identifier=99)
    reply = udp_exchange((proxy.host, proxy.port), raw, timeout=5, source="127.0.0.2")
    assert reply is not None, "the new client is not answered"
    assert reply[0] == rp.AccessReject
    assert request.VerifyReply(request.CreateReply(packet=reply), reply, enforce_ma=True)

    result = nas.result(timeout=30)
    assert result.code == "Access-Accept", result.output
    assert session_starts(simulator) == 1
    clients = [(e["client"], e["outcome"]) for e in proxy.wait_event("auth", 2)]
    assert sorted(clients) == [("first", "accept"), ("second", "reject")]


def test_sigterm_lets_a_push_in_flight_finish(start_proxy: StartProxy,
                                              simulator: BackgroundSimulator,
                                              pool: ThreadPoolExecutor) -> None:
    simulator.simulator.set_rules(parse_rules(["*=approve:3"]))
    proxy = start_proxy()
    nas = _pushing(pool, proxy, simulator)
    proxy.process.signal(signal.SIGTERM)
    stopping = proxy.wait_event("stopping")[-1]
    assert stopping["in_flight"] == 1

    late, _ = build_request(PROXY_SECRET, "carol", "carolpass", identifier=42)
    assert udp_exchange((proxy.host, proxy.port), late, timeout=1) is None, \
        "a request after SIGTERM must not be taken on"
    result = nas.result(timeout=30)
    assert result.code == "Access-Accept", result.output
    assert proxy.process.proc.wait(timeout=20) == 0
    assert proxy.events("stopped")
    assert not proxy.events("stop_cut_short")


def test_a_second_sigterm_stops_at_once(start_proxy: StartProxy,
                                        simulator: BackgroundSimulator,
                                        pool: ThreadPoolExecutor) -> None:
    simulator.simulator.set_rules(parse_rules(["*=manual"]))
    proxy = start_proxy()
    nas = _pushing(pool, proxy, simulator, nas_timeout=4)
    proxy.process.signal(signal.SIGTERM)
    proxy.wait_event("stopping")
    proxy.process.signal(signal.SIGTERM)
    try:
        assert proxy.process.proc.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second SIGTERM did not stop the proxy:\n{proxy.log()}")
    assert proxy.events("stop_cut_short")
    assert nas.result(timeout=30).no_reply
    cancels = [e for e in simulator.simulator.log() if e.kind == "cancel"]
    assert cancels, "the abandoned push must be withdrawn at the ID server"
