"""A byte-level fuzz of the running server: thousands of hostile datagrams, then a login.

The corpus comes from a seeded RNG and valid packets built here octet by octet (so the
test controls every authenticator): random datagrams, bit flips, truncations, Length
edits, attribute-length edits, duplicated, removed and resized Message-Authenticators,
packets with thousands of attributes, every code 0-255 signed and unsigned, and valid
packets from a source that is not a client. None of it may get an answer (RFC 2865 section
3 and 2, RFC 2869 section 5.14, RFC 5997); each datagram must be counted as a drop exactly
once, while the `packet_dropped` log stays a handful of lines (it is rate-limited); and
the process must neither die nor grow over a second, identical round.

The datagrams go in batches; after each batch a fresh Status-Server is sent on the same
socket and its answer awaited. The server reads its socket in order, so that answer proves
the whole batch was handled, keeps the socket buffer from overflowing, and shows the
server still answers during the flood.
"""

from __future__ import annotations

import hmac
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pyrad import packet as rp

from radius_proxy.protocol.packet import hide_password, verify_reply
from tests.conftest import PROXY_SECRET, RunningProxy
from tests.robustness.conftest import rss_kib
from tests.support import free_port

SEED = 2865
SECRET = PROXY_SECRET.encode()
CLIENT, STRANGER = "127.0.0.1", "127.0.0.2"  # the only client is 127.0.0.1/32
BATCH = 16
#: How much the resident set may grow over the second, identical round.
RSS_SLACK_KIB = 2 * 1024
#: The budget of both rounds together (the test's own bound, not a server promise).
FUZZ_SECONDS = 20.0

MA, USER_NAME, USER_PASSWORD, NAS_IDENTIFIER, NAS_PORT = 80, 1, 2, 32, 5
STATE, PROXY_STATE, CALLING_STATION, VSA = 24, 33, 31, 26
Attr = tuple[int, bytes]


def encode(code: int, ident: int, authenticator: bytes, attrs: list[Attr], *,
           sign: bool = True) -> bytes:
    """A request; with `sign`, a Message-Authenticator first and correct (RFC 2869 5.14)."""
    body = b"".join(bytes((kind, len(value) + 2)) + value for kind, value in attrs)
    if sign:
        body = bytes((MA, 18)) + bytes(16) + body
    header = bytes((code, ident)) + (20 + len(body)).to_bytes(2, "big") + authenticator
    if sign:
        mac = hmac.new(SECRET, header + body, "md5").digest()
        body = body[:2] + mac + body[18:]
    return header + body


def raw_packet(code: int, ident: int, authenticator: bytes, body: bytes) -> bytes:
    return bytes((code, ident)) + (20 + len(body)).to_bytes(2, "big") + authenticator + body


def login_attrs(authenticator: bytes, user: str = "alice", password: bytes = b"alicepass",
                *extra: Attr) -> list[Attr]:
    return [(USER_NAME, user.encode()),
            (USER_PASSWORD, hide_password(password, SECRET, authenticator)),
            (NAS_IDENTIFIER, b"fuzz-nas"), (CALLING_STATION, b"192.0.2.77"), *extra]


def attribute_offsets(data: bytes) -> list[int]:
    """Where each attribute of a well-formed packet starts."""
    offsets, pos = [], 20
    while pos < len(data):
        offsets.append(pos)
        pos += data[pos + 1]
    return offsets


def set_length(data: bytes, length: int) -> bytes:
    return data[:2] + length.to_bytes(2, "big") + data[4:]


def without(data: bytes, kind: int) -> bytes:
    """The packet with every attribute of `kind` cut out and Length fixed (not re-signed)."""
    body = b""
    for pos in attribute_offsets(data):
        if data[pos] != kind:
            body += data[pos:pos + data[pos + 1]]
    return set_length(data[:20] + body, 20 + len(body))


@dataclass(frozen=True)
class Templates:
    """Valid packets to mutate; every one of them would be answered as it is."""

    login: bytes
    login_proxy_state: bytes
    long_password: bytes
    status: bytes

    def all(self) -> tuple[bytes, ...]:
        return (self.login, self.login_proxy_state, self.long_password, self.status)


def templates(rng: random.Random) -> Templates:
    auth = [rng.randbytes(16) for _ in range(4)]
    return Templates(
        login=encode(1, 10, auth[0], login_attrs(auth[0])),
        login_proxy_state=encode(1, 11, auth[1], login_attrs(
            auth[1], "alice", b"alicepass", (PROXY_STATE, b"ps-1"), (PROXY_STATE, b"ps-2"))),
        long_password=encode(1, 12, auth[2], login_attrs(auth[2], "bob", b"x" * 100)),
        status=encode(12, 13, auth[3], []),
    )


def corpus(seed: int) -> list[tuple[str, bytes]]:
    """Every hostile datagram of one round, with its source address, in a seeded order."""
    rng = random.Random(seed)
    t = templates(rng)
    out: list[tuple[str, bytes]] = []
    for make in (_random_datagrams, _bit_flips, _truncations, _length_edits,
                 _attribute_length_edits, _message_authenticator_edits, _huge_attribute_counts,
                 _every_code, _signed_structure_errors):
        out += [(CLIENT, data) for data in make(rng, t)]
    out += [(STRANGER, data) for data in t.all()]  # valid, but not from a client
    rng.shuffle(out)
    for i in range(0, len(out), 10):  # and a tenth of everything from the stranger
        out[i] = (STRANGER, out[i][1])
    valid = set(t.all())
    assert not any(src == CLIENT and data in valid for src, data in out)
    return out


def _random_datagrams(rng: random.Random, _: Templates) -> Iterator[bytes]:
    for _ in range(300):
        size = rng.choice([0, 1, 19, 20, 21, rng.randint(0, 64), rng.randint(20, 400),
                           rng.randint(400, 4200)])
        yield rng.randbytes(size)
    for _ in range(500):  # big ones: a server that kept them would show it in its RSS
        yield rng.randbytes(rng.randint(1000, 4200))
    for _ in range(300):  # a plausible header and well-formed random attributes
        attrs = [(rng.randrange(256), rng.randbytes(rng.randint(0, 40)))
                 for _ in range(rng.randint(0, 30))]
        if rng.random() < 0.5:
            attrs.insert(rng.randint(0, len(attrs)), (MA, rng.randbytes(16)))
        yield encode(rng.choice([1, 12, rng.randrange(256)]), rng.randrange(256),
                     rng.randbytes(16), attrs, sign=False)


def _bit_flips(rng: random.Random, t: Templates) -> Iterator[bytes]:
    for _ in range(500):
        data = bytearray(rng.choice(t.all()))
        for bit in rng.sample(range(len(data) * 8), rng.randint(1, 8)):
            data[bit // 8] ^= 1 << (bit % 8)
        yield bytes(data)


def _truncations(rng: random.Random, t: Templates) -> Iterator[bytes]:
    for template in (t.login, t.status):
        for cut in range(len(template)):
            yield template[:cut]  # shorter than its Length field
            if cut >= 20:
                yield set_length(template[:cut], cut)  # and with Length made to agree
    for _ in range(60):
        cut = rng.randrange(20, len(t.long_password))
        yield set_length(t.long_password[:cut], cut)


def _length_edits(rng: random.Random, t: Templates) -> Iterator[bytes]:
    for template in t.all():
        size = len(template)
        lengths = {0, 1, 19, 20, 21, size - 18, size - 1, size + 1, size + 18, 4096, 4097,
                   65535, *(rng.randrange(65536) for _ in range(20))}
        for length in sorted(lengths - {size}):
            yield set_length(template, length)
            padding = rng.randbytes(max(0, min(length, 4200) - size) + rng.randint(0, 64))
            yield set_length(template, length) + padding


def _attribute_length_edits(rng: random.Random, t: Templates) -> Iterator[bytes]:
    for _ in range(300):
        template = rng.choice(t.all())
        offsets = attribute_offsets(template)
        if not offsets:
            continue
        pos = rng.choice(offsets)
        value = rng.choice([0, 1, 2, 3, 17, 19, 255, rng.randrange(256)])
        if value == template[pos + 1]:
            value ^= 1
        yield template[:pos + 1] + bytes((value,)) + template[pos + 2:]


def _message_authenticator_edits(rng: random.Random, t: Templates) -> Iterator[bytes]:
    for template in t.all():
        pos = attribute_offsets(template)[0]  # the Message-Authenticator comes first
        ma = template[pos:pos + 18]
        rest = template[pos + 18:]
        head = template[:pos]

        def fixed(body: bytes, head: bytes = head) -> bytes:
            return set_length(head + body, len(head) + len(body))

        yield fixed(ma + rest + ma)  # duplicated, both copies the valid value
        yield fixed(ma + ma + rest)
        yield fixed(rest + bytes((MA, 18)) + bytes(16) + ma)
        yield without(template, MA)  # removed
        if rest:
            yield fixed(rest + ma)  # moved to the end, not re-signed
        yield fixed(bytes((MA, 18)) + bytes(16) + rest)  # zeroed
        for size in (2, 3, 17, 19, 34):  # resized
            yield fixed(bytes((MA, size)) + rng.randbytes(size - 2) + rest)
        for _ in range(5):
            yield fixed(bytes((MA, 18)) + rng.randbytes(16) + rest)  # forged


def _huge_attribute_counts(rng: random.Random, t: Templates) -> Iterator[bytes]:
    forged = bytes((MA, 18)) + rng.randbytes(16)
    for kind in (VSA, PROXY_STATE, 18, 44, 200):  # 2 029 empty attributes: 4 096 octets
        yield raw_packet(rp.AccessRequest, 1, rng.randbytes(16), forged + bytes((kind, 2)) * 2029)
    for kind, value in ((NAS_PORT, b"\0\0\0\1"), (PROXY_STATE, b"x" * 251),
                        (VSA, b"\0\0\0\x09\x01\x02"), (CALLING_STATION, b"c")):
        attribute = bytes((kind, len(value) + 2)) + value
        body = attribute * ((4096 - 38) // len(attribute))
        yield raw_packet(rp.AccessRequest, 2, rng.randbytes(16), forged + body)
        yield raw_packet(rp.AccessRequest, 3, rng.randbytes(16), body)  # and without any MA
    for _ in range(200):  # random kinds, each empty or a single octet
        attrs = [(rng.randrange(256), rng.randbytes(rng.randint(0, 1))) for _ in range(1300)]
        yield encode(rng.choice([1, 12]), 4, rng.randbytes(16), attrs, sign=False)


def _every_code(rng: random.Random, t: Templates) -> Iterator[bytes]:
    for code in range(256):
        auth = rng.randbytes(16)
        yield encode(code, code, auth, login_attrs(auth), sign=False)
        yield encode(code, code, auth, [], sign=False)
        if code not in (rp.AccessRequest, rp.StatusServer):  # signed, but not ours to answer
            yield encode(code, code, auth, login_attrs(auth))
            yield encode(code, code, auth, [])


def _signed_structure_errors(rng: random.Random, _: Templates) -> Iterator[bytes]:
    """Correctly signed, and still malformed: a NAS with the secret gets no answer either."""
    for extra in ([(USER_NAME, b"mallory")], [(STATE, b"s1"), (STATE, b"s2")],
                  [(USER_PASSWORD, bytes(16))], [(USER_PASSWORD, bytes(160))]):
        auth = rng.randbytes(16)
        yield encode(1, 5, auth, login_attrs(auth) + extra)
    for size in (0, 1, 15, 17, 129):
        auth = rng.randbytes(16)
        yield encode(1, 6, auth, [(USER_NAME, b"alice"), (USER_PASSWORD, bytes(size)),
                                  (NAS_IDENTIFIER, b"fuzz-nas")])


# --- driving the server -------------------------------------------------------------------


class Prober:
    """Status-Server probes on the client socket, each with a new ID and authenticator."""

    def __init__(self, sock: socket.socket, rng: random.Random) -> None:
        self.sock = sock
        self.rng = rng
        self.strays: list[bytes] = []

    def sync(self, address: tuple[str, int]) -> None:
        """Probe and wait for its answer; anything else that arrives first is a stray."""
        auth = self.rng.randbytes(16)
        ident = self.rng.randrange(256)
        self.sock.sendto(encode(rp.StatusServer, ident, auth, []), address)
        self.sock.settimeout(5)
        while True:
            data = self.sock.recv(8192)
            if data[1] == ident and data[0] == rp.AccessAccept and \
                    verify_reply(data, auth, SECRET):
                return
            self.strays.append(data)


def send_round(proxy: RunningProxy, datagrams: list[tuple[str, bytes]],
               sockets: dict[str, socket.socket], prober: Prober) -> None:
    address = (proxy.host, proxy.port)
    for start in range(0, len(datagrams), BATCH):
        for source, data in datagrams[start:start + BATCH]:
            sockets[source].sendto(data, address)
        prober.sync(address)


def dropped_total(metrics_port: int) -> Counter[str]:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("radius_proxy_dropped_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('reason="', 1)[1].split('"', 1)[0]] = int(float(value))
    return counts


def kernel_drops(port: int) -> int:
    """Datagrams the kernel discarded at the proxy's socket (/proc/net/udp, last column)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}"):
            return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")


def log_lines(proxy: RunningProxy) -> int:
    return len(proxy.log().splitlines())


@pytest.fixture
def client_sockets() -> Iterator[dict[str, socket.socket]]:
    sockets = {}
    for source in (CLIENT, STRANGER):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sockets[source] = sock
    yield sockets
    for sock in sockets.values():
        sock.close()


def test_fuzz_gets_no_answer_no_crash_no_growth(start_proxy,
                                                client_sockets: dict[str, socket.socket]) -> None:
    metrics_port = free_port(socket.SOCK_STREAM)
    proxy = start_proxy(clients=[{"name": "only", "networks": [f"{CLIENT}/32"],
                                  "secret": PROXY_SECRET}],
                        http={"listen": f"127.0.0.1:{metrics_port}"})
    datagrams = corpus(SEED)
    assert len(datagrams) > 2500
    from_stranger = sum(1 for source, _ in datagrams if source == STRANGER)
    prober = Prober(client_sockets[CLIENT], random.Random(SEED + 1))
    prober.sync((proxy.host, proxy.port))  # the probe itself is valid and answered
    lines_before = log_lines(proxy)

    started = time.monotonic()
    send_round(proxy, datagrams, client_sockets, prober)
    first, lost_first = dropped_total(metrics_port), kernel_drops(proxy.port)
    rss_first = rss_kib(proxy.process.pid)
    send_round(proxy, datagrams, client_sockets, prober)  # the same bytes again
    rss_second = rss_kib(proxy.process.pid)
    took = time.monotonic() - started
    second = dropped_total(metrics_port)

    assert proxy.process.alive(), proxy.log()[-2000:]
    assert prober.strays == [], f"{len(prober.strays)} answers to hostile datagrams"
    for sock in client_sockets.values():  # nothing late either
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(8192)
    assert proxy.events("auth") == [], "a hostile datagram reached the pipeline"

    lost = kernel_drops(proxy.port)
    counted = sum(second.values())
    assert counted == 2 * len(datagrams) - lost, (second, lost)
    assert sum(first.values()) == len(datagrams) - lost_first, (first, lost_first)
    assert second["unknown_client"] >= 2 * from_stranger - lost
    assert lost < len(datagrams) // 100, f"the kernel dropped {lost} datagrams"
    for reason in ("malformed", "unsupported_code", "bad_message_authenticator",
                   "missing_message_authenticator"):
        assert second[reason] > 0, (reason, second)

    drops_logged = proxy.events("packet_dropped")
    per_key = Counter((e["reason"], e["source"]) for e in drops_logged)
    assert len(drops_logged) <= 60, f"{len(drops_logged)} packet_dropped lines: not rate-limited"
    assert max(per_key.values()) <= 5, per_key
    written = log_lines(proxy) - lines_before
    assert written <= 100, f"{written} log lines for {2 * len(datagrams)} hostile datagrams"

    grown = rss_second - rss_first
    assert grown <= RSS_SLACK_KIB, f"RSS grew by {grown} KiB over an identical round"
    assert took < FUZZ_SECONDS, f"two rounds took {took:.1f} s"

    auth = random.Random(SEED + 2).randbytes(16)
    login = encode(rp.AccessRequest, 99, auth, login_attrs(auth))
    sock = client_sockets[CLIENT]
    sock.settimeout(10)
    sock.sendto(login, (proxy.host, proxy.port))
    reply = sock.recv(8192)
    assert reply[0] == rp.AccessAccept
    assert verify_reply(reply, auth, SECRET)


def test_corpus_is_seeded() -> None:
    """The same seed gives the same datagrams, so a failure can be replayed."""
    assert corpus(SEED) == corpus(SEED)
    assert corpus(SEED) != corpus(SEED + 1)
