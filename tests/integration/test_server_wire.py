"""The server on the wire: real clients (radclient, pyrad-built packets, our radtest) against
the real `radius-proxy serve` process.

Covers the foundation's rules: accept and reject; silence for a wrong secret, an unknown
client, a missing Message-Authenticator, Proxy-State without one on a legacy client;
retransmits (dropped in flight, identical bytes after the reply); Status-Server; malformed
packets that never crash or wedge the server.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import sys

import pytest
from pyrad import packet as rp

from radius_proxy.protocol.dictionary import load_dictionary
from tests.clients import build_request, radclient, udp_exchange
from tests.conftest import PROXY_SECRET, session_starts, simulator_log
from tests.support import unavailable

LOGIN = ["User-Name = alice", "User-Password = alicepass", "NAS-Identifier = sshd-1",
         "Calling-Station-Id = 192.0.2.10"]


def _addr(proxy) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    return (proxy.host, proxy.port)


def test_radclient_accept_with_push(start_proxy, simulator) -> None:
    proxy = start_proxy()
    result = radclient(proxy.address, PROXY_SECRET, LOGIN, timeout=5)
    assert result.code == "Access-Accept", result.output
    assert result.attributes["Message-Authenticator"]
    starts = [e for e in simulator_log(simulator) if e["type"] == "start"]
    assert len(starts) == 1
    assert starts[0]["secsignid"] == "alice.test"


def test_reply_has_message_authenticator_first_and_proxy_state_in_order(start_proxy) -> None:
    proxy = start_proxy()
    raw, request = build_request(PROXY_SECRET, "alice", "alicepass",
                                 proxy_states=[b"first", b"second"])
    reply = udp_exchange(_addr(proxy), raw, timeout=5)
    assert reply is not None
    assert reply[0] == rp.AccessAccept
    assert reply[20] == 80, "Message-Authenticator must be the first attribute"
    decoded = request.CreateReply(packet=reply)
    assert request.VerifyReply(decoded, reply, enforce_ma=True)
    assert decoded[33] == [b"first", b"second"]


def test_wrong_password_is_rejected(start_proxy) -> None:
    proxy = start_proxy()
    result = radclient(proxy.address, PROXY_SECRET,
                       ["User-Name = alice", "User-Password = wrong"])
    assert result.code == "Access-Reject"
    assert proxy.wait_event("auth")[-1]["reason"] == "primary_rejected"


@pytest.mark.parametrize("case", ["wrong_secret", "missing_message_authenticator"])
def test_silently_discarded(start_proxy, case: str) -> None:
    proxy = start_proxy()
    secret = "not-the-right-secret-at-all" if case == "wrong_secret" else PROXY_SECRET
    result = radclient(proxy.address, secret, LOGIN, retries=1, timeout=1,
                       message_authenticator=case != "missing_message_authenticator")
    assert result.no_reply, result.output
    reason = ("bad_message_authenticator" if case == "wrong_secret"
              else "missing_message_authenticator")
    drops = proxy.wait_event("packet_dropped")
    assert drops[-1]["reason"] == reason


def test_unknown_client_is_silent(start_proxy) -> None:
    proxy = start_proxy(clients=[{"name": "only-one", "networks": ["127.0.0.1/32"],
                                  "secret": PROXY_SECRET}])
    raw, _ = build_request(PROXY_SECRET, "alice", "alicepass")
    assert udp_exchange(_addr(proxy), raw, timeout=1, source="127.0.0.2") is None
    assert proxy.wait_event("packet_dropped")[-1]["reason"] == "unknown_client"
    assert udp_exchange(_addr(proxy), raw, timeout=5, source="127.0.0.1") is not None


def test_legacy_client_without_message_authenticator(start_proxy) -> None:
    proxy = start_proxy(legacy=True)
    result = radclient(proxy.address, PROXY_SECRET, LOGIN, message_authenticator=False,
                       timeout=5)
    assert result.code == "Access-Accept", result.output
    # Proxy-State without Message-Authenticator is the BlastRADIUS signature: dropped
    with_proxy_state = radclient(proxy.address, PROXY_SECRET, [*LOGIN, "Proxy-State = 0x0102"],
                                 message_authenticator=False, retries=1, timeout=1)
    assert with_proxy_state.no_reply
    reasons = [e["reason"] for e in proxy.events("packet_dropped")]
    assert "proxy_state_without_message_authenticator" in reasons


def test_status_server(start_proxy) -> None:
    proxy = start_proxy()
    result = radclient(proxy.address, PROXY_SECRET, [], command="status")
    assert result.code == "Access-Accept", result.output
    unsigned = radclient(proxy.address, PROXY_SECRET, [], command="status",
                         message_authenticator=False, retries=1, timeout=1)
    assert unsigned.no_reply


def test_retransmit_in_flight_starts_one_push_and_gets_identical_bytes(start_proxy,
                                                                      simulator) -> None:
    from radius_proxy.simulator import parse_rules

    simulator.simulator.set_rules(parse_rules(["*=approve:1.5"]))
    proxy = start_proxy()
    raw, _ = build_request(PROXY_SECRET, "alice", "alicepass", identifier=42)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.4)
        for _ in range(3):  # retransmits while the push is pending: dropped
            sock.sendto(raw, _addr(proxy))
            with pytest.raises(TimeoutError):
                sock.recvfrom(4096)
        sock.settimeout(5)
        first = sock.recvfrom(4096)[0]
        sock.sendto(raw, _addr(proxy))  # after the reply: the cached bytes again
        again = sock.recvfrom(4096)[0]
    assert first == again
    assert first[0] == rp.AccessAccept
    assert session_starts(simulator) == 1
    assert len(proxy.events("auth")) == 1


def test_same_id_new_authenticator_is_a_new_request(start_proxy) -> None:
    proxy = start_proxy()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for password, code in (("alicepass", rp.AccessAccept), ("wrong", rp.AccessReject)):
            raw, _ = build_request(PROXY_SECRET, "alice", password, identifier=9)
            sock.sendto(raw, _addr(proxy))
            assert sock.recvfrom(4096)[0][0] == code
    assert len(proxy.events("auth")) == 2


def _malformed_packets() -> list[bytes]:
    good, _ = build_request(PROXY_SECRET, "alice", "alicepass")
    header = good[:20]
    return [
        b"",
        good[:10],  # truncated header
        good[:-5],  # shorter than its Length field
        good[:2] + struct.pack("!H", 19) + good[4:],  # Length below 20
        good[:2] + struct.pack("!H", 5000) + good[4:] + b"\0" * 5000,  # oversized
        header[:2] + struct.pack("!H", 22) + header[4:] + b"\x01\x00",  # attribute length 0
        header[:2] + struct.pack("!H", 22) + header[4:] + b"\x01\x01",  # attribute length 1
        header[:2] + struct.pack("!H", 24) + header[4:] + b"\x01\x09abcd",  # runs past the end
        bytes([4]) + good[1:],  # Accounting-Request on the auth port
        bytes([2]) + good[1:],  # an Access-Accept sent to a server
        os.urandom(4096) + os.urandom(4096),
    ]


def test_malformed_packets_never_crash_or_wedge(start_proxy) -> None:
    proxy = start_proxy()
    rng = random.Random(2865)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in _malformed_packets():
            sock.sendto(data, _addr(proxy))
        good, _ = build_request(PROXY_SECRET, "alice", "alicepass")
        for _ in range(300):  # mutated valid packets
            mutated = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            if bytes(mutated) != good:  # a mutation may write back the same octet
                sock.sendto(bytes(mutated), _addr(proxy))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recvfrom(4096)  # nothing answered the garbage
    assert proxy.process.alive()
    raw, _ = build_request(PROXY_SECRET, "alice", "alicepass", identifier=200)
    reply = udp_exchange(_addr(proxy), raw, timeout=5)
    assert reply is not None
    assert reply[0] == rp.AccessAccept


def test_ipv6_listener_answers_from_its_own_address(start_proxy, tmp_path) -> None:
    if not socket.has_ipv6:
        unavailable("no IPv6 on this machine")
    from tests.support import free_port

    port6 = free_port(host="::1")
    proxy = start_proxy(clients=[{"name": "v6", "networks": ["::1/128", "127.0.0.0/8"],
                                  "secret": PROXY_SECRET}])
    proxy.process.stop()
    proxy = start_proxy(server={"listen": [f"127.0.0.1:{proxy.port}", f"[::1]:{port6}"],
                                "reply_cache_seconds": 5},
                        clients=[{"name": "v6", "networks": ["::1/128", "127.0.0.0/8"],
                                  "secret": PROXY_SECRET}])
    raw, _ = build_request(PROXY_SECRET, "alice", "alicepass")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(raw, ("::1", port6))
        data, source = sock.recvfrom(4096)
    assert data[0] == rp.AccessAccept
    assert source[0] == "::1"
    assert source[1] == port6


@pytest.mark.parametrize(("password", "expected"), [("alicepass", 0), ("wrong", 1)])
def test_our_radtest(start_proxy, password: str, expected: int) -> None:
    proxy = start_proxy()
    proc = subprocess.run(
        [sys.executable, "-m", "radius_proxy", "radtest", "alice", "--password", password,
         "--server", proxy.address, "--secret", PROXY_SECRET, "--timeout", "5"],
        capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert ("Access-Accept" if expected == 0 else "Access-Reject") in proc.stdout


def test_radtest_times_out_with_exit_2(start_proxy) -> None:
    proxy = start_proxy()
    proc = subprocess.run(
        [sys.executable, "-m", "radius_proxy", "radtest", "alice", "--password", "alicepass",
         "--server", proxy.address, "--secret", "a-wrong-secret-for-this-proxy",
         "--timeout", "1"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "no valid reply" in proc.stdout


def test_debug_log_holds_no_password_or_secret(start_proxy) -> None:
    proxy = start_proxy(legacy=True)
    radclient(proxy.address, PROXY_SECRET, LOGIN, timeout=5)
    radclient(proxy.address, PROXY_SECRET, ["User-Name = bob", 'User-Password = "bob,pass"'],
              timeout=5)
    radclient(proxy.address, PROXY_SECRET, ["User-Name = alice", "User-Password = wrongpass1"],
              timeout=5)
    proxy.wait_event("auth", count=3)
    proxy.process.stop()
    text = proxy.log()
    assert '"level": "debug"' in text  # the run really logged at DEBUG
    for needle in ("alicepass", "bob,pass", "wrongpass1", PROXY_SECRET, "test-pin-password"):
        assert needle not in text


def test_dictionary_decodes_every_shipped_attribute() -> None:
    d = load_dictionary(())
    for name in ("User-Name", "Message-Authenticator", "Proxy-State", "State", "Prompt",
                 "NAS-IPv6-Address", "Error-Cause", "Cisco-AVPair", "Fortinet-Group-Name"):
        assert name in d.attributes
