"""Fixtures shared by the integration and end-to-end tests.

`start_proxy(...)` runs the real `radius-proxy serve` as a child process on a free loopback
port, with a configuration built from a base (users file, the SecSign ID simulator, JSON
logs at DEBUG) that a test overrides section by section. `simulator` is one SecSign ID
simulator for the whole session, reset before each test that uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from radius_proxy.passwords import hash_password
from radius_proxy.simulator import BackgroundSimulator, Simulator, parse_rules
from tests.servers.redis import RedisServer
from tests.support import ManagedProcess, free_port, python_module_cmd, wait_for
from tests.tomlwriter import dumps

PROXY_SECRET = "proxy-test-secret-0f3c9a7e"
USERS = {  # name: (password, secsign_id, groups)
    "alice": ("alicepass", "alice.test", ["vpn-users"]),
    "bob": ("bob,pass", "bob.test", ["admins"]),
    "carol": ("carolpass", None, []),
    "dave": ("davepass", "dave.test", ["contractors"]),
}


@pytest.fixture(scope="session")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A users file with cheap hashes (scrypt ln=10) so the tests stay fast."""
    path = tmp_path_factory.mktemp("users") / "users.toml"
    table: dict[str, Any] = {}
    for name, (password, secsign_id, groups) in USERS.items():
        entry: dict[str, Any] = {"password": hash_password(password, ln=10), "groups": groups}
        if secsign_id:
            entry["secsign_id"] = secsign_id
        table[name] = entry
    path.write_text(dumps({"users": table}))
    return path


@pytest.fixture(scope="session")
def _simulator_server() -> Iterator[BackgroundSimulator]:
    with BackgroundSimulator(Simulator(parse_rules(["*=approve:0.2"]))) as sim:
        yield sim


@pytest.fixture
def simulator(_simulator_server: BackgroundSimulator) -> BackgroundSimulator:
    """The session's simulator, with sessions and log cleared and the rule `*=approve:0.2`."""
    _simulator_server.simulator.reset()
    _simulator_server.simulator.set_rules(parse_rules(["*=approve:0.2"]))
    return _simulator_server


@dataclass
class RunningProxy:
    process: ManagedProcess
    host: str
    port: int
    secret: str
    config_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.process.output()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (optionally only one event name), parsed."""
        out = []
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out

    def wait_event(self, name: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.events(name)) >= count, timeout, f"{count} {name} event(s)")
        return self.events(name)


def base_config(port: int, secret_file: Path, users: Path, simulator_url: str) -> dict[str, Any]:
    return {
        "server": {"listen": [f"127.0.0.1:{port}"], "reply_cache_seconds": 5},
        "clients": [{"name": "test", "networks": ["127.0.0.0/8"],
                     "secret_file": str(secret_file), "require_message_authenticator": True,
                     "service_name": "Test login at {nas_identifier}"}],
        "primary": {"backend": "file"},
        "users_file": {"path": str(users)},
        "identity": {"sources": ["file"]},
        "secsign": {"api": "rest", "servers": [simulator_url], "pin_account": "test",
                    "pin_password": "test-pin-password", "poll_interval_seconds": 0.1,
                    "push_timeout_seconds": 20, "request_timeout_seconds": 3},
        "policy": {},
        "logging": {"format": "json", "level": "debug"},
        "http": {"listen": ""},
    }


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test (proxies sharing state: instances, workers)."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_proxy(tmp_path: Path, users_file: Path,
                simulator: BackgroundSimulator) -> Iterator[Callable[..., RunningProxy]]:
    """Start `radius-proxy serve` with the base config updated by the given sections.

    `start_proxy(policy={"mode": "challenge"}, legacy=True)`: each keyword replaces keys of
    that section (`clients` replaces the list); `legacy=True` lets the client send without
    Message-Authenticator (Debian's pam_radius_auth 2.0 cannot sign).
    """
    started: list[ManagedProcess] = []
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(PROXY_SECRET + "\n")

    def start(*, legacy: bool = False, expect_failure: bool = False,
              **sections: Any) -> RunningProxy:
        port = free_port()
        config = base_config(port, secret_file, users_file, simulator.url)
        if legacy:
            config["clients"][0]["require_message_authenticator"] = False
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(name), dict):
                config[name] = {**config[name], **value}
            else:
                config[name] = value
        path = tmp_path / f"proxy-{port}.toml"
        path.write_text(dumps(config))
        proc = ManagedProcess(python_module_cmd("serve", "-c", str(path)),
                              tmp_path / f"proxy-{port}.log")
        started.append(proc)
        running = RunningProxy(proc, "127.0.0.1", port, PROXY_SECRET, path)
        if not expect_failure:
            wait_for(lambda: '"listening"' in proc.output() or not proc.alive(), 15,
                     "the proxy to listen")
            if not proc.alive():
                pytest.fail(f"the proxy exited at start:\n{proc.output()}")
        return running

    yield start
    for proc in started:
        proc.stop()


def simulator_log(sim: BackgroundSimulator) -> list[dict[str, Any]]:
    """The simulator's protocol log, read over its control API like any client would."""
    import requests

    response = requests.get(f"{sim.url}/simulator/api/log", timeout=5)
    response.raise_for_status()
    entries: list[dict[str, Any]] = response.json()
    return entries


def session_starts(sim: BackgroundSimulator) -> int:
    return sum(1 for e in simulator_log(sim) if e["type"] == "start")
