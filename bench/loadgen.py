"""A closed-loop UDP load generator for RADIUS servers, shared by the benchmarks.

`run_load(target, secret, factory, ...)` forks `workers` processes. Each builds a pool of
requests first (untimed), then keeps `window` requests in flight on one non-blocking UDP
socket: a reply, matched by its Identifier, frees the ID and the next request goes out.
Every request is a fresh packet (new Request Authenticator), so a server's duplicate cache
(RFC 5080) never answers from memory. The run is bounded in time (`warmup + duration`) and
in count (the pool); it stops by itself.

Only replies inside the measuring window [warmup, warmup + duration) count. The parent can
take readings of its own (server CPU, counters) at the window's edges through
`on_window_start` and `on_window_end`.

A packet factory is any picklable-or-forkable callable `factory(packet_id) -> bytes` that
returns a complete request with that Identifier and a fresh authenticator; it runs in the
worker while the pool is built. `AccessRequestFactory` makes PAP Access-Requests.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import multiprocessing as mp
import os
import resource
import select
import socket
import struct
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PacketFactory = Callable[[int], bytes]

ACCESS_REQUEST = 1
USER_PASSWORD = 2
MESSAGE_AUTHENTICATOR = 80
CODE_NAMES = {2: "Access-Accept", 3: "Access-Reject", 11: "Access-Challenge"}
_IDS = 256


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 section 5.2 (kept here so the generator does not use the code it measures)."""
    padded = password + b"\x00" * (16 if not password else -len(password) % 16)
    out = bytearray()
    vector = authenticator
    for i in range(0, len(padded), 16):
        pad = hashlib.md5(secret + vector, usedforsecurity=False).digest()
        block = (int.from_bytes(padded[i:i + 16], "big") ^ int.from_bytes(pad, "big"))
        vector = block.to_bytes(16, "big")
        out += vector
    return bytes(out)


class AccessRequestFactory:
    """PAP Access-Requests: pyrad builds and checks a template, each call re-signs it.

    pyrad needs about 60 us per packet, too slow for pools of 100 000s; so the template's
    attributes are taken as pyrad encoded them, and each call only draws a new Request
    Authenticator, hides the password under it and computes the Message-Authenticator
    (about 5 us). The constructor decodes one result with pyrad to prove the re-signing.
    """

    def __init__(self, secret: bytes, password: str, attributes: Sequence[tuple[str, Any]],
                 *, dictionary: Any = None, message_authenticator: bool = True) -> None:
        from pyrad import packet as rp

        if dictionary is None:
            from radius_proxy.protocol.dictionary import load_dictionary

            dictionary = load_dictionary()
        template = rp.AuthPacket(code=rp.AccessRequest, id=0, secret=secret, dict=dictionary,
                                 authenticator=bytes(16))
        for name, value in attributes:
            template.AddAttribute(name, value)
        raw = template.RequestPacket()
        body = bytearray()
        pos = 20
        while pos < len(raw):
            kind, length = raw[pos], raw[pos + 1]
            if kind not in (USER_PASSWORD, MESSAGE_AUTHENTICATOR):
                body += raw[pos:pos + length]
            pos += length
        self.secret = secret
        self.password = password.encode("utf-8")
        self.body = bytes(body)
        self.message_authenticator = message_authenticator
        self._check(rp, dictionary, password)

    def __call__(self, packet_id: int) -> bytes:
        authenticator = os.urandom(16)
        hidden = hide_password(self.password, self.secret, authenticator)
        tail = self.body + bytes((USER_PASSWORD, 2 + len(hidden))) + hidden
        if not self.message_authenticator:
            header = struct.pack("!BBH16s", ACCESS_REQUEST, packet_id, 20 + len(tail),
                                 authenticator)
            return header + tail
        header = struct.pack("!BBH16s", ACCESS_REQUEST, packet_id, 38 + len(tail),
                             authenticator)
        unsigned = header + b"\x50\x12" + bytes(16) + tail
        mac = hmac.digest(self.secret, unsigned, "md5")
        return header + b"\x50\x12" + mac + tail

    def _check(self, rp: Any, dictionary: Any, password: str) -> None:
        raw = self(123)
        pkt = rp.AuthPacket(packet=raw, secret=self.secret, dict=dictionary)
        if pkt.id != 123 or pkt.PwDecrypt(pkt[USER_PASSWORD][0]) != password:
            raise AssertionError("re-signed request does not decode to the template")
        if self.message_authenticator and not pkt.verify_message_authenticator():
            raise AssertionError("re-signed request has a bad Message-Authenticator")


@dataclass
class LoadResult:
    """What one run measured; times in seconds, latencies in milliseconds."""

    target: tuple[str, int]
    workers: int
    window: int
    seconds: float  # length of the measuring window actually used
    sent: int  # requests sent inside the window
    answered: int  # replies received inside the window
    lost: int  # requests sent inside the window that timed out
    stray: int  # replies to no outstanding request (late, duplicated)
    bad_authenticator: int  # sampled replies whose Response Authenticator was wrong
    icmp_errors: int  # ECONNREFUSED on the socket: nothing listening
    codes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # sorted
    generator_cpu_seconds: float = 0.0
    pool_exhausted: bool = False

    @property
    def rate(self) -> float:
        """Replies per second inside the window."""
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency at quantile q (0..1) of the replies to requests sent inside the window."""
        return percentile(self.latencies_ms, q)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank quantile q (0..1) of sorted values; NaN when there are none."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_load(target: tuple[str, int], secret: bytes, factory: PacketFactory, *,
             duration: float, warmup: float = 1.0, workers: int = 2, window: int = 64,
             max_requests: int = 200_000, timeout: float = 2.0, verify_every: int = 16,
             on_window_start: Callable[[], None] | None = None,
             on_window_end: Callable[[], None] | None = None) -> LoadResult:
    """Drive target for warmup + duration seconds; count what came back in the window.

    `window` is per worker (at most 256, the Identifier space of one socket);
    `max_requests` bounds the pools of all workers together; every `verify_every`-th reply
    has its Response Authenticator checked against `secret` (0: none).
    """
    if not 1 <= window <= _IDS:
        raise ValueError("window must be 1..256 (one socket's Identifier space)")
    ctx = mp.get_context("fork")
    per_worker = max(window, math.ceil(max_requests / workers))
    pipes = []
    procs = []
    for index in range(workers):
        parent, child = ctx.Pipe()
        args = (child, target, secret, factory, window, per_worker, timeout, verify_every)
        proc = ctx.Process(target=_worker, args=args, name=f"loadgen-{index}", daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    try:
        for conn in pipes:
            if not conn.poll(120):
                raise RuntimeError("a load generator worker did not get ready")
            ready = conn.recv()
            if ready != "ready":
                raise RuntimeError(f"load generator worker failed: {ready}")
        t0 = time.monotonic() + 0.05
        ws, we = t0 + warmup, t0 + warmup + duration
        for conn in pipes:
            conn.send((t0, ws, we))
        _sleep_until(ws)
        if on_window_start:
            on_window_start()
        _sleep_until(we)
        if on_window_end:
            on_window_end()
        parts = []
        for conn in pipes:
            if not conn.poll(timeout + 30):
                raise RuntimeError("a load generator worker did not report")
            parts.append(conn.recv())
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return _combine(target, workers, window, ws, we, parts)


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _combine(target: tuple[str, int], workers: int, window: int, ws: float, we: float,
             parts: list[dict[str, Any]]) -> LoadResult:
    for part in parts:
        if "error" in part:
            raise RuntimeError(f"load generator worker failed: {part['error']}")
    exhausted = [p["exhausted_at"] for p in parts if p["exhausted_at"] is not None]
    end = min([we, *exhausted])
    answered = 0
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    for p in parts:
        send_t, recv_t, code = p["send_t"], p["recv_t"], p["codes"]
        for s, r, c in zip(send_t, recv_t, code, strict=True):
            if ws <= r < end:
                answered += 1
                codes[CODE_NAMES.get(c, f"code {c}")] += 1
            if ws <= s < end:
                latencies.append((r - s) * 1000.0)
    latencies.sort()
    return LoadResult(
        target=target, workers=workers, window=window, seconds=max(0.0, end - ws),
        sent=sum(p["sent"] for p in parts), answered=answered,
        lost=sum(sum(1 for s in p["lost_t"] if ws <= s < end) for p in parts),
        stray=sum(p["stray"] for p in parts),
        bad_authenticator=sum(p["bad_authenticator"] for p in parts),
        icmp_errors=sum(p["icmp_errors"] for p in parts), codes=codes,
        latencies_ms=latencies, generator_cpu_seconds=sum(p["cpu"] for p in parts),
        pool_exhausted=bool(exhausted),
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(conn: Any, target: tuple[str, int], secret: bytes, factory: PacketFactory,
            window: int, per_worker: int, timeout: float, verify_every: int) -> None:
    try:
        per_id = math.ceil(per_worker / _IDS)
        pool = [[factory(i) for _ in range(per_id)] for i in range(_IDS)]
        sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET,
                             socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.connect(target)
        sock.setblocking(False)
        conn.send("ready")
        t0, ws, we = conn.recv()
        result = _drive(sock, pool, secret, window, timeout, verify_every, t0, ws, we)
        sock.close()
        conn.send(result)
    except Exception as exc:  # reported to the parent, which raises
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _drive(sock: socket.socket, pool: list[list[bytes]], secret: bytes, window: int,
           timeout: float, verify_every: int, t0: float, ws: float,
           we: float) -> dict[str, Any]:
    """The timed loop: keep `window` requests in flight until `we`."""
    clock = time.monotonic
    send, recv = sock.send, sock.recv
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    md5 = hashlib.md5
    sent_at = [0.0] * _IDS  # 0.0: the ID is free
    sent_raw: list[bytes] = [b""] * _IDS
    cursor = [0] * _IDS
    free = deque(range(_IDS))
    send_t, recv_t, lost_t = array("d"), array("d"), array("d")
    codes = array("B")
    in_flight = sent = stray = bad = icmp = replies = 0
    exhausted_at: float | None = None
    cpu0: float | None = None
    next_scan = t0
    _sleep_until(t0)
    while True:
        now = clock()
        if now >= we:
            break
        if now >= next_scan:
            next_scan = now + 0.05
            if cpu0 is None and now >= ws:
                cpu0 = _cpu_seconds()
            for pid in range(_IDS):
                t = sent_at[pid]
                if t and now - t > timeout:
                    lost_t.append(t)
                    sent_at[pid] = 0.0
                    free.append(pid)
                    in_flight -= 1
        while in_flight < window and free and exhausted_at is None:
            pid = free.popleft()
            k = cursor[pid]
            if k >= len(pool[pid]):
                exhausted_at = clock()
                free.appendleft(pid)
                break
            raw = pool[pid][k]
            try:
                send(raw)
            except BlockingIOError:
                free.appendleft(pid)
                break
            except ConnectionRefusedError:
                icmp += 1
                free.appendleft(pid)
                break
            t = clock()
            cursor[pid] = k + 1
            sent_at[pid] = t
            sent_raw[pid] = raw
            in_flight += 1
            if ws <= t < we:
                sent += 1
        got = 0
        while True:
            try:
                data = recv(4096)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                icmp += 1
                continue
            t = clock()
            if len(data) < 20:
                stray += 1
                continue
            pid = data[1]
            s = sent_at[pid]
            if not s:
                stray += 1
                continue
            got += 1
            replies += 1
            if verify_every and replies % verify_every == 0:
                digest = md5(data[:4] + sent_raw[pid][4:20] + data[20:] + secret,
                             usedforsecurity=False).digest()
                if digest != data[4:20]:
                    bad += 1
            sent_at[pid] = 0.0
            free.append(pid)
            in_flight -= 1
            send_t.append(s)
            recv_t.append(t)
            codes.append(data[0])
        if not got:
            poller.poll(2)
    cpu = _cpu_seconds() - cpu0 if cpu0 is not None else 0.0
    return {"send_t": send_t, "recv_t": recv_t, "codes": codes, "lost_t": lost_t, "sent": sent,
            "stray": stray, "bad_authenticator": bad, "icmp_errors": icmp, "cpu": cpu,
            "exhausted_at": exhausted_at}
