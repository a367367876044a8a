"""The upstream RADIUS backend against real FreeRADIUS 3.2 (and two small UDP fakes).

What an administrator relies on: a right password is accepted only on a verified answer,
attributes pass through as configured, a wrong secret or an unsigned upstream is reported as
such, a dead upstream costs one failover and then is skipped until Status-Server finds it
again, and an upstream's own challenge (OTP) comes back as a CHALLENGE.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import pyrad.packet
import pytest
from structlog.testing import capture_logs

from radius_proxy.backends.upstream_radius import UpstreamRadius
from radius_proxy.pipeline.ports import PrimaryOutcome, PrimaryResult
from radius_proxy.protocol.dictionary import load_dictionary
from radius_proxy.protocol.packet import hide_password
from tests.integration.upstream.conftest import (
    FakeUpstream,
    accept_signed_with,
    accept_with_proxy_state,
    authenticate,
    login,
    upstream_config,
    with_backend,
)
from tests.servers.freeradius import (
    BOB_AVPAIRS,
    CAROL_OTP,
    CAROL_STATE,
    FreeRadius,
    FreeRadiusFactory,
)

ACCEPT, REJECT = PrimaryOutcome.ACCEPT, PrimaryOutcome.REJECT
CHALLENGE, UNAVAILABLE = PrimaryOutcome.CHALLENGE, PrimaryOutcome.UNAVAILABLE
MakeFake = Callable[..., FakeUpstream]


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def unhide(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 section 5.2 reversed, on bytes, trailing NULs stripped."""
    out, last = b"", authenticator
    for i in range(0, len(hidden), 16):
        key = hashlib.md5(secret + last, usedforsecurity=False).digest()
        out += bytes(a ^ b for a, b in zip(hidden[i:i + 16], key, strict=True))
        last = hidden[i:i + 16]
    return out.rstrip(b"\0")


# -- accept, reject, pass-through --------------------------------------------------------

def test_accept_needs_a_verified_answer(freeradius: FreeRadius) -> None:
    result = authenticate(upstream_config([freeradius.ma_address], freeradius.secret),
                          login("alice", "alicepass"))
    assert result == PrimaryResult(ACCEPT)


def test_reject_and_nothing_leaks_from_it(freeradius: FreeRadius) -> None:
    config = upstream_config([freeradius.ma_address], freeradius.secret, pass_through=("*",))

    async def body(backend: UpstreamRadius) -> list[PrimaryResult]:
        return [await backend.authenticate(login("bob", "wrong")),
                await backend.authenticate(login("mallory", "anything")),
                await backend.authenticate(login("nosuchuser", "x"))]

    for result in with_backend(config, body):
        # FreeRADIUS puts "Hello, bob" into the Reject too; a reject carries nothing on.
        assert result == PrimaryResult(REJECT, "primary_rejected")


@pytest.mark.parametrize("names", [("Class", "Filter-Id", "Cisco-AVPair"),
                                   ("class", "FILTER-ID", "cisco-avpair")])
def test_pass_through_named_attributes(freeradius: FreeRadius, names: tuple[str, ...]) -> None:
    config = upstream_config([freeradius.ma_address], freeradius.secret, pass_through=names)
    result = authenticate(config, login("bob", "bobpass"))
    assert result.outcome is ACCEPT
    assert result.reply_attributes == (
        ("Class", b"bob-class"), ("Filter-Id", "vpn-users"),
        ("Cisco-AVPair", BOB_AVPAIRS[0]), ("Cisco-AVPair", BOB_AVPAIRS[1]),
    )


def test_pass_through_star_is_everything_but_hop_by_hop(freeradius: FreeRadius) -> None:
    config = upstream_config([freeradius.ma_address], freeradius.secret, pass_through=("*",))
    result = authenticate(config, login("bob", "bobpass"))
    assert result.outcome is ACCEPT
    assert result.reply_attributes == (
        ("Reply-Message", "Hello, bob"), ("Class", b"bob-class"), ("Filter-Id", "vpn-users"),
        ("Cisco-AVPair", BOB_AVPAIRS[0]), ("Cisco-AVPair", BOB_AVPAIRS[1]),
    )  # the reply's Message-Authenticator is not among them


# -- what goes on the wire ---------------------------------------------------------------

def test_request_on_the_wire(fake_upstream: MakeFake) -> None:
    """M-A first and valid, the password re-hidden byte-exact, the NAS's attributes along."""
    fake = fake_upstream()
    secret = "wire-test-secret-0123456789"
    password = b"caf\xc3\xa9 \xff\x01 not utf-8"
    request = login(
        "alice", password, state=b"upstream-state-1",
        NAS_Identifier=("sshd",), NAS_IP_Address=("192.0.2.10",),
        NAS_IPv6_Address=("2001:db8::10",), NAS_Port=(4242,), NAS_Port_Type=("Virtual",),
        Service_Type=("Authenticate-Only",), Calling_Station_Id=("198.51.100.7",),
        Called_Station_Id=("vpn.example",), Filter_Id=("not-forwarded",),
    )
    result = authenticate(upstream_config([fake.address], secret, retries=0,
                                          timeout_seconds=0.2), request)
    assert result == PrimaryResult(UNAVAILABLE, "upstream_timeout")
    [data] = fake.received
    assert data[20] == 80
    assert data[21] == 18
    sent = pyrad.packet.AuthPacket(packet=data, secret=secret.encode(), dict=load_dictionary())
    assert sent.code == pyrad.packet.AccessRequest
    assert sent.verify_message_authenticator()
    assert unhide(sent[2][0], secret.encode(), sent.authenticator) == password
    assert sent["User-Name"] == ["alice"]
    assert sent["State"] == [b"upstream-state-1"]
    for name, value in request.attributes.items():
        if name != "Filter-Id":
            assert sent[name] == list(value), name
    assert "Filter-Id" not in sent
    assert "Proxy-State" not in sent


def test_retransmits_are_identical_then_failover_is_new(fake_upstream: MakeFake) -> None:
    """RFC 5080 2.2.1: same ID and authenticator per server; a new pair on failover."""
    first, second = fake_upstream(), fake_upstream()
    config = upstream_config([first.address, second.address], "retransmit-secret-0123",
                             retries=2, timeout_seconds=0.2, dead_server_seconds=60)
    started = time.monotonic()
    result = authenticate(config, login("alice", "alicepass"))
    elapsed = time.monotonic() - started
    assert result == PrimaryResult(UNAVAILABLE, "upstream_timeout")
    assert 1.1 <= elapsed < 2.0
    assert len(first.received) == 3
    assert len(set(first.received)) == 1
    assert len(second.received) == 3
    assert len(set(second.received)) == 1
    assert first.received[0][4:20] != second.received[0][4:20]  # new Request Authenticator
    assert {first.received[0][0], second.received[0][0]} == {pyrad.packet.AccessRequest}


def test_slow_upstream_is_retransmitted_then_unavailable(freeradius: FreeRadius) -> None:
    config = upstream_config([freeradius.ma_address], freeradius.secret,
                             timeout_seconds=0.5, retries=1)
    with capture_logs() as logs:
        started = time.monotonic()
        result = authenticate(config, login("slow", "slowpass"))
        elapsed = time.monotonic() - started
    assert result == PrimaryResult(UNAVAILABLE, "upstream_timeout")
    assert 0.95 <= elapsed < freeradius.slow_seconds  # gave up before the answer came
    assert len(events(logs, "upstream_retransmit")) == 1
    assert events(logs, "upstream_dead")[0]["server"] == freeradius.ma_address


# -- secrets and Message-Authenticator ----------------------------------------------------

def test_wrong_secret_freeradius_stays_silent(freeradius: FreeRadius) -> None:
    """FreeRADIUS drops a request whose Message-Authenticator fails: we see a timeout."""
    config = upstream_config([freeradius.ma_address], "not-the-right-secret-0123",
                             retries=0, timeout_seconds=0.3)
    with capture_logs() as logs:
        result = authenticate(config, login("alice", "alicepass"))
    assert result == PrimaryResult(UNAVAILABLE, "upstream_timeout")
    assert "wrong shared secret" in events(logs, "upstream_dead")[0]["hint"]
    assert "Shared secret is incorrect" in freeradius.log()


def test_wrong_secret_in_replies_is_a_bad_reply(fake_upstream: MakeFake) -> None:
    fake = fake_upstream(accept_signed_with("the-upstream-has-another-secret"))
    config = upstream_config([fake.address], "our-secret-for-the-upstream-01",
                             timeout_seconds=0.3)
    with capture_logs() as logs:
        result = authenticate(config, login("alice", "alicepass"))
    assert result == PrimaryResult(UNAVAILABLE, "upstream_bad_reply")
    assert len(fake.received) == 2  # ignored, kept waiting, retransmitted
    [bad] = events(logs, "upstream_bad_reply")
    assert bad["log_level"] == "warning"
    assert bad["why"] == "response_authenticator"
    assert "secret for the upstream may be wrong" in bad["hint"]
    assert all("our-secret" not in repr(e) for e in logs)


def test_required_message_authenticator(freeradius: FreeRadius) -> None:
    unsigned = upstream_config([freeradius.address], freeradius.secret, timeout_seconds=0.3,
                               retries=0)
    with capture_logs() as logs:
        result = authenticate(unsigned, login("alice", "alicepass"))
    assert result == PrimaryResult(UNAVAILABLE, "upstream_bad_reply")
    assert events(logs, "upstream_bad_reply")[0]["why"] == "message_authenticator_missing"

    signed = upstream_config([freeradius.ma_address], freeradius.secret)
    assert authenticate(signed, login("alice", "alicepass")).outcome is ACCEPT
    legacy = upstream_config([freeradius.address], freeradius.secret,
                             require_message_authenticator=False)
    assert authenticate(legacy, login("alice", "alicepass")).outcome is ACCEPT


def test_reply_from_another_address_is_ignored(fake_upstream: MakeFake) -> None:
    """A valid, signed answer counts only from the server's own address (pam_radius 3.x)."""
    secret = "source-address-secret-0123"
    sign = accept_signed_with(secret)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
        spoofer.bind(("127.0.0.2", 0))

        def answer_from_elsewhere(data: bytes) -> None:
            spoofer.sendto(sign(data), fake.peers[-1])

        fake = fake_upstream(answer_from_elsewhere)
        config = upstream_config([fake.address], secret, retries=0, timeout_seconds=0.3)
        with capture_logs() as logs:
            result = authenticate(config, login("alice", "alicepass"))
    assert result == PrimaryResult(UNAVAILABLE, "upstream_timeout")
    [ignored] = events(logs, "upstream_reply_ignored")
    assert ignored["why"] == "foreign_source"
    assert ignored["source"] == "127.0.0.2"


def test_foreign_proxy_state_is_ignored(fake_upstream: MakeFake) -> None:
    secret = "proxy-state-secret-0123456"
    fake = fake_upstream(accept_with_proxy_state(secret))
    config = upstream_config([fake.address], secret, retries=0, timeout_seconds=0.3)
    with capture_logs() as logs:
        result = authenticate(config, login("alice", "alicepass"))
    assert result == PrimaryResult(UNAVAILABLE, "upstream_bad_reply")
    assert events(logs, "upstream_bad_reply")[0]["why"] == "foreign_proxy_state"


# -- failover and health -----------------------------------------------------------------

def test_first_upstream_stopped_second_answers(freeradius: FreeRadius,
                                               make_freeradius: FreeRadiusFactory) -> None:
    first = make_freeradius(secret=freeradius.secret)
    first.stop()
    config = upstream_config([first.ma_address, freeradius.ma_address], freeradius.secret,
                             timeout_seconds=0.3, retries=1)

    async def body(backend: UpstreamRadius) -> tuple[list[float], dict[str, bool]]:
        times = []
        for _ in range(2):
            started = time.monotonic()
            assert (await backend.authenticate(login("alice", "alicepass"))).outcome is ACCEPT
            times.append(time.monotonic() - started)
        return times, backend.server_status()

    before = freeradius.logins("alice")
    with capture_logs() as logs:
        (failover, skipped), status = with_backend(config, body)
    assert 0.6 <= failover < 1.2  # two attempts at the stopped one, then the second
    assert skipped < 0.2  # the dead one is skipped
    assert status == {first.ma_address: False, freeradius.ma_address: True}
    assert [e["server"] for e in events(logs, "upstream_dead")] == [first.ma_address]
    assert freeradius.logins("alice") == before + 2


def test_all_upstreams_down(fake_upstream: MakeFake) -> None:
    """Unavailable after (retries + 1) x timeout per server, and still tried when all dead."""
    first, second = fake_upstream(), fake_upstream()
    config = upstream_config([first.address, second.address], "all-down-secret-0123456",
                             timeout_seconds=0.25, retries=1, dead_server_seconds=60)

    async def body(backend: UpstreamRadius) -> list[tuple[PrimaryResult, float]]:
        out = []
        for _ in range(2):
            started = time.monotonic()
            out.append((await backend.authenticate(login("alice", "alicepass")),
                        time.monotonic() - started))
        assert backend.server_status() == {first.address: False, second.address: False}
        return out

    for result, elapsed in with_backend(config, body):
        assert result == PrimaryResult(UNAVAILABLE, "upstream_timeout")
        assert 0.95 <= elapsed < 1.5
    assert len(first.received) == 4
    assert len(second.received) == 4


def test_dead_server_revived_by_status_server(freeradius: FreeRadius,
                                              make_freeradius: FreeRadiusFactory) -> None:
    first = make_freeradius(secret=freeradius.secret)
    first.stop()
    config = upstream_config([first.ma_address, freeradius.ma_address], freeradius.secret,
                             timeout_seconds=0.3, retries=0, dead_server_seconds=1.0)

    async def body(backend: UpstreamRadius) -> float:
        assert (await backend.authenticate(login("alice", "alicepass"))).outcome is ACCEPT
        assert backend.server_status()[first.ma_address] is False
        await asyncio.to_thread(first.start)
        started = time.monotonic()
        while not backend.server_status()[first.ma_address]:
            assert time.monotonic() - started < 4, "not revived"
            await asyncio.sleep(0.05)
        assert (await backend.authenticate(login("alice", "alicepass"))).outcome is ACCEPT
        return time.monotonic() - started

    with capture_logs() as logs:
        with_backend(config, body)
    assert [e["server"] for e in events(logs, "upstream_alive")] == [first.ma_address]
    assert first.logins("alice") == 1  # back in first place


def test_probe(freeradius: FreeRadius, fake_upstream: MakeFake) -> None:
    up = upstream_config([freeradius.ma_address], freeradius.secret)
    assert with_backend(up, lambda backend: backend.probe()) is True
    silent = upstream_config([fake_upstream().address], "probe-secret-0123456789",
                             timeout_seconds=0.2)
    assert with_backend(silent, lambda backend: backend.probe()) is False


def test_probe_of_an_upstream_that_signs_no_status_server_reply(freeradius: FreeRadius) -> None:
    # Stock FreeRADIUS 3.2.1 (the `default` server here) answers Status-Server without
    # Message-Authenticator: the Response Authenticator proves the answer, so a server that
    # is required to sign its Access replies is still found alive.
    up = upstream_config([freeradius.address], freeradius.secret,
                         require_message_authenticator=True)
    assert with_backend(up, lambda backend: backend.probe()) is True


# -- challenge and load ------------------------------------------------------------------

def test_upstream_challenge_then_answer(freeradius: FreeRadius) -> None:
    config = upstream_config([freeradius.ma_address], freeradius.secret)

    async def body(backend: UpstreamRadius) -> list[PrimaryResult]:
        first = await backend.authenticate(login("carol", "carolpass"))
        assert first.challenge_state is not None
        return [first,
                await backend.authenticate(login("carol", CAROL_OTP,
                                                 state=first.challenge_state)),
                await backend.authenticate(login("carol", "000000", state=CAROL_STATE))]

    challenge, answered, wrong = with_backend(config, body)
    assert challenge == PrimaryResult(CHALLENGE, "upstream_challenge",
                                      reply_attributes=(("Reply-Message", "Enter OTP code"),),
                                      challenge_state=CAROL_STATE)
    assert answered.outcome is ACCEPT
    assert wrong == PrimaryResult(REJECT, "primary_rejected")


def test_600_held_in_flight(fake_upstream: MakeFake) -> None:
    """More than 256 requests outstanding at once: several Identifier spaces, no reuse."""
    secret = "many-in-flight-secret-0123"
    fake = fake_upstream(accept_signed_with(secret), hold=600)
    config = upstream_config([fake.address], secret, timeout_seconds=5.0, retries=0)

    async def body(backend: UpstreamRadius) -> list[PrimaryResult]:
        return list(await asyncio.gather(*(
            backend.authenticate(login("alice", "alicepass")) for _ in range(600))))

    results = with_backend(config, body)
    assert len(fake.received) == 600  # no retransmit: all were answered after the 600th
    assert all(r.outcome is ACCEPT for r in results)
    slots = {(peer[1], data[1]) for peer, data in zip(fake.peers, fake.received, strict=True)}
    assert len(slots) == 600  # (source port, Identifier) never reused while outstanding
    assert len({peer[1] for peer in fake.peers}) >= 3


def test_600_logins_against_freeradius(freeradius: FreeRadius) -> None:
    config = upstream_config([freeradius.ma_address], freeradius.secret, timeout_seconds=3.0)

    async def body(backend: UpstreamRadius) -> list[PrimaryResult]:
        logins = [login("alice", "alicepass", NAS_Port=(i,)) if i % 3 else
                  login("bob", "wrong", NAS_Port=(i,)) for i in range(600)]
        return list(await asyncio.gather(*(backend.authenticate(r) for r in logins)))

    started = time.monotonic()
    results = with_backend(config, body)
    assert time.monotonic() - started < 3.0  # answered without a retransmit
    for i, result in enumerate(results):
        assert result.outcome is (ACCEPT if i % 3 else REJECT), i


# -- the hiding function -----------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 100, 128])
def test_hide_password_matches_rfc2865(length: int) -> None:
    password = bytes((i * 7 + 1) % 256 or 1 for i in range(length))
    secret, authenticator = b"hide-secret-0123456789", bytes(range(16))
    hidden = hide_password(password, secret, authenticator)
    assert len(hidden) == max(16, -(-length // 16) * 16)
    assert unhide(hidden, secret, authenticator) == password
    packet = pyrad.packet.AuthPacket(secret=secret, authenticator=authenticator)
    assert hidden == packet.PwCrypt(password)


def test_hide_password_refuses_more_than_128_octets() -> None:
    with pytest.raises(ValueError, match="128"):
        hide_password(b"x" * 129, b"secret", bytes(16))


def test_status_server_reply_parsing_ignores_padding() -> None:
    """Octets beyond Length are padding (RFC 2865 section 3), not attributes."""
    from radius_proxy.backends.upstream_radius import verify_reply

    secret, auth = b"padding-secret-0123456", bytes(range(16))
    body = struct.pack("!BBH", pyrad.packet.AccessAccept, 7, 20)
    data = body + hashlib.md5(body + auth + secret, usedforsecurity=False).digest()
    reply, why = verify_reply(data + b"\x01\x02junk", pyrad.packet.StatusServer, auth, secret,
                              load_dictionary(), False)
    assert why is None
    assert reply.code == pyrad.packet.AccessAccept
    reply, why = verify_reply(data, pyrad.packet.StatusServer, auth, secret,
                              load_dictionary(), True)
    assert reply is None
    assert why == "message_authenticator_missing"
