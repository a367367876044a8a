"""Upstream RADIUS relay: FreeRADIUS through radius-proxy against the same FreeRADIUS directly.

    .venv/bin/python bench/upstream_radius.py [--seconds N] [--out docs/performance.md]

One run starts two servers on free loopback ports and always stops them:

- FreeRADIUS 3.2 (`freeradius -f`, threaded) with the private minimal config of
  `bench/core_throughput.py`: one user in its users file (Cleartext-Password, checked by PAP)
  whose Access-Accept carries a Class, Message-Authenticator required in requests and added
  to every reply;
- radius-proxy (`python -m radius_proxy serve`) with primary backend "radius" pointing at
  that FreeRADIUS (`[radius_upstream]` defaults otherwise: require_message_authenticator,
  pass_through ["Class"], timeout 3 s, 1 retry), identity source "file" without a mapping
  file and `no_secsign_id = "accept"`: no push, so what is measured is the proxy's RADIUS
  relay; logging at warning.

Before measuring, one right and one wrong password are sent both ways: the proxy must answer
Access-Accept with the upstream's Class, and Access-Reject to the wrong password (proof that
the password really goes upstream). Then, in rounds that alternate between (a) FreeRADIUS
directly and (b) through the proxy, with the same load generator and settings:

1. one request in flight (`bench/loadgen.py`, one worker, window 1);
2. a paced, open-loop rate (default 200 req/s, evenly spaced; a small sender here, since the
   shared generator is closed-loop);
3. full load (`bench/loadgen.py`, worker processes each keeping a window in flight).

The added latency of the proxy is (b) - (a) at p50 and p99 for 1 and 2; 3 gives
requests/s, latency under that load and CPU per request (from /proc/<pid>/stat) of both
servers. Results go to stdout and to the section "## Upstream RADIUS relay (issue: upstream
RADIUS)" of the output file (other sections kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import math
import os
import resource
import select
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report as perf_doc  # noqa: E402
from bench.core_throughput import (  # noqa: E402
    CLK_TCK,
    MAX_RATE,
    NAS_ID,
    PASSWORD,
    RADIUSD_CONF,
    SECRET,
    USER,
    Round,
    Server,
    Summary,
    busy_jiffies,
    fmt_rate,
    free_udp_port,
    machine,
    machine_busy,
    start_freeradius,
)
from bench.core_throughput import PROXY_TOML as CORE_PROXY_TOML  # noqa: E402
from bench.loadgen import (  # noqa: E402
    CODE_NAMES,
    AccessRequestFactory,
    LoadResult,
    percentile,
    run_load,
)

SECTION = "## Upstream RADIUS relay (issue: upstream RADIUS)"
CLASS = "bench-upstream-class"  # FreeRADIUS puts it in the Accept; the proxy must pass it on
DIRECT, PROXIED = "FreeRADIUS directly", "through radius-proxy"

# One secret for everything: Server.start's readiness check (core_throughput.status_server)
# speaks core_throughput.SECRET, and FreeRADIUS has one client entry for 127.0.0.1, which
# both the load generator and the proxy's upstream socket come from. The proxy still re-hides
# the password under its own fresh Request Authenticator.
PROXY_TOML = CORE_PROXY_TOML.replace('backend = "none"', """backend = "radius"

[radius_upstream]
servers = ["127.0.0.1:{upstream}"]
secret = "{secret}"
""".rstrip("\n"))


# --- servers -------------------------------------------------------------------------------

# core_throughput's FreeRADIUS config adds Message-Authenticator to Access replies only (in
# post-auth); FreeRADIUS 3.2.1 answers Status-Server without one (3.2.5+ adds it by itself),
# and the proxy, with require_message_authenticator, ignores such a reply: its start-up
# self-test, /readyz and dead-server probes would find the upstream down. So here the
# Status-Server reply gets one too. (Braces doubled: RADIUSD_CONF is a format string.)
_AUTHORIZE = """\
	authorize {{
		files
		pap
	}}
"""
if _AUTHORIZE not in RADIUSD_CONF:
    raise RuntimeError("bench/core_throughput.py's RADIUSD_CONF changed: update this script")
UPSTREAM_CONF = RADIUSD_CONF.replace(_AUTHORIZE, """\
	authorize {{
		files
		pap
		Autz-Type Status-Server {{
			update reply {{
				Message-Authenticator := 0x00
			}}
		}}
	}}
""")


def start_upstream(work: Path) -> Server:
    """FreeRADIUS as in core_throughput.start_freeradius, plus a Class in the user's Accept
    and Message-Authenticator in Status-Server replies."""
    return start_freeradius(work, UPSTREAM_CONF,
                            f'{USER}\tCleartext-Password := "{PASSWORD}"\n\tClass := "{CLASS}"\n')


def start_relay(work: Path, upstream: Server) -> Server:
    server = Server("radius-proxy", free_udp_port(), work / "proxy.log")
    config = work / "radius-proxy.toml"
    config.write_text(PROXY_TOML.format(port=server.port, upstream=upstream.port,
                                        secret=SECRET))
    server.start([sys.executable, "-m", "radius_proxy", "serve", "-c", str(config)],
                 ready=lambda: True)
    return server


def login(port: int, password: str) -> tuple[str, list[bytes]]:
    """One PAP Access-Request checked with pyrad: (reply code name, Class values)."""
    from pyrad import packet as rp

    from radius_proxy.protocol.dictionary import load_dictionary

    request = rp.AuthPacket(code=rp.AccessRequest, secret=SECRET.encode(),
                            dict=load_dictionary())
    request["User-Name"] = USER
    request["User-Password"] = request.PwCrypt(password)
    request["NAS-Identifier"] = NAS_ID
    request.add_message_authenticator()
    raw = request.RequestPacket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(raw, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
    reply = request.CreateReply(packet=data)
    if not request.VerifyReply(reply, data):
        return "bad Response Authenticator", []
    if reply.message_authenticator is None or not reply.verify_message_authenticator(
            original_authenticator=request.authenticator, original_code=rp.AccessRequest):
        return "missing or bad Message-Authenticator", []
    try:  # pyrad's get() looks up attribute numbers, not names
        classes = list(reply["Class"])
    except KeyError:
        classes = []
    return CODE_NAMES.get(reply.code, f"code {reply.code}"), classes


def check_paths(upstream: Server, proxy: Server) -> str:
    """Right password: Accept with the Class; wrong one: Reject; both ways, or raise."""
    want = ("Access-Accept", [CLASS.encode()])
    for server in (upstream, proxy):
        right, wrong = login(server.port, PASSWORD), login(server.port, PASSWORD + "x")
        if right != want or wrong[0] != "Access-Reject":
            raise RuntimeError(f"{server.name}: right password gave {right}, wrong one "
                               f"{wrong}; expected {want} and Access-Reject")
    return ("right password: Access-Accept carrying the upstream's Class, wrong password: "
            "Access-Reject, both directly and through the proxy")


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Window:
    """One measuring window: what the generator saw, and the readings at its edges."""

    load: LoadResult
    cpu: dict[str, float]  # server name -> CPU seconds (all threads) inside the window
    sys: dict[str, float]  # server name -> of which in the kernel (stime)
    busy: float  # fraction of all CPUs busy inside the window (anything on the machine)
    softirq: float
    drops: int  # at the socket of the server the load went to
    lag_ms: float = 0.0  # paced sender only: p99 lateness of a send against its schedule
    skipped: int = 0  # paced sender only: slots skipped because the sender fell behind
    steal: float = 0.0  # fraction of all CPUs' time the hypervisor gave to other guests


class Readings:
    """CPU of every server, machine load and socket drops, read at the window's edges."""

    def __init__(self, servers: Sequence[Server], target: Server) -> None:
        self.servers, self.target = servers, target
        self.marks: list[tuple[dict[str, tuple[float, float]], tuple[int, int, int], int,
                               int]] = []

    def mark(self) -> None:
        cpu = {s.name: user_sys(s) for s in self.servers}
        self.marks.append((cpu, busy_jiffies(), self.target.socket_drops(), steal_jiffies()))

    def window(self, load: LoadResult, lag_ms: float = 0.0) -> Window:
        (c0, (b0, i0, t0), d0, s0), (c1, (b1, i1, t1), d1, s1) = self.marks[0], self.marks[-1]
        total = max(1, t1 - t0)
        return Window(load, {k: sum(c1[k]) - sum(c0[k]) for k in c0},
                      {k: c1[k][1] - c0[k][1] for k in c0}, (b1 - b0) / total,
                      (i1 - i0) / total, d1 - d0, lag_ms, steal=(s1 - s0) / total)


def steal_jiffies() -> int:
    """Steal time of all CPUs from /proc/stat (a VM: time the hypervisor ran others).

    core_throughput.busy_jiffies counts it as busy; here it is also reported apart.
    """
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])


def user_sys(server: Server) -> tuple[float, float]:
    """(utime, stime) of the whole process (all threads) in seconds: core_throughput's
    process_cpu, split."""
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def closed_loop(servers: Sequence[Server], target: Server, factory: AccessRequestFactory, *,
                seconds: float, warmup: float, workers: int, window: int,
                max_rate: float) -> Window:
    readings = Readings(servers, target)
    load = run_load(("127.0.0.1", target.port), SECRET.encode(), factory, duration=seconds,
                    warmup=warmup, workers=workers, window=window,
                    max_requests=int(max_rate * (warmup + seconds)), timeout=2.0,
                    on_window_start=readings.mark, on_window_end=readings.mark)
    return readings.window(load)


def paced(servers: Sequence[Server], target: Server, factory: AccessRequestFactory, *,
          rate: float, seconds: float, warmup: float) -> Window:
    """Open loop: one request every 1/rate s whatever the replies do; bounded in count and
    time (warmup + seconds, then at most `timeout` for the last replies).

    A sender that falls more than one interval behind (descheduled on a busy machine) does
    not catch up in a burst, which would queue requests at the server and show up as its
    latency: the missed slots are skipped and counted, and the schedule restarts.
    """
    interval = 1.0 / rate
    timeout = min(2.0, 0.9 * 256 * interval)  # an Identifier comes round again after 256 sends
    count = math.ceil((warmup + seconds) * rate) + 1
    pool = [factory(i % 256) for i in range(count)]  # built before the clock starts
    secret = SECRET.encode()
    readings = Readings(servers, target)
    clock, md5 = time.monotonic, hashlib.md5
    sent_at = [0.0] * 256
    sent_raw = [b""] * 256
    pairs: list[tuple[float, float, int]] = []  # (sent, answered, reply code)
    lost_t: list[float] = []
    lag: list[float] = []
    sent = stray = bad = icmp = skipped = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", target.port))
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        gc_enabled = gc.isenabled()
        gc.disable()  # no collector pause inside the timed loop (bounded: `count` packets)
        cpu0 = cpu1 = 0.0  # the sender's CPU at the window's edges
        t0 = clock() + 0.05
        ws, we = t0 + warmup, t0 + warmup + seconds
        stop = we + timeout
        started = ended = False
        i = 0
        due = t0
        try:
            while True:
                now = clock()
                if not started and now >= ws:
                    readings.mark()
                    cpu0 = _own_cpu()
                    started = True
                if not ended and now >= we:
                    readings.mark()
                    cpu1 = _own_cpu()
                    ended = True
                sending = i < count and due < we
                if now >= stop or (not sending and ended and not any(sent_at)):
                    break
                wait = 0.01
                if sending:
                    if now >= due:
                        pid = i % 256
                        if sent_at[pid]:  # still unanswered after 256 intervals
                            lost_t.append(sent_at[pid])
                        try:
                            sock.send(pool[i])
                        except (BlockingIOError, ConnectionRefusedError):
                            icmp += 1
                            sent_at[pid] = 0.0
                            i, due = i + 1, due + interval
                            continue
                        t = clock()
                        sent_at[pid], sent_raw[pid] = t, pool[i]
                        if ws <= t < we:
                            sent += 1
                            lag.append(t - due)
                        i += 1
                        if t - due > interval:  # fell behind: skip the missed slots
                            if ws <= t < we:
                                skipped += int((t - due) / interval)
                            due = t + interval
                        else:
                            due += interval
                        continue
                    wait = due - now
                if ws <= now and not ended:
                    wait = min(wait, we - now)
                if not poller.poll(max(0.0, wait) * 1000.0):
                    continue
                while True:
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        icmp += 1
                        continue
                    t = clock()
                    pid = data[1] if len(data) >= 20 else -1
                    if pid < 0 or not sent_at[pid]:
                        stray += 1
                        continue
                    raw = sent_raw[pid]
                    if md5(data[:4] + raw[4:20] + data[20:] + secret,
                           usedforsecurity=False).digest() != data[4:20]:
                        bad += 1
                    pairs.append((sent_at[pid], t, data[0]))
                    sent_at[pid] = 0.0
        finally:
            if gc_enabled:
                gc.enable()
    if not ended:
        readings.mark()
        cpu1 = _own_cpu()
    lost_t += [t for t in sent_at if t]
    in_window = [(s, r, c) for s, r, c in pairs if ws <= s < we]
    load = LoadResult(
        target=("127.0.0.1", target.port), workers=1, window=0, seconds=seconds, sent=sent,
        answered=sum(1 for _, r, _ in pairs if ws <= r < we),
        lost=sum(1 for t in lost_t if ws <= t < we), stray=stray, bad_authenticator=bad,
        icmp_errors=icmp,
        codes=Counter(CODE_NAMES.get(c, f"code {c}") for _, _, c in in_window),
        latencies_ms=sorted((r - s) * 1000.0 for s, r, _ in in_window),
        generator_cpu_seconds=cpu1 - cpu0,
    )
    w = readings.window(load, lag_ms=percentile(sorted(lag), 0.99) * 1000.0)
    w.skipped = skipped
    return w


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def merged(loads: Sequence[LoadResult]) -> LoadResult:
    """Several windows as one (for Summary and the percentiles over all rounds)."""
    codes: Counter[str] = Counter()
    for x in loads:
        codes.update(x.codes)
    return LoadResult(
        target=loads[0].target, workers=loads[0].workers, window=loads[0].window,
        seconds=sum(x.seconds for x in loads), sent=sum(x.sent for x in loads),
        answered=sum(x.answered for x in loads), lost=sum(x.lost for x in loads),
        stray=sum(x.stray for x in loads),
        bad_authenticator=sum(x.bad_authenticator for x in loads),
        icmp_errors=sum(x.icmp_errors for x in loads), codes=codes,
        latencies_ms=sorted(v for x in loads for v in x.latencies_ms),
        generator_cpu_seconds=sum(x.generator_cpu_seconds for x in loads),
        pool_exhausted=any(x.pool_exhausted for x in loads),
    )


@dataclass
class Leg:
    """Everything measured along one path: (a) directly or (b) through the proxy."""

    name: str
    target: Server
    idle: list[Window] = field(default_factory=list)
    paced: list[Window] = field(default_factory=list)
    full: list[Window] = field(default_factory=list)

    def summary(self, rss: float) -> Summary:
        rounds = [Round(w.load, w.cpu[self.target.name], w.busy, w.softirq, w.drops)
                  for w in self.full]
        s = Summary(self.name, rounds, merged([w.load for w in self.idle]), rss,
                    os.cpu_count() or 1)
        p = merged([w.load for w in self.paced])
        rejects = sum(v for k, v in p.codes.items() if k != "Access-Accept")
        for count, what in ((rejects, "replies were not Access-Accept"),
                            (p.lost, "requests got no reply"),
                            (p.bad_authenticator, "replies had a wrong Response Authenticator"),
                            (p.stray, "stray replies (late or duplicated)")):
            if count:
                s.notes.append(f"paced runs: {count} {what}")
        return s

    def latency(self, kind: str, q: float) -> float:
        windows = self.idle if kind == "idle" else self.paced
        return merged([w.load for w in windows]).percentile(q)

    def cpu_us(self, kind: str, server: str, *, kernel: bool = False) -> float:
        """CPU of `server` per reply the generator got, over the windows of one kind
        (`kernel`: only the part spent in the kernel)."""
        windows = {"idle": self.idle, "paced": self.paced, "full": self.full}[kind]
        answered = sum(w.load.answered for w in windows)
        used = sum((w.sys if kernel else w.cpu).get(server, 0.0) for w in windows)
        return used / max(1, answered) * 1e6


# --- report ------------------------------------------------------------------------------


def fmt_ms(x: float) -> str:
    return f"{x:.3f}"


def added_rows(a: Leg, b: Leg, rate: float) -> list[tuple[str, str, str, str, str]]:
    """(what, a, b, b - a over all rounds pooled, b - a round by round)."""
    rows = []
    for kind, label in (("idle", "1 request in flight"),
                        ("paced", f"{fmt_rate(rate)} req/s, evenly spaced")):
        for q, qn in ((0.5, "p50"), (0.99, "p99")):
            x, y = a.latency(kind, q), b.latency(kind, q)
            rows.append((f"{label}, {qn}", fmt_ms(x), fmt_ms(y), f"**{y - x:+.3f}**",
                         per_round_added(a, b, kind, q)))
    return rows


def per_round_added(a: Leg, b: Leg, kind: str, q: float) -> str:
    wa = a.idle if kind == "idle" else a.paced
    wb = b.idle if kind == "idle" else b.paced
    return " / ".join(f"{y.load.percentile(q) - x.load.percentile(q):+.3f}"
                      for x, y in zip(wa, wb, strict=True))


def load_rows(a: Leg, b: Leg, sa: Summary, sb: Summary) -> list[tuple[str, str, str]]:
    fr, px = "FreeRADIUS", "radius-proxy"
    return [
        ("Access-Requests/s answered under full load (median of rounds)",
         f"**{fmt_rate(sa.rate)}**", f"**{fmt_rate(sb.rate)}**"),
        ("rounds", " / ".join(fmt_rate(r) for r in sa.rates),
         " / ".join(fmt_rate(r) for r in sb.rates)),
        ("latency under full load, p50 / p99 (ms)",
         f"{sa.latency(0.5):.2f} / {sa.latency(0.99):.2f}",
         f"{sb.latency(0.5):.2f} / {sb.latency(0.99):.2f}"),
        ("rate with 1 request in flight (req/s)", fmt_rate(sa.idle.rate),
         fmt_rate(sb.idle.rate)),
        ("radius-proxy CPU per request, full load (µs; of which in the kernel)", "n/a",
         f"**{b.cpu_us('full', px):.0f}** ({b.cpu_us('full', px, kernel=True):.0f})"),
        ("radius-proxy CPU per request, paced (µs; of which in the kernel)", "n/a",
         f"{b.cpu_us('paced', px):.0f} ({b.cpu_us('paced', px, kernel=True):.0f})"),
        ("FreeRADIUS CPU per request, full load / paced (µs)",
         f"{a.cpu_us('full', fr):.0f} / {a.cpu_us('paced', fr):.0f}",
         f"{b.cpu_us('full', fr):.0f} / {b.cpu_us('paced', fr):.0f}"),
        ("CPU under full load (cores): radius-proxy / FreeRADIUS / generator / irq+softirq",
         f"n/a / {_cores(a, fr):.2f} / {sa.generator_cores:.2f} / {sa.softirq_cores:.2f}",
         f"{_cores(b, px):.2f} / {_cores(b, fr):.2f} / {sb.generator_cores:.2f} / "
         f"{sb.softirq_cores:.2f}"),
        ("busy CPU charged to none of these (cores)", f"{_other(a, sa):.2f}",
         f"{_other(b, sb):.2f}"),
        ("whole machine busy under full load (% of all cores)",
         f"{100 * sa.machine_busy:.0f}", f"{100 * sb.machine_busy:.0f}"),
        ("lost requests / drops at the target's socket (full load)",
         f"{sa.lost} / {sa.socket_drops}", f"{sb.lost} / {sb.socket_drops}"),
        ("RSS of the server the load went to, after the run (MiB)",
         f"{sa.rss_mib:.0f}", f"{sb.rss_mib:.0f}"),
    ]


def _own_share(windows: Sequence[Window], nproc: int) -> float:
    """The servers' and the generator's CPU as a fraction of all CPUs over the windows."""
    used = sum(sum(w.cpu.values()) + w.load.generator_cpu_seconds for w in windows)
    return used / max(1e-9, nproc * sum(w.load.seconds for w in windows))


def _mean_steal(windows: Sequence[Window]) -> float:
    return statistics.mean(w.steal for w in windows)


def _cores(leg: Leg, server: str) -> float:
    return sum(w.cpu.get(server, 0.0) for w in leg.full) / max(
        1e-9, sum(w.load.seconds for w in leg.full))


def _other(leg: Leg, s: Summary) -> float:
    """Busy CPU that neither server, the generator nor interrupts account for."""
    charged = sum(_cores(leg, n) for n in ("radius-proxy", "FreeRADIUS"))
    return max(0.0, s.machine_busy * s.nproc - charged - s.generator_cores - s.softirq_cores)


def limits(a: Leg, b: Leg, sa: Summary, sb: Summary, nproc: int, rate: float) -> list[str]:
    """What bounds the figures, read from the readings rather than assumed."""
    out = []
    px_cores, px_us = _cores(b, "radius-proxy"), b.cpu_us("full", "radius-proxy")
    ceiling = 1e6 / px_us if px_us else math.nan
    busy = 100 * sb.machine_busy
    if px_cores >= 0.85:
        out.append(f"Through the proxy, its single event-loop thread is CPU-bound under full "
                   f"load ({px_cores:.2f} cores, {px_us:.0f} µs per request, about "
                   f"{fmt_rate(ceiling)}/s per core); FreeRADIUS behind it used only "
                   f"{_cores(b, 'FreeRADIUS'):.2f} cores, though more per request "
                   f"({b.cpu_us('full', 'FreeRADIUS'):.0f} against "
                   f"{a.cpu_us('full', 'FreeRADIUS'):.0f} µs directly): at the lower rate its "
                   "threads wake up for fewer requests each.")
    else:
        out.append(f"Through the proxy, radius-proxy used {px_cores:.2f} cores under full load, "
                   f"less than its one thread could ({px_us:.0f} µs per request would give "
                   f"about {fmt_rate(ceiling)}/s on a core of its own): the machine was "
                   f"{busy:.0f} % busy, so the proxy shared its cores with FreeRADIUS, the "
                   f"generator and other processes.")
    if sa.machine_busy >= 0.85:
        out.append(f"Directly, the {nproc} cores are saturated ({100 * sa.machine_busy:.0f} % "
                   f"busy: FreeRADIUS {_cores(a, 'FreeRADIUS'):.2f}, generator "
                   f"{sa.generator_cores:.2f}, irq+softirq {sa.softirq_cores:.2f}, charged to "
                   f"none {_other(a, sa):.2f}); FreeRADIUS's figure is a lower bound and the "
                   "throughput ratio flatters the proxy; CPU per request is the steadier "
                   "comparison.")
    else:
        out.append(f"Directly, the machine was {100 * sa.machine_busy:.0f} % busy; FreeRADIUS "
                   f"used {_cores(a, 'FreeRADIUS'):.2f} cores.")
    n_idle = len(merged([w.load for w in a.idle]).latencies_ms)
    n_paced = len(merged([w.load for w in a.paced]).latencies_ms)
    out.append(
        f"The added latency is a difference of two distributions measured a few seconds apart "
        f"(not a per-request difference): p50 from {fmt_rate(n_idle)} / {fmt_rate(n_paced)} "
        "samples per path "
        f"(1 in flight / paced) is steady to a few µs, but p99 rests on the slowest 1 % "
        f"and moves with whatever else the shared machine does in that second; the per-round "
        f"differences show the spread. At {fmt_rate(rate)} req/s the median reply through the "
        f"proxy ({b.latency('paced', 0.5):.2f} ms) takes a fraction of the "
        f"{1000 / rate:g} ms gap, so requests rarely overlap: the paced p50 is service time "
        "on processes that were idle, with their wake-ups (through the proxy: the proxy, a "
        "FreeRADIUS thread, the proxy again; directly: one), which is why it exceeds the "
        "back-to-back 1-in-flight figure.")
    spread = [w.load.percentile(0.99) for w in b.paced]
    out.append(
        f"The paced p99 through the proxy ranged {min(spread):.1f}..{max(spread):.1f} ms "
        f"between rounds, FreeRADIUS's alone "
        f"{min(w.load.percentile(0.99) for w in a.paced):.1f}.."
        f"{max(w.load.percentile(0.99) for w in a.paced):.1f} ms. radius-proxy is one Python "
        "thread: when it is descheduled (the machine is shared) or runs a full garbage "
        "collection (16 and 26 ms for the two seen with gc.callbacks in a separate run), every "
        "request waits, where FreeRADIUS's other threads go on. Take the p99 added latency "
        "as an order of magnitude on this machine; p50 is the figure to compare.")
    out.append(
        "Client and servers share the same cores and the loopback: the figures contain no "
        "network time and include the generator's own wake-up; on a real network the "
        "proxy's addition is the same CPU work plus one more LAN round trip to the upstream.")
    return out


def render(info: dict[str, str], a: Leg, b: Leg, sa: Summary, sb: Summary,
           args: argparse.Namespace, when: str, total: float, sanity: str,
           paced_busy: float) -> str:
    nproc = int(info["nproc"])
    lines = [
        SECTION,
        "",
        f"Measured {when} with `.venv/bin/python bench/upstream_radius.py --seconds "
        f"{args.seconds:g}` ({total:.0f} s in all): primary backend `radius`, the same "
        "FreeRADIUS (a) talked to directly and (b) through radius-proxy, same load generator "
        "and settings, rounds alternating between the two.",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}, Linux {info['kernel']}; "
        f"Python {info['python']}, pyrad {info['pyrad']}, radius-proxy {info['radius_proxy']} "
        f"({info['commit']}), FreeRADIUS {info['freeradius']}. Shared with other engineers' "
        f"tests: {info['busy_before']} % of all cores busy just before the run (load average "
        f"{info['loadavg']}), {100 * paced_busy:.0f} % during the paced windows, of which "
        f"{100 * _own_share(a.paced + b.paced, nproc):.0f} % were the two servers and the "
        "sender. It is a virtual machine: the hypervisor took (steal time) "
        f"{100 * _mean_steal(a.paced + b.paced):.1f} % of the CPUs' time in the paced "
        f"windows, {100 * _mean_steal(a.idle + b.idle):.1f} % with 1 in flight and "
        f"{100 * _mean_steal(a.full + b.full):.1f} % under full load.",
        "",
        "Added latency (ms, send to reply; (a) and (b) over all rounds pooled):",
        "",
        f"| | (a) {DIRECT} | (b) {PROXIED} | added by the proxy (b - a) | b - a per round |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in added_rows(a, b, args.rate)],
        "",
        "Throughput and CPU:",
        "",
        f"| | (a) {DIRECT} | (b) {PROXIED} |",
        "|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]} |" for r in load_rows(a, b, sa, sb)],
        "",
        f"**Throughput through the proxy / directly: {sb.rate / max(1e-9, sa.rate):.2f}.** "
        "For the proxy without a backend see \"Core throughput\"; the difference in CPU per "
        "request is the relay (encode, re-hide the password, a second socket, verify and "
        "decode the upstream's reply).",
        "",
        "What limits the figures:",
        "",
        *[f"- {t}" for t in limits(a, b, sa, sb, nproc, args.rate)],
        "",
        "Method:",
        "",
        "- FreeRADIUS: `freeradius -f` (threaded, pool 5..32) with the private minimal config "
        "of `bench/core_throughput.py` (one virtual server, no auth logging, "
        "`recv_buff = 4194304`); the user in the `users` file with `Cleartext-Password` "
        f"checked by `pap` and `Class := \"{CLASS}\"` in the reply; Message-Authenticator "
        "required in requests and added to every reply, Status-Server replies included "
        "(FreeRADIUS 3.2.1 does not add it there by itself, and the proxy, requiring it, then "
        "finds the upstream down in its start-up self-test, `/readyz` and dead-server "
        "probes).",
        "- radius-proxy: `python -m radius_proxy serve`, `[primary] backend = \"radius\"`, "
        "`[radius_upstream] servers` = that FreeRADIUS, everything else default "
        "(`require_message_authenticator = true`, `pass_through = [\"Class\"]`, "
        "`timeout_seconds = 3`, `retries = 1`); identity source `file` without a mapping "
        "file and `no_secsign_id = \"accept\"`, so no push: each request is checked, "
        "relayed upstream, and the upstream's Accept (with its Class) answered; "
        "`[secsign]` points at a closed loopback port, which only the start-up self-test "
        "tries; logging at `warning`; one shared secret (loopback, throwaway).",
        f"- Checked before measuring: {sanity}.",
        f"- 1 request in flight: `bench/loadgen.py`, one worker, window 1, {args.rounds} "
        f"rounds per path of {args.idle_seconds / args.rounds:g} s after 0.3 s warm-up.",
        f"- Paced: one request every {1000 / args.rate:g} ms (open loop, evenly spaced, not "
        f"waiting for replies; {args.rate:g} req/s), the same packets as `bench/loadgen.py`'s "
        f"AccessRequestFactory, from a small sender in this script; {args.rounds} rounds per "
        f"path of {args.paced_seconds / args.rounds:g} s after 0.5 s warm-up; every reply's "
        "Response Authenticator checked. A send more than one interval late (the sender "
        "descheduled) skips the missed slots instead of catching up in a burst: "
        f"{sum(w.skipped for w in a.paced)} / {sum(w.skipped for w in b.paced)} slots "
        "skipped (a / b); worst p99 lateness of a send in a round "
        f"{max(w.lag_ms for w in a.paced + b.paced):.2f} ms.",
        f"- Full load: `bench/loadgen.py`, {args.workers} worker processes, each with "
        f"{args.window} Access-Requests in flight ({args.workers * args.window} in all), "
        f"{args.rounds} rounds per path of {args.seconds / args.rounds:g} s after "
        f"{args.warmup:g} s warm-up; only replies inside the window count.",
        "- Requests: User-Name, User-Password, NAS-Identifier, Message-Authenticator; a fresh "
        "Request Authenticator every time, so no duplicate cache answers. Order: all "
        "1-in-flight rounds, then paced, then full load, (a) and (b) alternating in each.",
        "- CPU: utime + stime of each server from `/proc/<pid>/stat` (all threads) across "
        "each window, divided by the replies in the window; machine load from `/proc/stat` "
        "(includes everything else running).",
    ]
    problems = [f"{s.name}: {p}" for s in (sa, sb) for p in s.problems()]
    if problems:
        lines += ["", "Anomalies in this run:", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace only this benchmark's section of docs/performance.md."""
    perf_doc.write_section(path, SECTION, section)


def print_tables(a: Leg, b: Leg, sa: Summary, sb: Summary, rate: float) -> None:
    rows: list[tuple[str, ...]] = [("latency (ms)", "direct", "proxy", "added", "per round"),
                                   *added_rows(a, b, rate)]
    rows += [(r[0], r[1], r[2], "", "") for r in load_rows(a, b, sa, sb)]
    width = [max(len(r[i].replace("**", "")) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(f"{c.replace('**', ''):<{width[i]}}" if i == 0 else
                        f"{c.replace('**', ''):>{width[i]}}" for i, c in enumerate(r)))


def step(kind: str, leg: Leg, w: Window) -> None:
    print(f"{kind:<6} {leg.name:<21} {w.load.rate:8.0f}/s  p50 {w.load.percentile(0.5):7.3f} "
          f"p99 {w.load.percentile(0.99):7.3f} ms  machine {100 * w.busy:3.0f} % busy, "
          f"steal {100 * w.steal:.1f} %"
          + (f"  send lateness p99 {w.lag_ms:.2f} ms, {w.skipped} skipped" if kind == "paced"
             else ""), flush=True)


def _expected_log_line(line: str) -> bool:
    """The start-up self-test finding the (deliberately unreachable) SecSign ID server."""
    return "secsign" in line and ("backend_check" in line or "server_fallback" in line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=12.0,
                   help="measured seconds of full load per path, split into rounds (default 12)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per path and kind (default 3)")
    p.add_argument("--idle-seconds", type=float, default=6.0,
                   help="1-in-flight seconds per path, split into rounds (default 6)")
    p.add_argument("--paced-seconds", type=float, default=9.0,
                   help="paced seconds per path, split into rounds (default 9)")
    p.add_argument("--rate", type=float, default=200.0, help="the paced rate (default 200/s)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="warm-up per full-load round (default 1 s)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--window", type=int, default=64, help="requests in flight per worker")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if not (1 <= args.rate <= 5000 and args.rounds >= 1 and args.seconds > 0
            and args.idle_seconds > 0 and args.paced_seconds > 0):
        p.error("--rate must be 1..5000, --rounds >= 1 and the durations positive")

    began = time.monotonic()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    before = machine_busy(0.5)
    info["busy_before"] = f"{100 * before:.0f}"
    info["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if before > 0.2:
        print(f"WARNING: the machine is already {100 * before:.0f} % busy; the figures will "
              "be low and noisy", file=sys.stderr)
    factory = AccessRequestFactory(SECRET.encode(), PASSWORD,
                                   [("User-Name", USER), ("NAS-Identifier", NAS_ID)])
    servers: list[Server] = []
    with perf_doc.run_directory("bench-upstream-", args.keep) as work:
        try:
            upstream = start_upstream(work)
            servers.append(upstream)
            proxy = start_relay(work, upstream)
            servers.append(proxy)
            print(f"FreeRADIUS pid {upstream.pid} on :{upstream.port}, radius-proxy pid "
                  f"{proxy.pid} on :{proxy.port} -> :{upstream.port}", flush=True)
            sanity = check_paths(upstream, proxy)
            print(f"checked: {sanity}", flush=True)
            legs = [Leg(DIRECT, upstream), Leg(PROXIED, proxy)]
            for _ in range(args.rounds):
                for leg in legs:
                    w = closed_loop(servers, leg.target, factory,
                                    seconds=args.idle_seconds / args.rounds, warmup=0.3, workers=1,
                                    window=1, max_rate=15_000)
                    leg.idle.append(w)
                    step("1-in", leg, w)
            for _ in range(args.rounds):
                for leg in legs:
                    w = paced(servers, leg.target, factory, rate=args.rate,
                              seconds=args.paced_seconds / args.rounds, warmup=0.5)
                    leg.paced.append(w)
                    step("paced", leg, w)
            cap = {leg.name: float(MAX_RATE) for leg in legs}  # pool sizes; later rounds adapt
            for _ in range(args.rounds):
                for leg in legs:
                    w = closed_loop(servers, leg.target, factory,
                                    seconds=args.seconds / args.rounds, warmup=args.warmup,
                                    workers=args.workers, window=args.window,
                                    max_rate=cap[leg.name])
                    leg.full.append(w)
                    cap[leg.name] = min(MAX_RATE, max(5000.0, 3 * w.load.rate))
                    step("full", leg, w)
            rss = {s.name: s.rss_mib() for s in servers}
        finally:
            for s in reversed(servers):
                s.stop()
            proxy_log = servers[1].log.read_text(errors="replace") if len(servers) > 1 else ""

    a, b = legs
    sa, sb = a.summary(rss[upstream.name]), b.summary(rss[proxy.name])
    logged = [ln for ln in proxy_log.splitlines() if ln.strip() and not _expected_log_line(ln)]
    if logged:
        sb.notes.append(f"the proxy logged {len(logged)} line(s) at warning or above, first: "
                        f"`{logged[0][:200]}`")
    paced_busy = statistics.mean(w.busy for w in a.paced + b.paced)
    total = time.monotonic() - began
    print()
    print_tables(a, b, sa, sb, args.rate)
    for summary in (sa, sb):
        for problem in summary.problems():
            print(f"WARNING {summary.name}: {problem}")
    if args.out:
        out = Path(args.out)
        write_section(out, render(info, a, b, sa, sb, args, when, total, sanity, paced_busy))
        with contextlib.suppress(ValueError):
            out = out.resolve().relative_to(Path.cwd())
        print(f"wrote section {SECTION!r} of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
