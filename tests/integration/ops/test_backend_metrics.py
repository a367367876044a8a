"""The backends count their failures and report their servers' health in the metrics."""

from __future__ import annotations

import asyncio

from radius_proxy.backends.secsign import HttpRequest, HttpResponse, SecSignClient, TransportError
from radius_proxy.backends.upstream_radius import UpstreamRadius
from radius_proxy.config import RadiusUpstreamConfig, Secret, SecSignConfig
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline.ports import AuthRequest, PrimaryOutcome
from radius_proxy.protocol.dictionary import load_dictionary
from tests.support import free_port


def _sample(name: str, **labels: str) -> float:
    return METRICS.registry.get_sample_value(name, labels) or 0.0


def test_upstream_timeouts_count_and_mark_the_server_down() -> None:
    server = f"127.0.0.1:{free_port()}"  # nothing listens: every request times out
    config = RadiusUpstreamConfig(servers=(server,), secret=Secret("upstream-secret-0123"),
                                  timeout_seconds=0.2, retries=0)
    before = _sample("radius_proxy_backend_errors_total", backend="radius_upstream")

    async def scenario() -> PrimaryOutcome:
        upstream = UpstreamRadius(config, load_dictionary(()))
        await upstream.start()
        try:
            assert _sample("radius_proxy_backend_up", backend="radius_upstream",
                           server=server) == 1
            request = AuthRequest(request_id="m", client="c", client_ip="127.0.0.1",
                                  username="alice", password=b"pw")
            return (await upstream.authenticate(request)).outcome
        finally:
            await upstream.close()

    assert asyncio.run(scenario()) is PrimaryOutcome.UNAVAILABLE
    assert _sample("radius_proxy_backend_errors_total", backend="radius_upstream") > before
    assert _sample("radius_proxy_backend_up", backend="radius_upstream", server=server) == 0


def test_id_server_transport_errors_and_5xx_count() -> None:
    server = "https://id.test.invalid"
    answers: list[HttpResponse | Exception] = [TransportError("ConnectTimeout"),
                                               HttpResponse(503, b""), HttpResponse(200, b"{}")]

    def transport(request: HttpRequest, timeout: float) -> HttpResponse:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    config = SecSignConfig(servers=(server,), pin_account="a", pin_password=Secret("b"),
                           request_timeout_seconds=1)
    before = _sample("radius_proxy_backend_errors_total", backend="secsign")

    async def scenario() -> list[tuple[bool, float]]:
        client = SecSignClient(config, transport=transport)
        seen = []
        try:
            for _ in range(3):
                ok = await client.probe()
                seen.append((ok, _sample("radius_proxy_backend_up", backend="secsign",
                                         server=server)))
        finally:
            await client.close()
        return seen

    assert asyncio.run(scenario()) == [(False, 0), (False, 0), (True, 1)]
    assert _sample("radius_proxy_backend_errors_total", backend="secsign") == before + 2
