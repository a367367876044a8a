"""Fixtures for the upstream RADIUS tests: real FreeRADIUS instances and small UDP fakes.

The fakes cover what FreeRADIUS cannot be made to do: stay silent while recording every
datagram (to check byte-identical retransmits), or answer signed with another secret
(FreeRADIUS drops a request whose Message-Authenticator fails, so it never answers a wrong
secret at all).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pyrad.packet
import pytest

from radius_proxy.backends.upstream_radius import UpstreamRadius
from radius_proxy.config import RadiusUpstreamConfig, Secret
from radius_proxy.pipeline.ports import AttrValue, AuthRequest, PrimaryResult
from radius_proxy.protocol.dictionary import load_dictionary
from tests.servers.freeradius import FreeRadius, FreeRadiusFactory, freeradius_factory

T = TypeVar("T")


@pytest.fixture(scope="module")
def freeradius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    """One FreeRADIUS for the tests that do not stop it."""
    with freeradius_factory(tmp_path_factory.mktemp("freeradius")) as make:
        yield make()


@pytest.fixture
def make_freeradius(tmp_path: Path) -> Iterator[FreeRadiusFactory]:
    """More FreeRADIUS instances, for tests that stop and start them."""
    with freeradius_factory(tmp_path) as make:
        yield make


def upstream_config(servers: list[str], secret: str, **overrides: Any) -> RadiusUpstreamConfig:
    """Test defaults: short timeouts so a failover costs a second, not six."""
    base = RadiusUpstreamConfig(servers=tuple(servers), secret=Secret(secret),
                                timeout_seconds=0.4, retries=1,
                                require_message_authenticator=True, pass_through=("Class",),
                                dead_server_seconds=1.0)
    return replace(base, **overrides)


def login(username: str, password: str | bytes, *, state: bytes | None = None,
          **attributes: tuple[AttrValue, ...]) -> AuthRequest:
    """An AuthRequest as the pipeline hands it over; attribute names with "_" for "-"."""
    pw = password.encode() if isinstance(password, str) else password
    attrs = {k.replace("_", "-"): v for k, v in attributes.items()}
    return AuthRequest(request_id="test", client="test", client_ip="127.0.0.1",
                       username=username, password=pw, attributes=attrs, state=state)


def with_backend(config: RadiusUpstreamConfig,
                 body: Callable[[UpstreamRadius], Coroutine[Any, Any, T]]) -> T:
    """Run body against a started backend in a fresh event loop, and always close it."""
    async def run() -> T:
        backend = UpstreamRadius(config, load_dictionary())
        await backend.start()
        try:
            return await body(backend)
        finally:
            await backend.close()
    return asyncio.run(run())


def authenticate(config: RadiusUpstreamConfig, request: AuthRequest) -> PrimaryResult:
    return with_backend(config, lambda backend: backend.authenticate(request))


class FakeUpstream:
    """A UDP server on 127.0.0.1 that records every datagram and optionally answers.

    With `hold`, answers are held back until that many datagrams have arrived, so that
    many requests are provably in flight at once.
    """

    def __init__(self, answer: Callable[[bytes], bytes | None] | None = None,
                 hold: int = 0) -> None:
        self.answer = answer
        self.hold = hold
        self.received: list[bytes] = []
        self.peers: list[tuple[str, int]] = []
        self._held: list[tuple[bytes, tuple[str, int]]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # a burst of hundreds of requests overflows the default buffer (test-servers.md s8)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append(data)
            self.peers.append(peer)
            self._held.append((data, peer))
            if len(self.received) < self.hold:
                continue
            for held, to in self._held:
                reply = self.answer(held) if self.answer else None
                if reply is not None:
                    self._sock.sendto(reply, to)
            self._held.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def accept_signed_with(secret: str) -> Callable[[bytes], bytes]:
    """An answer function: Access-Accept with Message-Authenticator, under `secret`."""
    def answer(data: bytes) -> bytes:
        request = pyrad.packet.AuthPacket(packet=data, secret=secret.encode(),
                                          dict=load_dictionary())
        reply = request.CreateReply()
        return bytes(reply.ReplyPacket())
    return answer


def accept_with_proxy_state(secret: str) -> Callable[[bytes], bytes]:
    """A signed Access-Accept carrying a Proxy-State nobody sent (BlastRADIUS signature)."""
    def answer(data: bytes) -> bytes:
        request = pyrad.packet.AuthPacket(packet=data, secret=secret.encode(),
                                          dict=load_dictionary())
        reply = request.CreateReply()
        reply.AddAttribute("Proxy-State", b"injected")
        return bytes(reply.ReplyPacket())
    return answer


@pytest.fixture
def fake_upstream() -> Iterator[Callable[..., FakeUpstream]]:
    made: list[FakeUpstream] = []

    def make(answer: Callable[[bytes], bytes | None] | None = None,
             hold: int = 0) -> FakeUpstream:
        made.append(FakeUpstream(answer, hold))
        return made[-1]

    yield make
    for fake in made:
        fake.close()

