"""The asyncio LDAP client and its connection pools, against slapd and a scripted server.

What the backend's own tests cannot see from outside: TLS is really on and verified (ldaps,
StartTLS, a certificate for another name), a refused StartTLS sends no password, a server
that answers garbage, closes mid-search, declares a huge message or falls silent fails the
operation cleanly and the next request recovers, many searches share one connection, many
logins share a few connections, and a connection that bound as a user never searches.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from radius_proxy.backends import ldap_pool
from radius_proxy.backends.ldap_ber import (
    SCOPE_SUBTREE,
    BindRequest,
    BindResponse,
    ExtendedRequest,
    ExtendedResponse,
    LdapResult,
    SearchRequest,
    SearchResultEntry,
    SearchResultReference,
)
from radius_proxy.backends.ldap_client import (
    MAX_ENTRIES,
    LdapConnection,
    LdapConnectionError,
    LdapTimeout,
    ServerAddress,
    connect,
)
from radius_proxy.backends.ldap_directory import LdapDirectory
from radius_proxy.backends.ldap_filter import compile_filter
from radius_proxy.config import LdapConfig, Secret
from radius_proxy.eager import start
from radius_proxy.pipeline.ports import PrimaryOutcome, PrimaryResult
from tests.integration.ldap.fake_server import CLOSE, FakeLdap, found, wire
from tests.integration.ldap.helpers import request, slapd_config
from tests.servers import slapd as slapd_server
from tests.servers.slapd import Slapd, make_pki

ACCEPT, REJECT, UNAVAILABLE = (PrimaryOutcome.ACCEPT, PrimaryOutcome.REJECT,
                               PrimaryOutcome.UNAVAILABLE)
NOTICE_OID = "1.3.6.1.4.1.1466.20036"
ALICE = SearchRequest(slapd_server.SUFFIX, SCOPE_SUBTREE,
                      compile_filter("(sAMAccountName=alice)"), ("secsignId",))


def context(ca_file: Path | str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def fake_config(url: str, **overrides: Any) -> LdapConfig:
    values: dict[str, Any] = {
        "urls": (url,), "bind_dn": "cn=svc,dc=example,dc=com", "bind_password": Secret("pw"),
        "base_dn": "dc=example,dc=com", "user_filter": "(uid={username})",
        "timeout_seconds": 1.0, "pool_size": 2, "nested_groups": False,
    }
    values.update(overrides)
    return LdapConfig(**values)


# -- transports ----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["ldap", "ldaps", "starttls"])
def test_transports_to_slapd(slapd: Slapd, transport: str) -> None:
    url = slapd.ldaps_url if transport == "ldaps" else slapd.ldap_url

    async def scenario() -> None:
        conn = await connect(ServerAddress.parse(url), context(slapd.pki.ca_file),
                             transport == "starttls", 2.0)
        try:
            assert conn.tls is (transport != "ldap")
            bound = await conn.bind(slapd_server.SERVICE_DN, slapd_server.SERVICE_PASSWORD.encode())
            assert bound.code == 0
            result = await conn.search(ALICE)
            assert [e.dn for e in result.entries] == [f"uid=alice,{slapd_server.PEOPLE}"]
        finally:
            conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("ldaps", [False, True])
def test_certificate_for_another_name_is_refused(tmp_path: Path, ldaps: bool) -> None:
    pki = make_pki(tmp_path / "pki", san="DNS:other.example")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.cert_file, pki.key_file)

    async def scenario() -> None:
        async with FakeLdap(tls=server_tls, ldaps=ldaps) as fake:
            with pytest.raises(LdapConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await connect(ServerAddress.parse(fake.url), context(pki.ca_file), True, 2.0)
            assert not any(isinstance(m.op, BindRequest) for m in fake.received)

    asyncio.run(scenario())


def test_refused_starttls_sends_no_password() -> None:
    async def scenario() -> None:
        async with FakeLdap(starttls_code=2) as fake:
            directory = LdapDirectory(fake_config(fake.url, start_tls=True))
            try:
                result = await directory.authenticate(request("alice", "alicepass"))
            finally:
                await directory.close()
            assert result.outcome is UNAVAILABLE
            assert fake.received
            assert all(isinstance(m.op, ExtendedRequest) for m in fake.received)

    asyncio.run(scenario())


# -- a server that misbehaves --------------------------------------------------------------------

def garbage(message_id: int, _: SearchRequest) -> list[bytes]:
    return [bytes.fromhex("3003020101") + b"\x00" * 8]


def close_mid_search(message_id: int, _: SearchRequest) -> list[bytes]:
    return [found(message_id)[0], CLOSE]


def huge(message_id: int, _: SearchRequest) -> list[bytes]:
    return [bytes.fromhex("30840fffffff") + b"\x00" * 65536]


def notice_of_disconnection(message_id: int, _: SearchRequest) -> list[bytes]:
    """RFC 4511 section 4.4.1: message ID 0, the server is going away."""
    return [wire(0, ExtendedResponse(LdapResult(52, "", "shutting down"), NOTICE_OID))]


def wrong_kind(message_id: int, _: SearchRequest) -> list[bytes]:
    return [wire(message_id, SearchResultEntry("cn=x")),
            wire(message_id, BindResponse(LdapResult(0)))]


def silence(message_id: int, _: SearchRequest) -> list[bytes]:
    return []


def endless_references(message_id: int, _: SearchRequest) -> list[bytes]:
    """More continuation references than a search may hold, and no SearchResultDone."""
    reference = wire(message_id, SearchResultReference(("ldap://elsewhere/dc=x",)))
    return [reference] * (MAX_ENTRIES + 1)


@pytest.mark.parametrize(("script", "error"), [
    (garbage, "protocol error"),
    (close_mid_search, "closed the connection|lost"),
    (huge, "exceeds the limit"),
    (notice_of_disconnection, "notice of disconnection"),
    (wrong_kind, "answered with BindResponse"),
    (silence, "no answer"),
    (endless_references, "more than .* entries and references"),
])
def test_misbehaving_server_fails_every_pending_search(
        script: Callable[[int, SearchRequest], list[bytes]], error: str) -> None:
    async def scenario() -> None:
        async with FakeLdap(on_search=script) as fake:
            conn = await connect(ServerAddress.parse(fake.url), ssl.create_default_context(),
                                 False, 0.5)
            started = time.monotonic()
            results = await asyncio.gather(*(conn.search(ALICE) for _ in range(3)),
                                           return_exceptions=True)
            assert time.monotonic() - started < 2.0
            assert all(isinstance(r, LdapConnectionError) for r in results), results
            assert any(re.search(error, str(r)) for r in results), results
            assert conn.closed
            with pytest.raises(LdapConnectionError):
                await conn.search(ALICE)

    asyncio.run(scenario())


def test_silent_server_is_a_timeout() -> None:
    async def scenario() -> None:
        async with FakeLdap(on_search=silence) as fake:
            conn = await connect(ServerAddress.parse(fake.url), ssl.create_default_context(),
                                 False, 0.3)
            with pytest.raises(LdapTimeout):
                await conn.search(ALICE)

    asyncio.run(scenario())


@pytest.mark.parametrize("script", [garbage, close_mid_search, huge, silence])
def test_directory_fails_closed_on_a_misbehaving_server_and_recovers(
        script: Callable[[int, SearchRequest], list[bytes]]) -> None:
    async def scenario() -> None:
        async with FakeLdap(on_search=script) as fake:
            directory = LdapDirectory(fake_config(fake.url, timeout_seconds=0.5))
            try:
                started = time.monotonic()
                result = await directory.authenticate(request("alice", "alicepass"))
                assert (result.outcome, result.reason) == (UNAVAILABLE, "directory_unavailable")
                assert time.monotonic() - started < 1.0 + 0.5  # the budget, and some slack
                fake.on_search = found
                assert (await directory.authenticate(request("alice", "pw"))).outcome is ACCEPT
            finally:
                await directory.close()

    asyncio.run(scenario())


# -- sharing connections ---------------------------------------------------------------------------

def test_many_searches_in_flight_on_one_connection(slapd: Slapd) -> None:
    async def scenario() -> None:
        conn = await connect(ServerAddress.parse(slapd.ldap_url), context(slapd.pki.ca_file),
                             False, 5.0)
        try:
            await conn.bind(slapd_server.SERVICE_DN, slapd_server.SERVICE_PASSWORD.encode())
            searches = [asyncio.ensure_future(conn.search(ALICE)) for _ in range(100)]
            await asyncio.sleep(0)
            assert conn.in_flight > 1
            results = await asyncio.gather(*searches)
            assert all(len(r.entries) == 1 for r in results)
            with pytest.raises(RuntimeError, match="only operation"):
                await asyncio.gather(conn.search(ALICE), conn.bind("cn=x", b"y"))
        finally:
            conn.close()

    asyncio.run(scenario())


class Recorder:
    """Counts the connections the pools open, and what each connection is used for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[LdapConnection] = []
        self.uses: dict[int, list[tuple[str, str]]] = {}
        real_connect = ldap_pool.connect
        real_search, real_bind = LdapConnection.search, LdapConnection.bind

        async def counting_connect(*args: Any) -> LdapConnection:
            conn = await real_connect(*args)
            self.opened.append(conn)
            return conn

        def search(conn: LdapConnection, req: SearchRequest, *rest: Any) -> Awaitable[Any]:
            self.uses.setdefault(id(conn), []).append(("search", req.base))
            return real_search(conn, req, *rest)

        def bind(conn: LdapConnection, dn: str, password: bytes) -> Awaitable[LdapResult]:
            self.uses.setdefault(id(conn), []).append(("bind", dn))
            return real_bind(conn, dn, password)

        monkeypatch.setattr(ldap_pool, "connect", counting_connect)
        monkeypatch.setattr(LdapConnection, "search", search)
        monkeypatch.setattr(LdapConnection, "bind", bind)


def test_concurrent_logins_share_a_few_connections_and_binds_never_search(
        slapd: Slapd, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    directory = LdapDirectory(slapd_config(slapd, pool_size=4))
    logins = [("alice", "alicepass", ACCEPT), ("bob", "bobpass", ACCEPT),
              ("carol", "wrong", REJECT), ("nobody", "x", REJECT), ("erin", "erinpass", REJECT)]

    async def scenario() -> list[Any]:
        try:
            return await asyncio.gather(
                *(directory.authenticate(request(u, p)) for u, p, _ in logins * 40),
                *(directory.lookup("carol", PrimaryResult(ACCEPT)) for _ in range(20)),
                *(directory.probe() for _ in range(5)))
        finally:
            await directory.close()

    results = asyncio.run(scenario())
    assert [r.outcome for r in results[:200]] == [o for _, _, o in logins] * 40
    assert all(r is not None and r.secsign_id == "carol.secsign" for r in results[200:220])
    assert results[220:] == [True] * 5
    assert len(recorder.opened) <= ldap_pool.SERVICE_CONNECTIONS + 4
    for uses in recorder.uses.values():
        user_binds = [dn for op, dn in uses if op == "bind" and dn != slapd_server.SERVICE_DN]
        searches = [base for op, base in uses if op == "search"]
        assert not (user_binds and searches), uses


def test_kept_connections_survive_a_directory_restart_in_one_loop(tmp_path: Path) -> None:
    own = Slapd(tmp_path / "slapd")
    directory = LdapDirectory(slapd_config(own, timeout_seconds=1.0))

    async def scenario() -> list[PrimaryOutcome]:
        outcomes = []
        try:
            for step in ("up", "down", "up again", "still up"):
                if step == "down":
                    own.stop()
                elif step == "up again":
                    own.start()
                result = await directory.authenticate(request("alice", "alicepass"))
                outcomes.append(result.outcome)
        finally:
            await directory.close()
        return outcomes

    try:
        assert asyncio.run(scenario()) == [ACCEPT, UNAVAILABLE, ACCEPT, ACCEPT]
    finally:
        own.stop()


def test_connections_of_a_finished_loop_are_closed(slapd: Slapd) -> None:
    directory = LdapDirectory(slapd_config(slapd))
    for _ in range(3):  # each asyncio.run is a new loop: the last one's connections must go
        result = asyncio.run(directory.authenticate(request("alice", "alicepass")))
        assert result.outcome is ACCEPT
    asyncio.run(directory.close())
    gc.collect()  # an unclosed transport would warn now, and warnings are errors here


def test_logins_started_without_a_task_as_the_server_runs_them(slapd: Slapd) -> None:
    """The server steps a request's coroutine by hand until it first waits (eager.start), so
    the backend must not need a current Task: no asyncio.timeout, no current_task()."""
    directory = LdapDirectory(slapd_config(slapd))

    async def scenario() -> list[PrimaryOutcome]:
        loop = asyncio.get_running_loop()
        outcomes: list[PrimaryOutcome] = []

        async def login(password: str) -> None:
            outcomes.append((await directory.authenticate(request("alice", password))).outcome)

        try:
            for password in ("alicepass", "wrong", "alicepass"):  # new, then kept connections
                finished = loop.create_future()

                def kick(password: str = password, finished: Any = finished) -> None:
                    assert asyncio.current_task() is None
                    task = start(login(password), contextvars.copy_context(), loop)
                    assert task is not None  # it waited for the directory
                    task.add_done_callback(lambda t: finished.set_result(t.result()))

                loop.call_soon(kick)
                await finished
        finally:
            await directory.close()
        return outcomes

    assert asyncio.run(scenario()) == [ACCEPT, REJECT, ACCEPT]
