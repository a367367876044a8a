"""The Monitor in-process, on a loopback port, with probes the test controls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
import structlog

from radius_proxy.metrics import Metrics
from radius_proxy.monitoring import ANY_SERVER, Monitor, self_test
from tests.integration.ops.helpers import HttpReply, http_get
from tests.support import unavailable


class Switch:
    """A probe whose answer the test sets; counts its calls."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.up


async def _hangs() -> bool:
    await asyncio.sleep(3600)
    return True


async def _raises() -> bool:
    raise RuntimeError("probe bug")


async def _get(monitor: Monitor, path: str, method: str = "GET") -> HttpReply:
    return await asyncio.to_thread(http_get, monitor.port, path, method)


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


def test_readiness_follows_the_probes_and_is_cached() -> None:
    metrics = Metrics()
    ldap = Switch()

    async def body() -> None:
        monitor = Monitor("127.0.0.1:0", {"ldap": ldap, "secsign": Switch()}, interval=0.05,
                          timeout=1, metrics=metrics)
        await monitor.start()
        try:
            assert monitor.port > 0
            await _until(lambda: monitor.ready() == {"ldap": True, "secsign": True})
            ready = await _get(monitor, "/readyz")
            assert ready.status == 200
            assert ready.json() == {"status": "ready",
                                    "backends": {"ldap": True, "secsign": True}}
            ldap.up = False
            await _until(lambda: not monitor.ready()["ldap"])
            unready = await _get(monitor, "/readyz")
            assert unready.status == 503
            assert unready.json()["failing"] == ["ldap"]
            assert metrics.registry.get_sample_value(
                "radius_proxy_backend_up", {"backend": "ldap", "server": ANY_SERVER}) == 0
            calls = ldap.calls
            for _ in range(5):
                await _get(monitor, "/readyz")
            assert ldap.calls - calls < 5, "/readyz must answer from the cache"
        finally:
            await monitor.close()

    _run(body)


def test_a_hanging_or_broken_probe_is_a_failed_check() -> None:
    async def body() -> None:
        monitor = Monitor("127.0.0.1:0", {"hangs": _hangs, "raises": _raises, "ok": Switch()},
                          interval=10, timeout=0.2, metrics=Metrics())
        await monitor.start()
        try:
            assert await monitor.check() == {"hangs": False, "raises": False, "ok": True}
            health = await _get(monitor, "/healthz")
            assert (health.status, health.body) == (200, b"ok\n")
        finally:
            await monitor.close()

    _run(body)


def test_not_ready_before_the_first_check() -> None:
    async def body() -> None:
        monitor = Monitor("127.0.0.1:0", {"slow": _hangs}, interval=10, timeout=5,
                          metrics=Metrics())
        await monitor.start()
        try:
            reply = await _get(monitor, "/readyz")
            assert reply.status == 503
            assert json.loads(reply.body)["detail"] == "the first check has not finished yet"
        finally:
            await monitor.close()

    _run(body)


def test_http_surface() -> None:
    metrics = Metrics()
    metrics.requests.labels("vpn", "accept", "push_approved").inc()

    async def body() -> None:
        monitor = Monitor("127.0.0.1:0", {}, metrics=metrics)
        await monitor.start()
        try:
            scraped = await _get(monitor, "/metrics")
            assert scraped.status == 200
            assert scraped.content_type.startswith("text/plain")
            assert (b'radius_proxy_requests_total{client="vpn",outcome="accept",'
                    b'reason="push_approved"} 1.0') in scraped.body
            assert (await _get(monitor, "/readyz")).status == 200  # nothing to wait for
            head = await _get(monitor, "/healthz", method="HEAD")
            assert (head.status, head.body) == (200, b"")
            assert (await _get(monitor, "/readyz", method="DELETE")).status == 405
            assert (await _get(monitor, "/")).status == 404
        finally:
            await monitor.close()

    _run(body)


def test_set_probes_replaces_the_backends() -> None:
    metrics = Metrics()

    async def body() -> None:
        monitor = Monitor("127.0.0.1:0", {"old": Switch(False)}, interval=10, metrics=metrics)
        await monitor.start()
        try:
            await monitor.check()
            monitor.set_probes({"new": Switch()})
            assert monitor.ready() == {"new": False}
            await monitor.check()
            assert monitor.ready() == {"new": True}
            names = {s.labels["backend"] for family in metrics.backend_up.collect()
                     for s in family.samples}
            assert names == {"new"}
        finally:
            await monitor.close()

    _run(body)


def test_self_test_logs_one_line_per_backend() -> None:
    with structlog.testing.capture_logs() as logs:
        results = asyncio.run(self_test({"ldap": Switch(), "secsign": Switch(False)}))
    assert results == {"ldap": True, "secsign": False}
    checks = [e for e in logs if e["event"] == "backend_check"]
    assert [(e["backend"], e["ok"], e["log_level"]) for e in checks] == [
        ("ldap", True, "info"), ("secsign", False, "warning")]
    assert "secsign.servers" in checks[1]["hint"]


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_listen_forms(listen: str) -> None:
    async def body() -> None:
        monitor = Monitor(listen, {}, metrics=Metrics())
        try:
            await monitor.start()
        except OSError:
            unavailable(f"cannot bind {listen} here")
        try:
            assert monitor.port > 0
        finally:
            await monitor.close()

    _run(body)


async def _until(predicate: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail("condition not met in time")
