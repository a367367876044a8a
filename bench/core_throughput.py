"""Core throughput: radius-proxy's request path, one process and several workers, against
FreeRADIUS on the same machine in the same run.

    .venv/bin/python bench/core_throughput.py [--seconds N] [--proxy-workers 1,2]
                                              [--out docs/performance.md]

One run starts every server on free loopback ports and always stops them:

- radius-proxy (`python -m radius_proxy serve`) once per `--proxy-workers` count, with
  primary backend "none", identity source "file" without a mapping file and
  `no_secsign_id = "accept"`: every valid Access-Request is accepted without a password
  check or a push; logging at warning. With `server.workers` > 1 it is a supervisor and N
  worker processes on one port (SO_REUSEPORT), with `[state] backend = "redis"` on a
  private redis-server, as that mode requires (the core path never calls it; its CPU is
  reported to show that);
- FreeRADIUS 3.2 (`freeradius -f`, threaded) with a private minimal config: the same user
  in its users file (Cleartext-Password, checked by PAP), Message-Authenticator required in
  requests and added to replies, as the proxy does.

All get the same load from `bench/loadgen.py`: generator processes, each keeping a window
of Access-Requests (User-Name, User-Password, NAS-Identifier, Message-Authenticator; a fresh
Request Authenticator every time) in flight on a socket of its own; several sockets, because
the kernel's SO_REUSEPORT hash picks a worker by source address and port. Throughput is
measured in rounds that alternate between the servers (median reported); reply latency both
under that load and with one request in flight; server CPU from /proc/<pid>/stat, for
workers the supervisor's plus every worker's. The issue's target, the proxy's core at least
half of FreeRADIUS's requests per second, is judged on the proxy's best configuration. The
results go to stdout and to the section "## Core throughput (issue: foundation)" of the
output file (other sections kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report as perf_doc  # noqa: E402
from bench.loadgen import AccessRequestFactory, LoadResult, percentile, run_load  # noqa: E402
from tests.servers.freeradius import RADIUSD_GLOBALS, RADIUSD_LIMITS  # noqa: E402
from tests.servers.redis import RedisServer  # noqa: E402

SECTION = "## Core throughput (issue: foundation)"
SECRET = "bench-core-secret-0123456789"  # loopback only, throwaway
USER, PASSWORD, NAS_ID = "bench", "benchpass", "bench-nas"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the pools are sized for this rate; a faster server would exhaust them (reported)
MAX_RATE = 40_000
#: The issue: the proxy's core path at least half of FreeRADIUS's requests per second.
TARGET_RATIO = 0.5
FREERADIUS = "FreeRADIUS"
#: A round in which one worker got next to no load (`lopsided`) is measured again, at
#: most this many times: it measured the kernel's SO_REUSEPORT hash, not the proxy.
LOPSIDED_RETRIES = 2
#: The generator settings whose fairness to FreeRADIUS was checked (see the method).
DEFAULT_GENERATORS, DEFAULT_WINDOW = 4, 32


# --- servers -------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def status_server(port: int, timeout: float = 0.2) -> bool:
    """One Status-Server with Message-Authenticator; True on a reply that verifies."""
    from pyrad import packet as rp

    from radius_proxy.protocol.dictionary import load_dictionary

    request = rp.AuthPacket(code=rp.StatusServer, secret=SECRET.encode(),
                            dict=load_dictionary())
    request.add_message_authenticator()
    raw = request.RequestPacket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(raw, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(4096)
        except OSError:
            return False
    try:
        return bool(request.VerifyReply(request.CreateReply(packet=data), data))
    except rp.PacketError:
        return False


def process_cpu(pid: int) -> float:
    """utime + stime of one process (all threads), /proc/<pid>/stat fields 14, 15."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The PIDs whose parent is pid (a supervisor's workers), in PID order."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(found)


@dataclass
class Server:
    """A server process started here, stopped by its PID only.

    With `tree`, the server is that process and its children (a supervisor and its
    workers): CPU and memory are the sum over all of them.
    """

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    tree: bool = False
    workers: int = 0  # radius-proxy's server.workers; 0 for other servers

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, argv: list[str], ready: Callable[[], bool], timeout: float = 20) -> None:
        """Start in the foreground as a child; ready when `ready()` and Status-Server say so."""
        if not udp_port_free(self.port):
            raise RuntimeError(f"{self.name}: udp port {self.port} is in use")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ready() and status_server(self.port):
                    break
                time.sleep(0.05)
            # the PID started here must be the one answering (a stale server would too)
            if self.proc.poll() is not None or not status_server(self.port, timeout=1.0):
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not come up (see {self.log}):\n{tail}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def pids(self) -> list[int]:
        """This process, then (with `tree`) its children by PID."""
        return [self.pid, *(children(self.pid) if self.tree else [])]

    def cpu_by_pid(self) -> dict[int, float]:
        return {p: process_cpu(p) for p in self.pids()}

    def socket_drops(self) -> int:
        """Datagrams the kernel dropped at this server's sockets (/proc/net/udp, "drops");
        with SO_REUSEPORT every worker has a socket of its own on the port."""
        local = f"0100007F:{self.port:04X}"
        return sum(int(cols[-1]) for line in Path("/proc/net/udp").read_text().splitlines()[1:]
                   if (cols := line.split())[1] == local)

    def rss_mib(self) -> float:
        total = 0.0
        for pid in self.pids():
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            total += int(found.group(1)) / 1024 if found else math.nan
        return total


PROXY_TOML = """\
[server]
listen = ["127.0.0.1:{port}"]

[[clients]]
name = "bench"
networks = ["127.0.0.1/32"]
secret = "{secret}"
require_message_authenticator = true

[primary]
backend = "none"

[identity]
sources = ["file"]

[secsign]
api = "legacy"
servers = ["http://127.0.0.1:9"]

[policy]
no_secsign_id = "accept"

[logging]
level = "warning"

[http]
listen = ""
"""


def proxy_name(workers: int) -> str:
    return f"radius-proxy, workers = {workers}"


def _workers_listening(http: int, workers: int) -> bool:
    """Every worker wrote its status (it bound the port); readiness needs no ID server here."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    except (OSError, ValueError):
        return False
    states = [w["status"] for w in body.get("workers", {}).values()]
    return len(states) == workers and all(s in ("ready", "unready") for s in states)


def start_proxy(work: Path, workers: int = 1, redis_port: int | None = None) -> Server:
    """One process (`workers` = 1, memory state, no HTTP), or a supervisor and `workers`
    workers sharing the Redis at `redis_port`, with HTTP for their readiness."""
    server = Server(proxy_name(workers), free_udp_port(), work / f"proxy-{workers}.log",
                    tree=workers > 1, workers=workers)
    text = PROXY_TOML.format(port=server.port, secret=SECRET)
    http = 0
    if workers > 1:
        if redis_port is None:
            raise ValueError("workers > 1 need a redis-server")
        http = free_tcp_port()
        text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        text = text.replace('[http]\nlisten = ""', f'[http]\nlisten = "127.0.0.1:{http}"')
        text += f'\n[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{redis_port}/0"\n'
    config = work / f"radius-proxy-{workers}.toml"
    config.write_text(text)
    server.start([sys.executable, "-m", "radius_proxy", "serve", "-c", str(config)],
                 ready=lambda: workers == 1 or _workers_listening(http, workers))
    return server


# tests/servers/freeradius.py's config, cut down to one virtual server (recv_buff as there);
# no per-request auth logging; M-A required in requests and added to every reply.
RADIUSD_CONF = RADIUSD_GLOBALS + """\
log {{
	destination = files
	file = ${{logdir}}/radius.log
	colourise = no
	auth = no
}}
""" + RADIUSD_LIMITS + """\
client localhost {{
	ipaddr = 127.0.0.1
	secret = {secret}
	require_message_authenticator = yes
}}
modules {{
	pap {{
		normalise = yes
	}}
	files {{
		filename = ${{confdir}}/users
	}}
}}
server default {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {port}
		recv_buff = 4194304
	}}
	authorize {{
		files
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
	}}
	post-auth {{
		update reply {{
			Message-Authenticator := 0x00
		}}
		Post-Auth-Type REJECT {{
			update reply {{
				Message-Authenticator := 0x00
			}}
		}}
	}}
}}
"""


def start_freeradius(work: Path, conf: str = RADIUSD_CONF,
                     users: str = f'{USER}\tCleartext-Password := "{PASSWORD}"\n') -> Server:
    """FreeRADIUS in the foreground on a private config (`conf`, a format string with d,
    secret and port) and users file, after `freeradius -C` accepted both."""
    binary = shutil.which("freeradius", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        raise RuntimeError("freeradius is not installed (apt-get install freeradius)")
    d = work / "freeradius"
    (d / "log").mkdir(parents=True)
    (d / "run").mkdir()
    server = Server(FREERADIUS, free_udp_port(), d / "stdout.log")
    (d / "radiusd.conf").write_text(conf.format(d=d, secret=SECRET, port=server.port))
    (d / "users").write_text(users)
    check = subprocess.run([binary, "-C", "-d", str(d)], capture_output=True, text=True,
                           timeout=30, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"freeradius -C failed:\n{check.stdout}{check.stderr}")
    log = d / "log" / "radius.log"
    log.write_text("")
    server.start([binary, "-f", "-d", str(d)],
                 ready=lambda: "Ready to process requests" in log.read_text(errors="replace"))
    return server


# --- machine readings --------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    fr = subprocess.run(["freeradius", "-v"], capture_output=True, text=True, check=False,
                        env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin"})
    fr_version = re.search(r"FreeRADIUS Version ([\w.]+)", fr.stdout)
    redis_binary = shutil.which("redis-server")
    redis = subprocess.run([redis_binary, "--version"], capture_output=True, text=True,
                           check=False).stdout if redis_binary else ""
    redis_version = re.search(r"v=([\w.]+)", redis)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyrad": importlib.metadata.version("pyrad"),
        "radius_proxy": importlib.metadata.version("radius-proxy"),
        "freeradius": fr_version.group(1) if fr_version else "unknown",
        "redis": redis_version.group(1) if redis_version else "unknown",
        "rmem_default": Path("/proc/sys/net/core/rmem_default").read_text().strip(),
        "commit": git_commit(),
    }


def git_commit() -> str:
    """The checked-out commit, read-only; notes uncommitted changes under radius_proxy/."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "radius_proxy"],
                               cwd=REPO, text=True, capture_output=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {head}" + (" + uncommitted changes in radius_proxy/" if dirty else "")


def busy_jiffies() -> tuple[int, int, int]:
    """(busy, irq + softirq, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return total - idle, values[5] + values[6], total


def machine_busy(seconds: float) -> float:
    """Fraction of all CPUs busy over the next `seconds` (before the run: other load)."""
    b0, _, t0 = busy_jiffies()
    time.sleep(seconds)
    b1, _, t1 = busy_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


@dataclass
class Round:
    """One throughput round against one server, with the readings around its window."""

    load: LoadResult
    server_cpu: float  # seconds
    machine_busy: float  # fraction of all CPUs busy in the window
    softirq: float  # fraction of all CPUs in irq and softirq (loopback delivery, mostly)
    socket_drops: int  # at the server's socket(s)
    per_process: list[float] = field(default_factory=list)  # CPU seconds, supervisor first
    redis_cpu: float | None = None  # seconds, when the server has a redis-server


def measure(server: Server, factory: AccessRequestFactory, *, seconds: float, warmup: float,
            generators: int, window: int, max_rate: float = MAX_RATE,
            redis: RedisServer | None = None) -> Round:
    marks: dict[str, Any] = {}
    redis_pid = redis.process.pid if redis is not None and redis.process is not None else None

    def mark(edge: str) -> None:
        marks[edge] = (server.cpu_by_pid(), busy_jiffies(), server.socket_drops(),
                       process_cpu(redis_pid) if redis_pid else 0.0)

    load = run_load(("127.0.0.1", server.port), SECRET.encode(), factory, duration=seconds,
                    warmup=warmup, workers=generators, window=window,
                    max_requests=int(max_rate * (warmup + seconds)), timeout=2.0,
                    on_window_start=lambda: mark("start"), on_window_end=lambda: mark("end"))
    (cpu0, (b0, i0, t0), d0, r0), (cpu1, (b1, i1, t1), d1, r1) = marks["start"], marks["end"]
    # a worker that was replaced in the window counts from 0 (its CPU before is lost)
    per = [cpu1[p] - cpu0.get(p, 0.0) for p in cpu1]
    return Round(load, sum(per), (b1 - b0) / max(1, t1 - t0), (i1 - i0) / max(1, t1 - t0),
                 d1 - d0, per, r1 - r0 if redis_pid else None)


def lopsided(r: Round) -> bool:
    """Whether one of several workers got next to no load in a round: the kernel's
    SO_REUSEPORT hash put every generator socket on the other worker(s)."""
    workers = r.per_process[1:]
    return len(workers) > 1 and min(workers) < 0.1 * max(workers)


@dataclass
class Summary:
    name: str
    rounds: list[Round]
    idle: LoadResult  # one request in flight
    rss_mib: float
    nproc: int
    notes: list[str] = field(default_factory=list)
    workers: int = 0  # radius-proxy's server.workers; 0 for other servers

    @property
    def rates(self) -> list[float]:
        return [r.load.rate for r in self.rounds]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def answered(self) -> int:
        return sum(r.load.answered for r in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(r.load.seconds for r in self.rounds)

    @property
    def cpu_per_request_us(self) -> float:
        return sum(r.server_cpu for r in self.rounds) / max(1, self.answered) * 1e6

    @property
    def server_cores(self) -> float:
        return sum(r.server_cpu for r in self.rounds) / self.seconds

    @property
    def process_cores(self) -> list[float]:
        """Cores per process (supervisor first) over all rounds; [] for one process or
        when the set of processes changed between rounds (a worker was restarted)."""
        shapes = {len(r.per_process) for r in self.rounds}
        if len(shapes) != 1 or shapes == {0} or shapes == {1}:
            return []
        return [sum(c) / self.seconds for c in zip(*(r.per_process for r in self.rounds),
                                                   strict=True)]

    @property
    def redis_cores(self) -> float | None:
        used = [r.redis_cpu for r in self.rounds if r.redis_cpu is not None]
        return sum(used) / self.seconds if used else None

    @property
    def generator_cores(self) -> float:
        return sum(r.load.generator_cpu_seconds for r in self.rounds) / self.seconds

    @property
    def machine_busy(self) -> float:
        return statistics.mean(r.machine_busy for r in self.rounds)

    @property
    def softirq_cores(self) -> float:
        return statistics.mean(r.softirq for r in self.rounds) * self.nproc

    @property
    def other_cores(self) -> float:
        """Busy CPU that neither the servers, the generator nor interrupts account for.

        Other processes on the machine (it is shared), and overhead no process is charged
        with (scheduler, wake-ups, the hypervisor).
        """
        busy = self.machine_busy * self.nproc
        return max(0.0, busy - self.server_cores - (self.redis_cores or 0.0)
                   - self.generator_cores - self.softirq_cores)

    @property
    def lost(self) -> int:
        return sum(r.load.lost for r in self.rounds)

    @property
    def socket_drops(self) -> int:
        return sum(r.socket_drops for r in self.rounds)

    def latency(self, q: float) -> float:
        return percentile(sorted(x for r in self.rounds for x in r.load.latencies_ms), q)

    def problems(self) -> list[str]:
        out = list(self.notes)
        loads = [r.load for r in self.rounds] + [self.idle]
        if any(x.pool_exhausted for x in loads):
            out.append("a request pool ran out before the window ended (the rate rose far "
                       "above the previous round's): the window was shortened")
        rejects = sum(sum(v for k, v in x.codes.items() if k != "Access-Accept") for x in loads)
        if rejects:
            out.append(f"{rejects} replies were not Access-Accept")
        bad = sum(x.bad_authenticator for x in loads)
        if bad:
            out.append(f"{bad} sampled replies had a wrong Response Authenticator")
        if self.lost:
            out.append(f"{self.lost} requests got no reply within 2 s")
        for i, r in enumerate(self.rounds, 1):
            workers = r.per_process[1:]
            if lopsided(r):
                out.append(f"round {i}: a worker got next to no load (CPU per worker "
                           f"{' / '.join(f'{c / r.load.seconds:.2f}' for c in workers)} "
                           "cores): the kernel's SO_REUSEPORT hash put the generator's "
                           "sockets on the others")
        stray = sum(x.stray for x in loads)
        if stray:
            out.append(f"{stray} stray replies (late or duplicated)")
        return out


# --- report ----------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def best_proxy(proxies: list[Summary]) -> Summary:
    """The proxy configuration the target is judged on: the fastest of those with no more
    workers than the machine has cores (more is not a configuration docs/operations.md
    supports; measured all the same if asked for)."""
    fitting = [s for s in proxies if s.workers <= s.nproc] or proxies
    return max(fitting, key=lambda s: s.rate)


def _cores(s: Summary) -> str:
    split = s.process_cores
    return f"{s.server_cores:.2f}" + (
        f" ({' + '.join(f'{c:.2f}' for c in split)})" if split else "")


def table(servers: list[Summary], fr: Summary) -> list[tuple[str, list[str]]]:
    """Rows of (label, one cell per server), the servers in column order."""
    def each(f: Callable[[Summary], str]) -> list[str]:
        return [f(s) for s in servers]

    def vs_fr(f: Callable[[Summary], str]) -> list[str]:
        return ["-" if s is fr else f(s) for s in servers]

    return [
        ("Access-Requests/s answered (median of rounds)",
         each(lambda s: f"**{fmt_rate(s.rate)}**")),
        ("requests/s relative to FreeRADIUS", vs_fr(lambda s: f"{s.rate / fr.rate:.2f}")),
        ("rounds", each(lambda s: " / ".join(fmt_rate(r) for r in s.rates))),
        ("latency under that load, p50 / p99 (ms)",
         each(lambda s: f"{s.latency(0.5):.2f} / {s.latency(0.99):.2f}")),
        ("latency with 1 request in flight, p50 / p99 (ms)",
         each(lambda s: f"{s.idle.percentile(0.5):.3f} / {s.idle.percentile(0.99):.3f}")),
        ("rate with 1 request in flight (req/s)", each(lambda s: fmt_rate(s.idle.rate))),
        ("server CPU per request (µs)", each(lambda s: f"{s.cpu_per_request_us:.0f}")),
        ("CPU per request relative to FreeRADIUS",
         vs_fr(lambda s: f"{s.cpu_per_request_us / fr.cpu_per_request_us:.1f}x")),
        ("server CPU used under load (cores; supervisor + workers)", each(_cores)),
        ("redis-server CPU (cores)",
         each(lambda s: "-" if s.redis_cores is None else f"{s.redis_cores:.2f}")),
        ("load generator CPU (cores)", each(lambda s: f"{s.generator_cores:.2f}")),
        ("kernel irq + softirq CPU (cores)", each(lambda s: f"{s.softirq_cores:.2f}")),
        ("busy CPU charged to none of these (cores)", each(lambda s: f"{s.other_cores:.2f}")),
        ("whole machine busy (% of all cores)", each(lambda s: f"{100 * s.machine_busy:.0f}")),
        ("lost requests / drops at the server's sockets",
         each(lambda s: f"{s.lost} / {s.socket_drops}")),
        ("server RSS after the run (MiB; all processes)", each(lambda s: f"{s.rss_mib:.0f}")),
    ]


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def target_row(proxies: list[Summary], fr: Summary) -> tuple[str, str, str, str]:
    best = best_proxy(proxies)
    ratio = best.rate / fr.rate if fr.rate else math.nan
    return (f"radius-proxy / FreeRADIUS, Access-Requests/s (workers = {best.workers}, the "
            "proxy's best configuration here)", f"**{ratio:.2f}**", f"≥ {TARGET_RATIO:.2f}",
            verdict(ratio >= TARGET_RATIO))


def _limit_one(s: Summary, fr: Summary, single: Summary | None) -> str:
    """What bounds one proxy configuration's figure."""
    per_core = 1e6 / s.cpu_per_request_us
    cores = min(s.workers, s.nproc)
    if s.workers == 1:
        if s.server_cores >= 0.85:
            return (
                f"{s.name}: its single event-loop thread is CPU-bound ({s.server_cores:.2f} "
                f"cores used, {s.cpu_per_request_us:.0f} µs per request, so about "
                f"{fmt_rate(per_core)}/s is what one core gives). More load does not help: "
                f"the generator used only {s.generator_cores:.2f} cores here and drove "
                f"FreeRADIUS {fr.rate / max(1.0, s.rate):.1f}x as fast with the same settings.")
        return (f"{s.name} used {s.server_cores:.2f} cores, less than its one thread could; "
                f"at {s.cpu_per_request_us:.0f} µs per request a core would give about "
                f"{fmt_rate(per_core)}/s. The machine was {100 * s.machine_busy:.0f} % "
                f"busy, {s.other_cores:.2f} cores of it charged to none of the processes "
                "measured (other processes).")
    split = s.process_cores
    spread = (f" (supervisor {split[0]:.2f}, workers "
              f"{' + '.join(f'{c:.2f}' for c in split[1:])})") if split else ""
    if s.server_cores >= 0.85 * cores:
        text = (f"{s.name}: the workers are CPU-bound, {s.server_cores:.2f} cores{spread} at "
                f"{s.cpu_per_request_us:.0f} µs per request.")
    elif s.machine_busy >= 0.85:
        text = (
            f"{s.name}: the workers used {s.server_cores:.2f} of {cores} cores{spread} because "
            f"the machine was saturated ({100 * s.machine_busy:.0f} % of {s.nproc} cores "
            f"busy: the proxy {s.server_cores:.2f}, the load generator "
            f"{s.generator_cores:.2f}, softirq {s.softirq_cores:.2f}, charged to none "
            f"{s.other_cores:.2f}); the workers get what the generator and the kernel leave. "
            f"At {s.cpu_per_request_us:.0f} µs per request, {cores} cores of their own would "
            f"serve about {fmt_rate(cores * per_core)}/s.")
    else:
        text = (f"{s.name} used {s.server_cores:.2f} of {cores} cores{spread}, with the "
                f"machine {100 * s.machine_busy:.0f} % busy; look at the load balance and at "
                "other processes.")
    if split and len(split) > 2 and max(split[1:]) > 1.5 * max(0.01, min(split[1:])):
        text += (" The kernel's SO_REUSEPORT hash spread the generator's sockets unevenly "
                 "over the workers.")
    if single is not None:
        extra = s.cpu_per_request_us - single.cpu_per_request_us
        text += (f" Against workers = 1: {s.rate / max(1.0, single.rate):.2f}x the requests/s, "
                 f"CPU per request {extra:+.0f} µs ({100 * extra / single.cpu_per_request_us:+.0f}"
                 " %): the extra processes' cost (the metrics in multiprocess mode, context "
                 "switches between more busy processes than cores).")
    if s.redis_cores is not None:
        text += (f" redis-server used {s.redis_cores:.2f} cores: the core path does not "
                 "touch it.")
    return text


def limits(proxies: list[Summary], fr: Summary) -> list[str]:
    """What bounds each figure, read from the CPU numbers rather than assumed."""
    single = next((s for s in proxies if s.workers == 1), None)
    out = [_limit_one(s, fr, single if s is not single else None) for s in proxies]
    fr_core = 1e6 / fr.cpu_per_request_us
    if fr.machine_busy >= 0.85:
        out.append(
            f"FreeRADIUS: the machine is saturated ({100 * fr.machine_busy:.0f} % of "
            f"{fr.nproc} cores busy: FreeRADIUS {fr.server_cores:.2f}, the Python load "
            f"generator {fr.generator_cores:.2f}, softirq {fr.softirq_cores:.2f}, charged "
            f"to none {fr.other_cores:.2f}). Its figure is a lower bound set by sharing "
            f"the cores with the generator; at {fr.cpu_per_request_us:.0f} µs per request "
            f"one core of its own would serve about {fmt_rate(fr_core)}/s. The throughput "
            "ratios therefore flatter radius-proxy; the CPU-per-request ratio is the steadier "
            "comparison.")
    else:
        out.append(
            f"FreeRADIUS: the machine was {100 * fr.machine_busy:.0f} % busy; FreeRADIUS "
            f"used {fr.server_cores:.2f} cores at {fr.cpu_per_request_us:.0f} µs per request "
            f"(about {fmt_rate(fr_core)}/s per core).")
    out.append(
        "Busy CPU charged to neither server nor generator is other work on this shared "
        "machine or overhead no process is charged with (scheduler, wake-ups, the "
        "hypervisor); where it is large, the throughput is likely low, and CPU per request is "
        "the more reliable number.")
    return out


def _fairness(args: argparse.Namespace) -> str:
    if (args.generators, args.window) != (DEFAULT_GENERATORS, DEFAULT_WINDOW):
        return ""
    return (" 4 x 32 keeps the 128 in flight of the earlier 2 x 64, which put all the load on "
            "one worker whenever both sockets hashed alike. Checked on this machine "
            "(2026-11-27, shared, 7 alternating rounds each): FreeRADIUS answered a median "
            "21 000/s with 2 x 64, 19 400/s with 4 x 32, 17 000/s with 6 x 32 and 18 500/s "
            "with 6 x 16 or 8 x 16, the rounds spreading 14 000-26 000/s; more generator "
            "processes cost more generator CPU on 2 cores (about 0.4 to 0.5 cores), which "
            "FreeRADIUS then lacks. 4 x 32 is the least unfair to it; what is left of the "
            "difference flatters the proxy. The proxy's figures did not depend on the "
            "setting. With 4 sockets the kernel puts all of them on one of 2 workers in "
            "about 1 round in 8 (2 * (1/2)^4); such a round measures the hash, not the proxy, "
            f"so it is measured again with new generator processes (at most "
            f"{LOPSIDED_RETRIES} times) and listed under the anomalies.")


def method(info: dict[str, str], args: argparse.Namespace) -> list[str]:
    return [
        "- radius-proxy: `python -m radius_proxy serve` with primary backend `none`, identity "
        "source `file` without a mapping file and `no_secsign_id = \"accept\"`, so each "
        "request runs the packet checks, Message-Authenticator check, duplicate cache, "
        "pipeline (primary, identity, policy) and a signed Access-Accept, with no backend I/O; "
        "`require_message_authenticator = true`; `[secsign]` points at a closed loopback "
        "port, which only the start-up self-test tries; logging at `warning`, default "
        "`reply_cache_seconds` (30) and UDP receive buffer (`rmem_default` "
        f"{info['rmem_default']}).",
        "- `workers = 1`: one process, memory state, no HTTP listener. `workers = N` > 1: "
        "`[server] workers = N`, a supervisor and N worker processes binding the port with "
        "SO_REUSEPORT, `[state] backend = \"redis\"` on a private redis-server "
        f"{info['redis']} (`--save \"\" --appendonly no`), as that mode requires, and the "
        "supervisor's HTTP listener (only to see the workers ready). The server's CPU is the "
        "supervisor's plus every worker's.",
        "- FreeRADIUS: `freeradius -f` (threaded, pool 5..32), a private minimal config "
        "(from `tests/servers/freeradius.py`, one virtual server), the user in the `users` "
        "file with `Cleartext-Password` checked by `pap`, Message-Authenticator required in "
        "requests and added to every reply, no auth logging, `recv_buff = 4194304`.",
        f"- Load, the same for every server: `bench/loadgen.py`, {args.generators} generator "
        f"processes, each with one non-blocking UDP socket and {args.window} Access-Requests "
        f"in flight ({args.generators * args.window} in all), matched by Identifier. Several "
        "sockets, because the kernel's SO_REUSEPORT hash picks a worker by the source "
        f"address and port.{_fairness(args)} Requests carry User-Name, User-Password, "
        "NAS-Identifier and Message-Authenticator; the template is built by pyrad and every "
        "request gets a fresh Request Authenticator, so no server answers from its "
        "duplicate cache. Pools are built before the clock starts. Every 16th reply's "
        "Response Authenticator is checked.",
        f"- All servers run for the whole run; {args.rounds} rounds per server, alternating "
        f"between them, each {args.seconds / args.rounds:g} s measured after "
        f"{args.warmup:g} s warm-up; only replies inside the window count. Latency is per "
        "request (send to reply) under that load, and separately with one request in flight "
        f"({args.idle_seconds:g} s, one generator).",
        "- Server CPU: utime + stime from `/proc/<pid>/stat` (all threads; for workers the "
        "supervisor and each worker) across each window; divided by the replies in the "
        "window. Machine load from `/proc/stat`; it includes anything else running on the "
        "machine.",
        "- The target is judged on the proxy's fastest configuration with no more workers "
        "than the machine has cores (`workers` is sized to the cores the proxy may use, "
        "docs/operations.md).",
    ]


def render(info: dict[str, str], proxies: list[Summary], fr: Summary,
           args: argparse.Namespace, when: str, total: float) -> str:
    servers = [*proxies, fr]
    rows = table(servers, fr)
    best = best_proxy(proxies)
    others = [s for s in proxies if s is not best]
    target = target_row(proxies, fr)
    command = (f".venv/bin/python bench/core_throughput.py --seconds {args.seconds:g}"
               + ("" if args.proxy_workers == "1,2" else
                  f" --proxy-workers {args.proxy_workers}"))
    lines = [
        SECTION,
        "",
        f"Measured {when} with `{command}` ({total:.0f} s in all). Target (the issue): side "
        "by side, same run, FreeRADIUS answering the same load from its users file and the "
        "core path of the proxy; the proxy's core at least half of FreeRADIUS's requests "
        "per second. Judged on the proxy's best configuration here, "
        f"`workers = {best.workers}`.",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}, Linux {info['kernel']}; "
        f"Python {info['python']}, pyrad {info['pyrad']}, radius-proxy {info['radius_proxy']} "
        f"({info['commit']}), "
        f"FreeRADIUS {info['freeradius']}. The load generator runs on the same cores as the "
        f"server under test; the machine was {info['busy_before']} % busy just before the "
        "run (other processes).",
        "",
        *perf_doc.target_table([target]),
        "",
        "| | " + " | ".join(s.name for s in servers) + " |",
        "|---|" + "---|" * len(servers),
        *[f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows],
        "",
        f"**Ratio radius-proxy / FreeRADIUS: {best.rate / fr.rate:.2f}** (throughput, "
        f"`workers = {best.workers}`"
        + "".join(f"; `workers = {s.workers}`: {s.rate / fr.rate:.2f}" for s in others)
        + "); CPU per request "
        + ", ".join(f"{s.cpu_per_request_us / fr.cpu_per_request_us:.1f}x (`workers = "
                    f"{s.workers}`)" for s in [best, *others])
        + " FreeRADIUS's.",
        "",
        "What limits the figures:",
        "",
        *[f"- {text}" for text in limits(proxies, fr)],
        "",
        "Method:",
        "",
        *method(info, args),
    ]
    problems = [f"{s.name}: {p}" for s in servers for p in s.problems()]
    if problems:
        lines += ["", "Anomalies in this run:", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace only this benchmark's section of docs/performance.md."""
    perf_doc.write_section(path, SECTION, section)


def print_table(proxies: list[Summary], fr: Summary) -> None:
    servers = [*proxies, fr]
    rows = [("", [s.name for s in servers]), *table(servers, fr)]
    width = [max(len(r[0]) for r in rows),
             *(max(len(r[1][i].replace("**", "")) for r in rows) for i in range(len(servers)))]
    for name, cells in rows:
        print(f"{name:<{width[0]}}" + "".join(
            f"  {c.replace('**', ''):>{w}}" for c, w in zip(cells, width[1:], strict=True)))
    label, measured, goal, ok = target_row(proxies, fr)
    print(f"target: {label}: {measured.replace('**', '')} (target {goal}) "
          f"{ok.replace('**', '')}")


def _expected_warning(line: str) -> bool:
    return "secsign" in line and ("backend_check" in line or "server_fallback" in line)


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or len(set(counts)) != len(counts) or not all(1 <= n <= 64 for n in counts):
        raise argparse.ArgumentTypeError("a comma-separated list of distinct counts 1..64")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=12.0,
                   help="measured seconds per server, split into rounds (default 12)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up per round (default 1 s)")
    p.add_argument("--proxy-workers", default="1,2",
                   help="radius-proxy configurations: server.workers counts (default 1,2)")
    p.add_argument("--generators", type=int, default=DEFAULT_GENERATORS,
                   help=f"load generator processes, one socket each (default "
                        f"{DEFAULT_GENERATORS})")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"requests in flight per generator (default {DEFAULT_WINDOW})")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="the one-in-flight latency run per server (default 2 s)")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    try:
        counts = _worker_counts(args.proxy_workers)
    except argparse.ArgumentTypeError as error:
        p.error(f"--proxy-workers: {error}")

    began = time.monotonic()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    before = machine_busy(0.5)
    info["busy_before"] = f"{100 * before:.0f}"
    if before > 0.2:
        print(f"WARNING: the machine is already {100 * before:.0f} % busy; the figures will "
              "be low and noisy", file=sys.stderr)
    factory = AccessRequestFactory(SECRET.encode(), PASSWORD,
                                   [("User-Name", USER), ("NAS-Identifier", NAS_ID)])
    servers: list[Server] = []
    redis: RedisServer | None = None
    logs: dict[str, str] = {}
    with perf_doc.run_directory("bench-core-", args.keep) as work:
        try:
            if any(n > 1 for n in counts):
                redis = RedisServer(work / "redis")
            for n in counts:
                servers.append(start_proxy(work, n, redis.port if redis else None))
            servers.append(start_freeradius(work))
            for s in servers:
                print(f"{s.name}: pid {' + '.join(map(str, s.pids()))} on :{s.port}", flush=True)
            idle = {}
            for s in servers:
                idle[s.name] = run_load(("127.0.0.1", s.port), SECRET.encode(), factory,
                                        duration=args.idle_seconds, warmup=0.3, workers=1,
                                        window=1, max_requests=30_000)
                print(f"{s.name}: 1 in flight: {idle[s.name].rate:.0f}/s, p50 "
                      f"{idle[s.name].percentile(0.5):.3f} ms", flush=True)
            rounds: dict[str, list[Round]] = {s.name: [] for s in servers}
            again: dict[str, list[str]] = {s.name: [] for s in servers}
            cap = {s.name: float(MAX_RATE) for s in servers}  # pool sizes; later rounds adapt
            for i in range(args.rounds):
                for s in servers:
                    def one_round(s: Server = s) -> Round:
                        return measure(s, factory, seconds=args.seconds / args.rounds,
                                       warmup=args.warmup, generators=args.generators,
                                       window=args.window, max_rate=cap[s.name],
                                       redis=redis if s.workers > 1 else None)

                    r = one_round()
                    for _ in range(LOPSIDED_RETRIES):
                        if not lopsided(r):
                            break
                        again[s.name].append(
                            f"round {i + 1} was measured again: in the first try a worker got "
                            f"next to no load ({r.load.rate:.0f}/s in all), which measures "
                            "the kernel's SO_REUSEPORT hash of the generator sockets, not the "
                            "proxy; new generator processes get new source ports")
                        print(f"round {i + 1} {s.name}: a worker got next to no load "
                              f"({r.load.rate:.0f}/s); measured again", flush=True)
                        r = one_round()
                    rounds[s.name].append(r)
                    if s.workers <= 1:  # with workers, a generator the kernel gives a worker
                        # of its own gets several times its share: its pool stays at MAX_RATE
                        cap[s.name] = min(MAX_RATE, max(5000.0, 3 * r.load.rate))
                    split = (f" ({' + '.join(f'{c / r.load.seconds:.2f}' for c in r.per_process)})"
                             if len(r.per_process) > 1 else "")
                    print(f"round {i + 1} {s.name}: {r.load.rate:.0f}/s, server CPU "
                          f"{r.server_cpu / max(1, r.load.answered) * 1e6:.0f} µs/req, "
                          f"{r.server_cpu / r.load.seconds:.2f} cores{split}, machine "
                          f"{100 * r.machine_busy:.0f} % busy, p99 "
                          f"{r.load.percentile(0.99):.2f} ms"
                          + (", a pool ran out" if r.load.pool_exhausted else ""), flush=True)
            rss = {s.name: s.rss_mib() for s in servers}
        finally:
            for s in reversed(servers):
                s.stop()
            if redis is not None:
                redis.stop()
            logs = {s.name: s.log.read_text(errors="replace") for s in servers if s.workers}

    nproc = os.cpu_count() or 1
    results = [Summary(s.name, rounds[s.name], idle[s.name], rss[s.name], nproc,
                       notes=again[s.name], workers=s.workers) for s in servers]
    *proxies, fr = results
    # the proxy logs at warning: anything it wrote is worth a look, except its start-up
    # self-test finding the (deliberately unreachable) SecSign ID server
    for summary in proxies:
        logged = [ln for ln in logs[summary.name].splitlines()
                  if ln.strip() and not _expected_warning(ln)]
        if logged:
            summary.notes.append(f"the proxy logged {len(logged)} line(s) at warning or above, "
                                 f"first: `{logged[0][:200]}`")
    total = time.monotonic() - began
    print()
    print_table(proxies, fr)
    for summary in results:
        for problem in summary.problems():
            print(f"WARNING {summary.name}: {problem}")
    if args.out:
        out = Path(args.out)
        write_section(out, render(info, proxies, fr, args, when, total))
        with contextlib.suppress(ValueError):
            out = out.resolve().relative_to(Path.cwd())
        print(f"wrote section {SECTION!r} of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
