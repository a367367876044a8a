"""The wait at scale: 10 000 logins pending on their phones at once, in one proxy process.

    .venv/bin/python bench/wait_at_scale.py [--logins N] [--poll-intervals 2,10] [--profile]
                                            [--out docs/performance.md]

For each poll interval (`secsign.poll_interval_seconds`; default: 2, the product default,
and 10) one run starts the SecSign ID simulator (own process, rule `*=manual`: nobody
answers until told to) and radius-proxy (primary `none`, identity `username`, so every login
is one push and nothing else; REST to the simulator; `max_connections` 32 and `max_pending`
10 000 as by default; logging at info as JSON to a file), and always stops both. Then:

1. a NAS process sends `--logins` Access-Requests (default 10 000), each for a different user
   from a different Calling-Station-Id, from 40 UDP sockets x 250 Identifiers, at
   `--rate` per second (default 1 000), and keeps every one outstanding (no retransmits);
2. a prober process sends a Status-Server every 20 ms from the first second to the last and
   times each answer (1 s without one: lost);
3. once the simulator holds every login as a waiting session (or a bound passes), they all
   wait `--hold` seconds (default 15); the proxy's RSS, threads and CPU are sampled
   throughout from /proc;
4. every waiting session is approved through the simulator's control API (one POST each,
   4 connections), and the clock runs until every NAS request has its answer (bounded:
   `--drain` seconds, default 90).

Reported against the issue's targets: RSS at most 300 MB; Status-Server p99 at most 50 ms
throughout; every login answered with Access-Accept within 60 s of the approvals. Also: the
state requests per second the proxy achieved (so the effective poll interval), CPU, and the
simulator's share. The result replaces the section "## The wait at scale" of the output file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import multiprocessing as mp
import os
import select
import socket
import sys
import threading
import time
from array import array
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.core_throughput import (  # noqa: E402
    SECRET,
    busy_jiffies,
    free_udp_port,
    machine_busy,
    process_cpu,
    verdict,
)
from bench.pipeline_throughput import (  # noqa: E402
    DistinctUsers,
    PySpy,
    SimulatorProcess,
    audit_lines,
    fmt,
    log_problems,
    machine_info,
    machine_line,
    now_utc,
    pct,
    print_profile,
    proc_rss_mib,
    proc_status,
    proxy_toml,
    start_proxy,
    status_server_packet,
)
from bench.report import run_directory, write_section  # noqa: E402

SECTION = "## The wait at scale"
TARGET_RSS_MB = 300.0
TARGET_PROBE_P99_MS = 50.0
TARGET_ACCEPT_SECONDS = 60.0
SOCKETS, IDS = 40, 250
PROBE_EVERY = 0.020
PROBE_TIMEOUT = 1.0
HARD_LIMIT = 600.0  # no child process of this bench lives longer than this


# --- the NAS side: many sockets, every request outstanding until its answer ---------------


def nas_process(conn: Any, target: tuple[str, int], secret: bytes, logins: int, rate: float,
                users: list[tuple[str, str]]) -> None:
    """Send `logins` requests at `rate`/s from SOCKETS x IDS; record every answer.

    Ends when every request has an answer, when the parent says "stop", or at HARD_LIMIT.
    """
    try:
        factory = DistinctUsers(secret, users)
        per_socket = math.ceil(logins / SOCKETS)
        socks, order, raw = [], [], {}
        for _ in range(SOCKETS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect(target)
            sock.setblocking(False)
            socks.append(sock)
        for i in range(per_socket):  # interleaved: socket 0 id 0, socket 1 id 0, ...
            for s in range(SOCKETS):
                index = i * SOCKETS + s
                if index < logins:
                    order.append((s, i))
                    raw[(s, i)] = factory.packet(i, index)
        by_fd = {sock.fileno(): s for s, sock in enumerate(socks)}
        poller = select.poll()
        for sock in socks:
            poller.register(sock.fileno(), select.POLLIN)
        sent_at = array("d", [0.0] * (SOCKETS * IDS))
        got_at = array("d", [0.0] * (SOCKETS * IDS))
        codes = array("B", [0] * (SOCKETS * IDS))
        bad = stray = 0
        conn.send("ready")
        t0 = conn.recv()
        clock = time.monotonic
        cursor = answered = 0
        while answered < len(order) and clock() < t0 + HARD_LIMIT:
            now = clock()
            due = min(len(order), int((now - t0) * rate) + 1)
            while cursor < due:
                s, i = order[cursor]
                try:
                    socks[s].send(raw[(s, i)])
                except BlockingIOError:
                    break
                sent_at[s * IDS + i] = clock()
                cursor += 1
            for fd, _ in poller.poll(5):
                s = by_fd[fd]
                while True:
                    try:
                        data = socks[s].recv(4096)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    t = clock()
                    if len(data) < 20 or data[1] >= IDS or not sent_at[s * IDS + data[1]] \
                            or got_at[s * IDS + data[1]]:
                        stray += 1
                        continue
                    request = raw[(s, data[1])]
                    digest = hashlib.md5(data[:4] + request[4:20] + data[20:] + secret,
                                         usedforsecurity=False).digest()
                    if digest != data[4:20]:
                        bad += 1
                        continue
                    got_at[s * IDS + data[1]] = t
                    codes[s * IDS + data[1]] = data[0]
                    answered += 1
            if conn.poll() and conn.recv() == "stop":
                break
        conn.send({"sent_at": sent_at, "got_at": got_at, "codes": codes, "sent": cursor,
                   "answered": answered, "bad": bad, "stray": stray})
    except Exception as exc:  # reported to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def prober_process(conn: Any, target: tuple[str, int], secret: bytes) -> None:
    """A Status-Server every PROBE_EVERY s until "stop" (or HARD_LIMIT); (send, rtt) pairs."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(target)
        sock.setblocking(False)
        clock = time.monotonic
        send_t = array("d")
        rtt = array("d")  # -1: no answer (yet)
        outstanding: dict[int, int] = {}  # packet id -> index
        conn.send("ready")
        t0 = clock()
        next_at, seq = t0, 0
        while clock() < t0 + HARD_LIMIT:
            now = clock()
            if now >= next_at:
                pid = seq % 256
                stale = outstanding.pop(pid, None)
                if stale is not None and rtt[stale] < 0:
                    rtt[stale] = math.inf
                with_id = status_server_packet(pid, secret)
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    sock.send(with_id)
                outstanding[pid] = len(send_t)
                send_t.append(clock())
                rtt.append(-1.0)
                seq += 1
                next_at += PROBE_EVERY
                if next_at < now:  # never burst to catch up
                    next_at = now + PROBE_EVERY
            ready = select.select([sock], [], [], max(0.0, min(0.005, next_at - clock())))[0]
            if ready:
                while True:
                    try:
                        data = sock.recv(4096)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    index = outstanding.pop(data[1], None) if len(data) >= 20 else None
                    if index is not None:
                        rtt[index] = (clock() - send_t[index]) * 1000
            for pid, index in list(outstanding.items()):
                if clock() - send_t[index] > PROBE_TIMEOUT:
                    rtt[index] = math.inf
                    del outstanding[pid]
            if conn.poll() and conn.recv() == "stop":
                break
        for index in outstanding.values():
            rtt[index] = math.inf
        conn.send({"send_t": send_t, "rtt": rtt})
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


class Child:
    """A forked helper process talking over a pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            self.proc.kill()
            raise RuntimeError(f"{target.__name__} did not get ready")

    def result(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            self.proc.kill()
            raise RuntimeError("a helper process did not report")
        out = self.conn.recv()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        if "error" in out:
            raise RuntimeError(out["error"])
        return dict(out)


class Sampler(threading.Thread):
    """RSS (MiB), threads and CPU of some PIDs every `every` seconds, until stopped."""

    def __init__(self, pids: dict[str, int], every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, dict[str, tuple[float, int, float]]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + HARD_LIMIT
        while not self._halt.is_set() and time.monotonic() < end:
            row = {}
            for name, pid in self.pids.items():
                try:
                    row[name] = (proc_rss_mib(pid), proc_status(pid, "Threads"),
                                 process_cpu(pid))
                except OSError:
                    continue
            self.samples.append((time.monotonic(), row))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def peak(self, name: str) -> float:
        return max((row[name][0] for _, row in self.samples if name in row), default=math.nan)

    def cpu_between(self, name: str, t0: float, t1: float) -> float:
        """CPU seconds used between t0 and t1 (nearest samples)."""
        rows = [(t, row[name][2]) for t, row in self.samples if name in row]
        before = [c for t, c in rows if t <= t0] or [rows[0][1]]
        after = [c for t, c in rows if t >= t1] or [rows[-1][1]]
        return after[0] - before[-1]


# --- one run -------------------------------------------------------------------------------


def approve_all(sim: SimulatorProcess, connections: int = 4) -> tuple[int, int]:
    """POST approve for every waiting session; (approved, refused)."""
    sessions = sim.request("GET", "/simulator/api/sessions", timeout=120)
    ids = [s["id"] for s in sessions if s["state"] in (1, 7)]
    chunks = [ids[i::connections] for i in range(connections)]

    def run(chunk: list[str]) -> tuple[int, int]:
        ok = refused = 0
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
        try:
            for sid in chunk:
                conn.request("POST", f"/simulator/api/sessions/{sid}/approve", body=b"{}",
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok += response.status == 200
                refused += response.status != 200
        finally:
            conn.close()
        return ok, refused

    with ThreadPoolExecutor(connections) as pool:
        results = list(pool.map(run, chunks))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def one_run(args: argparse.Namespace, work: Path, interval: float) -> dict[str, Any]:
    work = work / f"poll-{interval:g}"
    work.mkdir()
    r: dict[str, Any] = {"interval": interval}
    sim = SimulatorProcess(work, ["*=manual"], lifetime=600.0)
    proxy = None
    sampler = nas = prober = spy = None
    log_file = work / "proxy.log"
    try:
        proxy = start_proxy(work, proxy_toml(
            port=free_udp_port(), simulator_url=sim.url, log_file=log_file, ldap_url=None,
            poll_interval=interval, push_timeout=290.0, nas_timeout=300.0,
            identity="username"))
        target = ("127.0.0.1", proxy.port)
        print(f"[poll {interval:g} s] proxy pid {proxy.pid} :{proxy.port}, simulator pid "
              f"{sim.pid} :{sim.port}", flush=True)
        users = [(f"wait{i:05d}", "unused") for i in range(args.logins)]
        nas = Child(nas_process, target, SECRET.encode(), args.logins, args.rate, users)
        prober = Child(prober_process, target, SECRET.encode())
        sampler = Sampler({"proxy": proxy.pid, "simulator": sim.pid})  # after the forks
        sampler.start()
        marks = {"probe_start": time.monotonic()}
        time.sleep(2.0)  # idle baseline of the probes
        stats0 = sim.stats()
        drops0 = proxy.socket_drops()
        marks["fill"] = time.monotonic()
        nas.conn.send(marks["fill"])
        # wait for every login to be a waiting session at the simulator (bounded)
        fill_bound = marks["fill"] + args.logins / args.rate + args.fill_slack
        waiting = 0
        while time.monotonic() < fill_bound:
            time.sleep(1.0)
            waiting = sim.stats()["waiting"]
            print(f"  {time.monotonic() - marks['fill']:5.1f} s: {waiting} waiting, proxy RSS "
                  f"{proc_rss_mib(proxy.pid):.0f} MiB", flush=True)
            if waiting >= args.logins:
                break
        marks["pending"] = time.monotonic()
        r["all_pending"] = waiting >= args.logins
        r["waiting_at_hold"] = waiting
        stats_h0 = sim.stats()
        busy0 = busy_jiffies()
        if args.profile:
            spy = PySpy(proxy.pid, args.hold, work / "proxy.pyspy.txt", rate=200)
        time.sleep(args.hold)
        stats_h1 = sim.stats()
        busy1 = busy_jiffies()
        r["machine_busy_hold"] = (busy1[0] - busy0[0]) / max(1, busy1[2] - busy0[2])
        marks["approve"] = time.monotonic()
        approved, refused = approve_all(sim)
        marks["approved"] = time.monotonic()
        print(f"  approved {approved} sessions in {marks['approved'] - marks['approve']:.1f} s "
              f"({refused} refused)", flush=True)
        out = None
        deadline = marks["approve"] + args.drain
        while out is None and time.monotonic() < deadline:
            if nas.conn.poll(0.5):
                out = nas.conn.recv()
        if out is None:
            nas.conn.send("stop")
            out = nas.result(30)
        elif "error" in out:
            raise RuntimeError(out["error"])
        marks["done"] = time.monotonic()
        prober.conn.send("stop")
        probes = prober.result(30)
        stats_end = sim.stats()
        r["drops"] = proxy.socket_drops() - drops0
        r["threads_peak"] = max((row["proxy"][1] for _, row in sampler.samples
                                 if "proxy" in row), default=0)
        if spy is not None:
            spy.wait()
            r["profile"] = print_profile(f"proxy profile while waiting (poll {interval:g} s)",
                                         spy)
        r.update(marks=marks, out=out, probes=probes, approved=approved, refused=refused,
                 stats0=stats0, stats_h0=stats_h0, stats_h1=stats_h1, stats_end=stats_end)
    finally:  # servers first: nothing here may keep them from being stopped
        for stop in ([proxy.stop] if proxy is not None else []) + [sim.stop]:
            try:
                stop()
            except Exception as exc:  # report, and go on stopping the others
                print(f"stopping a server failed: {exc}", file=sys.stderr)
        for child in (nas, prober):
            if child is not None and child.proc.is_alive():
                child.proc.kill()
        if sampler is not None:
            sampler.stop()
    r["sampler"] = sampler
    audits = audit_lines(log_file)
    r["outcomes"] = Counter(f"{e.get('outcome')}/{e.get('reason')}" for e in audits)
    r["problems"] = log_problems(log_file)
    return r


# --- what an HTTP exchange costs the client -------------------------------------------------


def http_client_costs(work: Path, calls: int = 3000) -> list[tuple[str, float, float]]:
    """CPU per state request of HTTP clients against the simulator, in this process, from
    asyncio with 32 requests in flight: the proxy's own HTTP/1.1 transport on the event loop
    (`aio_transport.py`), its blocking requests transport on a 32-thread pool (`transport.py`, the
    former default), and a minimal HTTP/1.1 keep-alive client on asyncio streams (32
    connections) as the floor. (name, client CPU µs per call, calls per second)."""
    import asyncio
    import base64
    import resource

    from radius_proxy.backends.secsign.transport import HttpRequest, RequestsTransport

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    work = work / "http-clients"
    work.mkdir()
    sim = SimulatorProcess(work, ["*=manual"], lifetime=600.0)
    out: list[tuple[str, float, float]] = []
    try:
        from bench.pipeline_throughput import PIN_ACCOUNT, PIN_PASSWORD

        auth = "Basic " + base64.b64encode(f"{PIN_ACCOUNT}:{PIN_PASSWORD}".encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
        conn.request("GET", "/rest/v2/AuthSession?secsignid=probe&servicename=bench&"
                     "serviceaddress=bench", headers={"Authorization": auth})
        sid = json.loads(conn.getresponse().read())["authsessionid"]
        conn.close()
        path = f"/rest/v2/AuthSession/{sid}"
        request = HttpRequest("GET", sim.url + path, auth=(PIN_ACCOUNT, PIN_PASSWORD))

        async def timed(one: Any) -> tuple[float, float]:
            slots = asyncio.Semaphore(32)

            async def bounded() -> None:
                async with slots:
                    await one()

            await asyncio.gather(*(bounded() for _ in range(64)))
            c0, w0 = cpu(), time.perf_counter()
            await asyncio.gather(*(bounded() for _ in range(calls)))
            c1, w1 = cpu(), time.perf_counter()
            return (c1 - c0) / calls * 1e6, calls / (w1 - w0)

        async def via_http11() -> tuple[float, float]:
            from radius_proxy.backends.secsign.aio_transport import Http11Transport

            transport = Http11Transport("", 32)
            try:
                return await timed(lambda: transport(request, 10.0))
            finally:
                await transport.close()

        async def via_pool() -> tuple[float, float]:
            loop = asyncio.get_running_loop()
            executor = ThreadPoolExecutor(32)
            transport = RequestsTransport()
            try:
                return await timed(
                    lambda: loop.run_in_executor(executor, transport, request, 10.0))
            finally:
                executor.shutdown()
                transport.close()

        async def via_streams() -> tuple[float, float]:
            head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
                    "User-Agent: bench\r\n\r\n").encode()
            pool: asyncio.Queue[Any] = asyncio.Queue()
            for _ in range(32):
                pool.put_nowait(await asyncio.open_connection("127.0.0.1", sim.port))

            async def one() -> None:
                reader, writer = await pool.get()
                try:
                    writer.write(head)
                    await reader.readline()
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        key, _, value = line.partition(b":")
                        if key.lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                finally:
                    pool.put_nowait((reader, writer))

            try:
                return await timed(one)
            finally:
                while not pool.empty():
                    pool.get_nowait()[1].close()

        out.append(("the proxy's HTTP/1.1 client on the event loop (`aio_transport.py`)",
                    *asyncio.run(via_http11())))
        out.append(("requests on a 32-thread pool (`transport.py`)", *asyncio.run(via_pool())))
        out.append(("minimal HTTP/1.1 on asyncio streams, 32 keep-alive connections (a floor)",
                    *asyncio.run(via_streams())))
    finally:
        sim.stop()
    return out


# --- figures -------------------------------------------------------------------------------


def probe_stats(r: dict[str, Any], t0: float, t1: float) -> tuple[float, float, float, int, int]:
    """(p50, p99, max, count, lost) of the probes sent in [t0, t1); lost count as infinite."""
    p = r["probes"]
    values = [x for s, x in zip(p["send_t"], p["rtt"], strict=True) if t0 <= s < t1 and x >= 0]
    lost = sum(1 for x in values if math.isinf(x))
    return pct(values, 0.5), pct(values, 0.99), max(values, default=math.nan), len(values), lost


def figures(r: dict[str, Any], logins: int) -> dict[str, Any]:
    m, out = r["marks"], r["out"]
    sent = [(s, g, c) for s, g, c in zip(out["sent_at"], out["got_at"], out["codes"],
                                         strict=True) if s]
    accepts = [g for s, g, c in sent if c == 2]
    codes = Counter({2: "Access-Accept", 3: "Access-Reject", 11: "Access-Challenge"}.get(
        c, f"code {c}") if g else "no answer" for s, g, c in sent)
    last_accept = max(accepts, default=math.nan)
    all_accepted = len(accepts) == logins
    f: dict[str, Any] = {
        "sent": len(sent), "codes": codes, "accepts": len(accepts),
        "all_accepted": all_accepted,
        "accept_seconds": (last_accept - m["approve"]) if accepts else math.nan,
        "approve_seconds": m["approved"] - m["approve"],
        "send_seconds": max(s for s, _, _ in sent) - m["fill"] if sent else math.nan,
        "fill_seconds": m["pending"] - m["fill"],
        "rss_peak": r["sampler"].peak("proxy"),
        "sim_rss_peak": r["sampler"].peak("simulator"),
        "early": sum(1 for s, g, c in sent if g and g < m["approve"]),
    }
    for name, (a, b) in {"idle": (m["probe_start"], m["fill"]),
                         "fill": (m["fill"], m["pending"]),
                         "hold": (m["pending"], m["approve"]),
                         "drain": (m["approve"], m["done"]),
                         "all": (m["fill"], m["done"])}.items():
        f[f"probe_{name}"] = probe_stats(r, a, b)
    hold = max(1e-9, m["approve"] - m["pending"])
    k0, k1 = r["stats_h0"]["kinds"], r["stats_h1"]["kinds"]
    f["state_rate"] = (k1.get("state", 0) - k0.get("state", 0)) / hold
    f["effective_interval"] = r["waiting_at_hold"] / f["state_rate"] if f["state_rate"] else \
        math.inf
    f["proxy_cores_hold"] = r["sampler"].cpu_between("proxy", m["pending"], m["approve"]) / hold
    f["sim_cores_hold"] = r["sampler"].cpu_between("simulator", m["pending"], m["approve"]) / hold
    f["proxy_cpu_total"] = r["sampler"].cpu_between("proxy", m["fill"], m["done"])
    f["sim_cpu_total"] = r["sampler"].cpu_between("simulator", m["fill"], m["done"])
    ke = r["stats_end"]["kinds"]
    k_start = r["stats0"]["kinds"]
    f["http_calls"] = {k: ke.get(k, 0) - k_start.get(k, 0) for k in ("start", "state", "cancel")}
    f["pass_rss"] = f["rss_peak"] <= TARGET_RSS_MB
    f["pass_probe"] = f["probe_all"][1] <= TARGET_PROBE_P99_MS
    f["pass_accept"] = all_accepted and f["accept_seconds"] <= TARGET_ACCEPT_SECONDS
    return f


def render(info: dict[str, str], args: argparse.Namespace, runs: list[dict[str, Any]],
           clients: list[tuple[str, float, float]], when: str,
           total: float) -> tuple[str, list[str]]:
    figs = [figures(r, args.logins) for r in runs]
    head = " | ".join(f"poll {r['interval']:g} s" for r in runs)
    rows: list[tuple[str, list[str], str]] = []

    def row(name: str, values: list[str], target: str = "") -> None:
        rows.append((name, values, target))

    def probe(f: dict[str, Any], key: str) -> str:
        p50, p99, mx, _, lost = f[key]
        return f"{p50:.1f} / {p99:.1f} / {mx:.1f}" + (f" ({lost} lost)" if lost else "")

    row("logins sent / waiting at the simulator when the hold began",
        [f"{f['sent']} / {r['waiting_at_hold']}" for f, r in zip(figs, runs, strict=True)])
    row("time to send them / until all were waiting (s)",
        [f"{f['send_seconds']:.1f} / {f['fill_seconds']:.1f}" for f in figs])
    row("**proxy RSS, peak (MiB)**",
        [f"**{f['rss_peak']:.0f}** {verdict(f['pass_rss'])}" for f in figs],
        f"≤ {TARGET_RSS_MB:.0f} MB")
    row("proxy threads, peak", [str(r["threads_peak"]) for r in runs])
    row("**Status-Server p50 / p99 / max (ms), fill to last answer**",
        [f"{probe(f, 'probe_all')} {verdict(f['pass_probe'])}" for f in figs],
        f"p99 ≤ {TARGET_PROBE_P99_MS:.0f} ms")
    for key, name in (("probe_idle", "before the load"), ("probe_fill", "while filling"),
                      ("probe_hold", "while all wait"), ("probe_drain", "approvals to end")):
        row(f"  Status-Server p50 / p99 / max (ms), {name}", [probe(f, key) for f in figs])
    row("state requests/s during the hold (effective poll interval, s)",
        [f"{fmt(f['state_rate'])} ({f['effective_interval']:.1f})" for f in figs])
    row("proxy CPU during the hold (cores); simulator",
        [f"{f['proxy_cores_hold']:.2f}; {f['sim_cores_hold']:.2f}" for f in figs])
    row("whole machine busy during the hold (% of all cores)",
        [f"{100 * r['machine_busy_hold']:.0f}" for r in runs])
    row("approving all at the simulator took (s)", [f"{f['approve_seconds']:.1f}" for f in figs])
    row("**every NAS answered Access-Accept, from the first approval (s)**",
        [f"**{f['accept_seconds']:.1f}** {verdict(f['pass_accept'])}" if f["all_accepted"]
         else f"{f['accepts']} of {args.logins} {verdict(False)}" for f in figs],
        f"all within {TARGET_ACCEPT_SECONDS:.0f} s")
    row("answers by kind", [", ".join(f"{k} {v}" for k, v in f["codes"].most_common())
                            for f in figs])
    row("answers before any approval (should be 0)", [str(f["early"]) for f in figs])
    row("HTTP calls to the ID server: start / state / cancel",
        [" / ".join(str(f["http_calls"][k]) for k in ("start", "state", "cancel"))
         for f in figs])
    row("proxy / simulator CPU for the whole run (s)",
        [f"{f['proxy_cpu_total']:.0f} / {f['sim_cpu_total']:.0f}" for f in figs])
    row("simulator RSS, peak (MiB)", [f"{f['sim_rss_peak']:.0f}" for f in figs])
    row("drops at the proxy's UDP socket", [str(r["drops"]) for r in runs])

    lines = [
        SECTION,
        "",
        f"Measured {when} with `.venv/bin/python bench/wait_at_scale.py --logins "
        f"{args.logins} --poll-intervals {','.join(f'{x:g}' for x in args.poll_intervals)}` "
        f"({total:.0f} s in all). Targets (the issue): {args.logins} logins pending on "
        f"their phones at once in one proxy; resident memory at most {TARGET_RSS_MB:.0f} MB; "
        f"Status-Server answered with p99 at most {TARGET_PROBE_P99_MS:.0f} ms throughout; "
        f"then all approved and every NAS answered with Access-Accept within "
        f"{TARGET_ACCEPT_SECONDS:.0f} s.",
        "",
        machine_line(info),
        "",
        f"| | {head} | target |",
        "|---|" + "---|" * len(runs) + "---|",
        *[f"| {name} | {' | '.join(values)} | {target} |" for name, values, target in rows],
        "",
        "What the figures say:",
        "",
        *[f"- {n}" for n in notes(runs, figs, args)],
        "",
        "What one HTTP exchange with the ID server costs the client (a state request to the "
        "simulator, measured in the bench process right after the runs):",
        "",
        "| client | CPU per exchange (µs) | exchanges/s |",
        "|---|---|---|",
        *[f"| {name} | {cpu_us:.0f} | {fmt(rate)} |" for name, cpu_us, rate in clients],
        "",
        "(The rates are bounded by the simulator, one Python process; the CPU per exchange "
        "is what the proxy pays on its one interpreter lock, per poll.)",
        "",
        "Method:",
        "",
        "- radius-proxy: primary `none`, identity `username` (SecSign ID = user name), REST "
        "to the simulator, `max_connections` 32 (HTTP requests in flight) and `max_pending` "
        "10 000 as by default; "
        "`push_timeout_seconds` 290 and the client's `nas_timeout_seconds` 300, so no login "
        "times out by design during the run; logging at info as JSON to a file.",
        "- The simulator runs in its own process, rule `*=manual` (sessions wait until "
        "approved).",
        f"- NAS side: one process, {SOCKETS} UDP sockets x {IDS} Identifiers, requests sent "
        f"at {fmt(args.rate)}/s, none retransmitted; every answer matched by (socket, "
        "Identifier) and its Response Authenticator checked. Status-Server: another process, "
        f"one every {PROBE_EVERY * 1000:.0f} ms with Message-Authenticator, {PROBE_TIMEOUT:g} s "
        "without an answer counts as lost (and as infinite in the percentiles).",
        f"- Hold: {args.hold:g} s after every login was waiting at the simulator. Approval: "
        "`GET /simulator/api/sessions`, then `POST .../approve` per session on 4 keep-alive "
        "connections. RSS (VmRSS), threads and CPU from /proc every 0.25 s.",
    ]
    for r in runs:
        if r.get("profile"):
            lines += ["", f"Profile of the proxy during the hold, poll {r['interval']:g} s "
                      "(py-spy, GIL-holding samples):", "", "```", *r["profile"], "```"]
    problems = [f"poll {r['interval']:g} s: the proxy logged " + ", ".join(
        f"`{k}` x{v}" for k, v in r["problems"].most_common(5)) for r in runs if r["problems"]]
    if problems:
        lines += ["", "Warnings in the proxy's log:", "", *[f"- {p}" for p in problems]]
    summary = [f"{name}: {' | '.join(v.replace('**', '') for v in values)}"
               for name, values, _ in rows]
    summary += [f"HTTP client: {name}: {cpu_us:.0f} µs CPU per exchange, {fmt(rate)}/s"
                for name, cpu_us, rate in clients]
    return "\n".join(lines) + "\n", summary


def notes(runs: list[dict[str, Any]], figs: list[dict[str, Any]],
          args: argparse.Namespace) -> list[str]:
    from radius_proxy.app import GC_QUIET_IN_FLIGHT

    out = []
    for r, f in zip(runs, figs, strict=True):
        wanted = r["waiting_at_hold"] / r["interval"] if r["interval"] else 0
        limit = ""
        if f["state_rate"] < 0.8 * wanted:
            limit = (f" The proxy is the limit ({f['proxy_cores_hold']:.2f} cores: its one "
                     "interpreter lock)" if f["proxy_cores_hold"] >= 0.85 else
                     " The machine was the limit (the simulator and other load share it)")
            limit += "; it polls less often than configured, so approvals are seen later."
        out.append(
            f"poll {r['interval']:g} s: {r['waiting_at_hold']} waiting pushes ask for "
            f"{fmt(wanted)} state requests/s; the proxy made {fmt(f['state_rate'])}/s, so each "
            f"push was looked at every {f['effective_interval']:.1f} s, using "
            f"{f['proxy_cores_hold']:.2f} cores of CPU for it.{limit}")
    hold = "; ".join(f"poll {r['interval']:g} s: {f['probe_hold'][0]:.1f} / "
                     f"{f['probe_hold'][1]:.1f} / {f['probe_hold'][2]:.1f}"
                     for r, f in zip(runs, figs, strict=True))
    out.append(
        f"Status-Server while all wait, p50 / p99 / max ({hold} ms): the answer queues on "
        "the proxy's one event loop behind the poll callbacks and their HTTP exchanges "
        "(HTTP runs on the loop; the proxy has no worker threads). Full garbage collections "
        "stay out of the way: the proxy freezes its start-up objects, keeps the young "
        "generations cheap and collects fully only while fewer than "
        f"{GC_QUIET_IN_FLIGHT} requests are in flight (`_collect_when_quiet` in "
        "`radius_proxy/app.py`); and a waiting push holds about 14 GC-tracked objects, its "
        "entry and future in one poll scheduler (`radius_proxy/backends/secsign/poller.py`) "
        "and its caller's task (`tests/unit/test_secsign_parsing.py::"
        "test_a_waiting_push_holds_few_objects`).")
    peak = max(f["rss_peak"] for f in figs)
    threads = max(r["threads_peak"] for r in runs)
    out.append(
        f"Memory: {peak:.0f} MiB at the peak, about {1024 * (peak - 50) / args.logins:.0f} KiB "
        f"per waiting login on top of a ~50 MiB start; {threads} thread(s) at most.")
    out.append(
        "After the approvals every push learns its outcome at its next poll, so the time to "
        "the last Access-Accept is about the approvals' own duration plus the effective poll "
        "interval plus the queue of state requests in front of it.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logins", type=int, default=10_000, help="logins pending at once")
    p.add_argument("--rate", type=float, default=1000.0, help="logins sent per second")
    p.add_argument("--hold", type=float, default=15.0, help="seconds all wait (default 15)")
    p.add_argument("--fill-slack", type=float, default=45.0,
                   help="seconds past the sending to wait for all to be pending")
    p.add_argument("--drain", type=float, default=90.0,
                   help="seconds after the first approval to wait for the answers")
    p.add_argument("--poll-intervals", type=lambda s: [float(x) for x in s.split(",")],
                   default=[2.0, 10.0], help="poll_interval_seconds values, one run each")
    p.add_argument("--profile", action="store_true", help="py-spy the proxy during the hold")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.logins > SOCKETS * IDS:
        p.error(f"at most {SOCKETS * IDS} logins ({SOCKETS} sockets x {IDS} ids)")

    began = time.monotonic()
    when = now_utc()
    info = machine_info()
    info["busy_before"] = f"{100 * machine_busy(0.5):.0f}"
    with run_directory("bench-wait-", args.keep) as work:
        runs = [one_run(args, work, interval) for interval in args.poll_intervals]
        print("HTTP client cost per exchange...", flush=True)
        clients = http_client_costs(work)
    section, summary = render(info, args, runs, clients, when, time.monotonic() - began)
    print()
    print("\n".join(summary))
    if args.out:
        write_section(Path(args.out), SECTION, section)
        print(f"wrote section {SECTION!r} of {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
