"""Running the simulator: in an existing event loop, on a background thread, or as a command.

``serve_simulator`` is what the demo uses (same loop as the proxy). ``BackgroundSimulator``
is what synchronous tests use: the server gets its own loop on a daemon thread, so a plain
pytest function can drive it with ``requests`` without any pytest plugin. ``run_simulator``
is the blocking body of ``radius-proxy simulator``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Sequence
from types import TracebackType

from radius_proxy.simulator.app import SimulatorApp
from radius_proxy.simulator.httpserver import IDLE_TIMEOUT_SECONDS, HttpServer
from radius_proxy.simulator.rules import parse_rules
from radius_proxy.simulator.sessions import Simulator

DEFAULT_LISTEN = "127.0.0.1:8480"


class SimulatorServer:
    """A listening simulator; ``url`` is the ID server base URL (legacy ``POST /`` lives there)."""

    def __init__(self, simulator: Simulator, http: HttpServer, host: str) -> None:
        self.simulator = simulator
        self._http = http
        self.host = host

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def page_url(self) -> str:
        return f"{self.url}/simulator/"

    async def close(self) -> None:
        await self._http.close()


async def serve_simulator(
    simulator: Simulator, host: str, port: int, *, idle_timeout: float = IDLE_TIMEOUT_SECONDS
) -> SimulatorServer:
    """Listen on host:port (0 picks a free port) and return once the socket is bound."""
    http = HttpServer(SimulatorApp(simulator), idle_timeout)
    await http.start(host, port)
    return SimulatorServer(simulator, http, host)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` to a pair; ValueError with the expected form."""
    host, sep, port_text = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(
            f"listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8480 or [::1]:8480"
        )
    return host, int(port_text)


class BackgroundSimulator:
    """A simulator server on its own thread and loop: ``with BackgroundSimulator(sim) as s:``."""

    def __init__(
        self,
        simulator: Simulator,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self.simulator = simulator
        self._host, self._port, self._idle_timeout = host, port, idle_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="simulator", daemon=True
        )
        self._server: SimulatorServer | None = None

    def start(self, timeout: float = 5.0) -> SimulatorServer:
        self._thread.start()
        coroutine = serve_simulator(
            self.simulator, self._host, self._port, idle_timeout=self._idle_timeout
        )
        self._server = asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)
        return self._server

    @property
    def server(self) -> SimulatorServer:
        assert self._server is not None, "start() first"
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(timeout)
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> BackgroundSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def run_simulator(listen: str, rules: Sequence[str], account: str | None) -> int:
    """Blocking entry for ``radius-proxy simulator``: 0 after SIGINT/SIGTERM, 2 on bad
    arguments, 1 when the address cannot be bound."""
    try:
        host, port = parse_listen(listen)
        simulator = Simulator(parse_rules(rules), account=account)
    except ValueError as error:
        print(f"radius-proxy simulator: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run_until_signal(simulator, host, port))
    except OSError as error:
        print(f"radius-proxy simulator: cannot listen on {listen}: {error}", file=sys.stderr)
        return 1
    return 0


async def _run_until_signal(simulator: Simulator, host: str, port: int) -> None:
    server = await serve_simulator(simulator, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    rules = ", ".join(str(rule) for rule in simulator.rules) or "*=manual"
    print(f"SecSign ID simulator: open {server.page_url}", flush=True)
    print(f"  ID server URL (legacy POST /, REST /rest/v2): {server.url}", flush=True)
    print(f"  rules: {rules}; stop with Ctrl-C", flush=True)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.close()
