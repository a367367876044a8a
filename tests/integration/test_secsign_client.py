"""The SecSign ID client against the simulator over real HTTP on 127.0.0.1, both APIs.

Each test runs its own event loop (`asyncio.run`, no pytest plugin) with the simulator
serving in that loop and the client's HTTP on its worker threads. The simulator's log
(`GET /simulator/api/log`) shows what the client really sent: one start per push, and a
cancel whenever a push is given up. Broken servers are real sockets too: a closed port, one
that answers 500, one that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import structlog

from radius_proxy.backends.secsign import SecSignClient
from radius_proxy.config import Secret, SecSignConfig
from radius_proxy.pipeline.ports import PushOutcome, PushResult
from radius_proxy.simulator import Simulator, SimulatorServer, parse_rule, serve_simulator
from tests.support import free_port

T = TypeVar("T")
APIS = ["rest", "legacy"]
PIN_PASSWORD = "pin-secret-4711"


def run(scenario: Callable[[], Awaitable[T]], limit: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await scenario()
    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def simulated(*rules: str) -> AsyncIterator[SimulatorServer]:
    """A simulator that takes only our PIN account, so REST proves it sends Basic auth."""
    simulator = Simulator([parse_rule(r) for r in rules], account=f"radius-proxy:{PIN_PASSWORD}")
    server = await serve_simulator(simulator, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def connected(api: str, *servers: str, **changes: Any) -> AsyncIterator[SecSignClient]:
    values: dict[str, Any] = {
        "api": api, "servers": servers, "pin_account": "radius-proxy",
        "pin_password": Secret(PIN_PASSWORD), "poll_interval_seconds": 0.05,
        "push_timeout_seconds": 3.0, "request_timeout_seconds": 1.0,
    }
    values.update(changes)
    client = SecSignClient(SecSignConfig(**values))
    try:
        yield client
    finally:
        await client.close()


async def control(server: SimulatorServer, method: str, path: str) -> Any:
    """The simulator's control API, over a plain connection on a thread (never the loop)."""
    def call() -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            headers = {"Content-Type": "application/json"} if method == "POST" else {}
            connection.request(method, "/simulator/api/" + path, b"{}" if headers else None,
                               headers)
            response = connection.getresponse()
            assert response.status == 200, response.read()
            return json.loads(response.read())
        finally:
            connection.close()
    return await asyncio.to_thread(call)


async def log_types(server: SimulatorServer, secsignid: str | None = None) -> list[str]:
    entries = await control(server, "GET", "log")
    return [e["type"] for e in entries if secsignid is None or e["secsignid"] == secsignid]


async def pending_session(server: SimulatorServer, secsignid: str) -> str:
    """Wait until the simulator shows a waiting session for the ID; its id."""
    for _ in range(200):
        for session in await control(server, "GET", "sessions"):
            if session["secsignid"] == secsignid and session["state"] in (1, 7):
                return str(session["id"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"no pending session for {secsignid}")


# -- outcomes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("rule", "outcome"),
    [
        ("approve:0.1", PushOutcome.APPROVED),
        ("deny:0.1", PushOutcome.DENIED),
        ("expire:0.1", PushOutcome.TIMEOUT),
    ],
)
def test_phone_answers(api: str, rule: str, outcome: PushOutcome) -> None:
    async def scenario() -> tuple[PushResult, list[str]]:
        async with simulated(f"*={rule}") as server, connected(api, server.url) as client:
            result = await client.push("Alice.Example", "SSH login to web1", "10.0.0.7")
            return result, await log_types(server)

    result, log = run(scenario)
    assert result.outcome is outcome
    assert log.count("start") == 1
    assert "release" not in log
    assert "cancel" not in log  # a final state needs no withdrawal


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("rule", "outcome", "event"),
    [("unknown", PushOutcome.UNKNOWN_ID, "secsign.unknown_id"),
     ("frozen", PushOutcome.FROZEN, "secsign.frozen")],
)
def test_refused_ids(api: str, rule: str, outcome: PushOutcome, event: str) -> None:
    async def scenario() -> tuple[PushResult, list[str]]:
        async with simulated(f"*={rule}") as server, connected(api, server.url) as client:
            result = await client.push("bob", "VPN", "vpn.example.com")
            return result, await log_types(server)

    with structlog.testing.capture_logs() as logs:
        result, log = run(scenario)
    assert result.outcome is outcome
    assert log == ["start"]
    assert [e["log_level"] for e in logs if e["event"] == event] == ["warning"]
    assert PIN_PASSWORD not in repr(logs)


@pytest.mark.parametrize("api", APIS)
def test_manual_push_approved_on_the_control_api(api: str) -> None:
    async def scenario() -> PushResult:
        async with simulated("*=manual") as server, connected(api, server.url) as client:
            push = asyncio.create_task(client.push("carol", "SSH", "host"))
            session_id = await pending_session(server, "carol")
            await control(server, "POST", f"sessions/{session_id}/approve")
            return await push

    assert run(scenario).outcome is PushOutcome.APPROVED


@pytest.mark.parametrize("api", APIS)
def test_totp(api: str) -> None:
    async def scenario() -> tuple[PushResult, PushResult, list[str]]:
        async with simulated("*=manual") as server, connected(api, server.url) as client:
            code = (await control(server, "GET", "totp/dave"))["code"]
            wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
            right_result = await client.verify_code("dave", code)
            wrong_result = await client.verify_code("dave", wrong)
            return right_result, wrong_result, await log_types(server)

    right, wrong, log = run(scenario)
    assert right.outcome is PushOutcome.APPROVED
    assert wrong.outcome is PushOutcome.DENIED
    assert log == ["totp", "totp"]


def test_legacy_totp_without_pin_account() -> None:
    async def scenario() -> tuple[PushResult, list[str]]:
        async with simulated() as server, connected("legacy", server.url,
                                                    pin_account="") as client:
            return await client.verify_code("dave", "123456"), await log_types(server)

    result, log = run(scenario)
    assert (result.outcome, result.detail) == (PushOutcome.FAILED, "passcodes need the REST API")
    assert log == []


# -- fallback ---------------------------------------------------------------------------------
@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextlib.asynccontextmanager
async def failing_server(status: int = 500) -> AsyncIterator[str]:
    """Reads each request whole and answers `status` with an empty body."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(f"HTTP/1.1 {status} Oops\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("api", APIS)
def test_first_server_down_second_used(api: str) -> None:
    closed = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}"

    async def scenario() -> tuple[PushResult, list[str], bool]:
        async with simulated("*=approve:0.1") as server, \
                connected(api, closed, server.url) as client:
            result = await client.push("erin", "SSH", "host")
            return result, await log_types(server), await client.probe()

    result, log, alive = run(scenario)
    assert result.outcome is PushOutcome.APPROVED
    assert log.count("start") == 1
    assert alive


@pytest.mark.parametrize("api", APIS)
def test_server_answering_500_falls_back(api: str) -> None:
    async def scenario() -> tuple[PushResult, list[str]]:
        async with simulated("*=approve:0.1") as server, failing_server() as broken, \
                connected(api, broken, server.url) as client:
            result = await client.push("frank", "SSH", "host")
            return result, await log_types(server)

    result, log = run(scenario)
    assert result.outcome is PushOutcome.APPROVED
    assert log.count("start") == 1


@pytest.mark.parametrize("api", APIS)
def test_hanging_server_times_out_then_falls_back(api: str) -> None:
    async def scenario() -> tuple[PushResult, float, list[str]]:
        with silent_server() as silent:
            async with simulated("*=approve:0.1") as server, \
                    connected(api, silent, server.url, request_timeout_seconds=0.3) as client:
                began = time.monotonic()
                result = await client.push("grace", "SSH", "host")
                return result, time.monotonic() - began, await log_types(server)

    result, elapsed, log = run(scenario)
    assert result.outcome is PushOutcome.APPROVED
    assert elapsed >= 0.3
    assert log.count("start") == 1


@pytest.mark.parametrize("api", APIS)
def test_no_server_reachable_is_unreachable(api: str) -> None:
    async def scenario() -> tuple[PushResult, bool]:
        async with failing_server(503) as broken, \
                connected(api, f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                          broken) as client:
            return await client.push("heidi", "SSH", "host"), await client.probe()

    result, alive = run(scenario)
    assert result.outcome is PushOutcome.UNREACHABLE
    assert not alive


# -- giving up --------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_push_deadline_cancels_at_the_id_server(api: str) -> None:
    async def scenario() -> tuple[PushResult, list[str], list[Any]]:
        async with simulated("*=manual") as server, \
                connected(api, server.url, push_timeout_seconds=0.5) as client:
            result = await client.push("ivan", "SSH", "host")
            for _ in range(100):  # the cancel runs after push() has returned
                if "cancel" in await log_types(server):
                    break
                await asyncio.sleep(0.02)
            return result, await log_types(server), await control(server, "GET", "sessions")

    result, log, sessions = run(scenario)
    assert result.outcome is PushOutcome.TIMEOUT
    assert log[0] == "start"
    assert log.count("start") == 1
    assert log[-1] == "cancel"
    assert [s["state"] for s in sessions] == [6]


@pytest.mark.parametrize("api", APIS)
def test_cancelled_task_cancels_at_the_id_server(api: str) -> None:
    async def scenario() -> tuple[list[str], list[Any]]:
        async with simulated("*=manual") as server, connected(api, server.url) as client:
            push = asyncio.create_task(client.push("judy", "SSH", "host"))
            await pending_session(server, "judy")
            push.cancel()
            with pytest.raises(asyncio.CancelledError):
                await push
            for _ in range(100):  # the cancel runs after push() has returned
                if "cancel" in await log_types(server):
                    break
                await asyncio.sleep(0.02)
            return await log_types(server), await control(server, "GET", "sessions")

    log, sessions = run(scenario)
    assert log.count("start") == 1
    assert log[-1] == "cancel"
    assert [s["state"] for s in sessions] == [6]


# -- load -------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_200_concurrent_pushes(api: str) -> None:
    async def scenario() -> tuple[list[PushResult], list[str]]:
        async with simulated("*=approve:0.2") as server, \
                connected(api, server.url, max_connections=16) as client:
            pushes = [client.push(f"user{i}", "SSH", "host") for i in range(200)]
            results = await asyncio.gather(*pushes)
            return results, await log_types(server)

    results, log = run(scenario, limit=15)
    assert [r.outcome for r in results] == [PushOutcome.APPROVED] * 200
    assert log.count("start") == 200
