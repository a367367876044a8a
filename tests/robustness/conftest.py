"""Fixtures for the robustness tests: directories and upstreams that fail, a scriptable ID
server that misbehaves, and a raw RADIUS client that keeps its own bytes.

- `slapd` (session) and `own_slapd` (a private one a test may stop), `freeradius` (module)
  and `make_freeradius`: the real servers of `tests/servers/`.
- `fake_id_server(...)`: an HTTP(S) server speaking just enough of the SecSign ID REST API
  (start, state, cancel, probe), whose answers a test scripts: valid, HTTP 500, garbage,
  another SecSign ID, or a connection that is accepted and never answered.
- `black_hole()`: a TCP or UDP socket that takes everything and never answers.
- `RawLogin`: an Access-Request built with pyrad, sent from its own socket, so a test can
  retransmit the very same bytes and check the reply against them.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from pyrad import packet as rp

from tests.clients import build_request
from tests.conftest import RunningProxy
from tests.servers import slapd as slapd_server
from tests.servers.freeradius import FreeRadius, FreeRadiusFactory, freeradius_factory
from tests.servers.freeradius import status_server as _status_server
from tests.servers.slapd import Slapd
from tests.support import require_binary

# --- real servers ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of this test alone, which the test may stop."""
    server = Slapd(tmp_path / "slapd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def freeradius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    with freeradius_factory(tmp_path_factory.mktemp("freeradius")) as make:
        yield make()


@pytest.fixture
def make_freeradius(tmp_path: Path) -> Iterator[FreeRadiusFactory]:
    with freeradius_factory(tmp_path) as make:
        yield make


def ldap_sections(server: Slapd, **ldap: Any) -> dict[str, Any]:
    """Config sections: slapd checks the password and holds the SecSign ID."""
    section: dict[str, Any] = {
        "urls": [server.ldap_url], "ca_file": str(server.pki.ca_file),
        "bind_dn": slapd_server.SERVICE_DN, "bind_password": slapd_server.SERVICE_PASSWORD,
        "base_dn": slapd_server.SUFFIX, "user_filter": slapd_server.USER_FILTER,
        "secsign_id_attribute": "secsignId", "timeout_seconds": 2,
    }
    section.update(ldap)
    return {"primary": {"backend": "ldap"}, "identity": {"sources": ["ldap"]},
            "ldap": section}


def upstream_sections(servers: list[str], secret: str, **upstream: Any) -> dict[str, Any]:
    """Config sections: an upstream RADIUS server checks the password; SecSign ID = user
    name + ".test"."""
    section: dict[str, Any] = {
        "servers": servers, "secret": secret, "timeout_seconds": 1, "retries": 1,
        "require_message_authenticator": True, "dead_server_seconds": 5,
    }
    section.update(upstream)
    return {"primary": {"backend": "radius"}, "radius_upstream": section,
            "identity": {"sources": ["username"], "username_suffix": ".test"}}


# --- raw RADIUS ------------------------------------------------------------------------


class RawLogin:
    """One Access-Request (signed, PAP) with its own socket; retransmits are the same bytes.

    Every socket is closed when the test ends (`_close_raw_logins`).
    """

    opened: ClassVar[list[RawLogin]] = []

    def __init__(self, proxy: RunningProxy, user: str, password: str, *, identifier: int = 1,
                 station: str = "192.0.2.1", source: str = "127.0.0.1",
                 extra: Sequence[tuple[str, object]] = (), secret: str | None = None) -> None:
        self.user = user
        self.raw, self.packet = build_request(
            secret or proxy.secret, user, password, identifier=identifier,
            extra=[("Calling-Station-Id", station), *extra])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.connect((proxy.host, proxy.port))
        RawLogin.opened.append(self)

    def send(self) -> None:
        self.sock.send(self.raw)

    def receive(self, timeout: float) -> bytes | None:
        """The next datagram back, or None after timeout seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(8192)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0, nothing there
            return None

    def exchange(self, timeout: float) -> bytes | None:
        self.send()
        return self.receive(timeout)

    def code(self, reply: bytes) -> int:
        """The reply's code, after checking it answers this request under the secret."""
        decoded = self.packet.CreateReply(packet=reply)
        assert self.packet.VerifyReply(decoded, reply, enforce_ma=True), "reply fails to verify"
        return int(reply[0])

    @property
    def hidden_password(self) -> bytes:
        """The User-Password attribute as it went over the wire."""
        return bytes(self.packet[2][0])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(autouse=True)
def _close_raw_logins() -> Iterator[None]:
    yield
    while RawLogin.opened:
        RawLogin.opened.pop().close()


def accepted(login: RawLogin, reply: bytes | None) -> bool:
    return reply is not None and login.code(reply) == rp.AccessAccept


def status_ok(proxy: RunningProxy, timeout: float = 1.0) -> bool:
    """One Status-Server (RFC 5997, signed) answered with a verified Access-Accept."""
    return _status_server(proxy.port, proxy.secret, timeout=timeout)


# --- a scriptable SecSign ID server ------------------------------------------------------

#: An answer that never comes: the connection is accepted, the request read, then nothing.
HANG = "hang"
SESSION_ID = 4242
PROBE_PATH = "/rest/v2/PluginRegistration/ServerInfo"


def json_body(data: object) -> tuple[int, bytes]:
    return 200, json.dumps(data).encode()


def started(secsign_id: str = "alice.test") -> tuple[int, bytes]:
    return json_body({"authsessionid": SESSION_ID, "secsignid": secsign_id,
                      "authsessionstate": 1})


def state(value: object, secsign_id: str = "alice.test") -> tuple[int, bytes]:
    return json_body({"authsessionid": SESSION_ID, "secsignid": secsign_id,
                      "authsessionstate": value})


Answer = tuple[int, bytes] | str


@dataclass
class Script:
    """What the fake ID server answers to a push start, a state poll and a cancel."""

    start: Answer = field(default_factory=started)
    state: Answer = field(default_factory=lambda: state(3))
    cancel: Answer = field(default_factory=lambda: json_body({}))
    probe: Answer = field(default_factory=lambda: json_body({}))


class FakeIdServer(ThreadingHTTPServer):
    """The fake ID server; `calls` lists ("start" | "state" | "cancel", secsignid) in order."""

    daemon_threads = True

    def __init__(self, script: Script, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.calls: list[tuple[str, str]] = []
        self.first_call = threading.Event()
        self.release = threading.Event()
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that gives up mid-answer is what these tests provoke."""

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: FakeIdServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == PROBE_PATH:
            self._answer(self.server.script.probe)
            return
        asked = parse_qs(parts.query).get("secsignid", [""])[0]
        if parts.path == "/rest/v2/AuthSession":
            self._record("start", asked)
            self._answer(self.server.script.start)
        elif parts.path.startswith("/rest/v2/AuthSession/"):
            self._record("state", asked)
            self._answer(self.server.script.state)
        else:
            self._answer((404, b'{"errormsg": "no such call"}'))

    def do_DELETE(self) -> None:
        self._record("cancel", "")
        self._answer(self.server.script.cancel)

    def _record(self, kind: str, secsign_id: str) -> None:
        self.server.calls.append((kind, secsign_id))
        self.server.first_call.set()

    def _answer(self, answer: Answer) -> None:
        if answer == HANG:
            self.server.release.wait(30)
            self.close_connection = True
            return
        assert not isinstance(answer, str)
        status, body = answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read `server.calls`."""


@pytest.fixture
def fake_id_server() -> Iterator[Callable[..., FakeIdServer]]:
    made: list[FakeIdServer] = []

    def make(script: Script | None = None, tls: tuple[Path, Path] | None = None) -> FakeIdServer:
        made.append(FakeIdServer(script or Script(), tls))
        return made[-1]

    yield make
    for server in made:
        server.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with openssl now: (cert, key)."""
    openssl = require_binary("openssl")
    cert, key = directory / "self-signed.pem", directory / "self-signed.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout", str(key), "-out",
         str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key


# --- black holes ------------------------------------------------------------------------


class BlackHole:
    """A loopback socket that takes connections or datagrams and never answers."""

    def __init__(self, kind: int) -> None:
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.received = 0
        self.codes: list[int] = []  # UDP: the RADIUS code of each datagram
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(kind,), daemon=True)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(64)
        self.sock.settimeout(0.05)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, kind: int) -> None:
        while not self._stop.is_set():
            try:
                if kind == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    self.accepted.append(conn)  # kept open, never read, never answered
                else:
                    data, _ = self.sock.recvfrom(8192)
                    self.codes.append(data[0] if data else -1)
                self.received += 1
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[Callable[[int], BlackHole]]:
    made: list[BlackHole] = []

    def make(kind: int) -> BlackHole:
        made.append(BlackHole(kind))
        return made[-1]

    yield make
    for hole in made:
        hole.close()


# --- process facts ----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def wait_audits(proxy: RunningProxy, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    return proxy.wait_event("auth", count=count, timeout=timeout)[:count]


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


__all__ = ["HANG", "BlackHole", "FakeIdServer", "RawLogin", "Script", "accepted", "json_body",
           "ldap_sections", "rss_kib", "self_signed", "started", "state", "status_ok",
           "upstream_sections", "wait_audits"]
