"""Core throughput: radius-proxy's request path against FreeRADIUS, on this machine.

    .venv/bin/python bench/core_throughput.py [--seconds N] [--out docs/performance.md]

One run starts both servers on free loopback ports and always stops them:

- radius-proxy (`python -m radius_proxy serve`) with primary backend "none", identity source
  "file" without a mapping file and `no_secsign_id = "accept"`: every valid Access-Request
  is accepted without a password check or a push; logging at warning;
- FreeRADIUS 3.2 (`freeradius -f`, threaded) with a private minimal config: the same user
  in its users file (Cleartext-Password, checked by PAP), Message-Authenticator required in
  requests and added to replies, as the proxy does.

Both get the same load from `bench/loadgen.py`: worker processes, each keeping a window of
Access-Requests (User-Name, User-Password, NAS-Identifier, Message-Authenticator; a fresh
Request Authenticator every time) in flight. Throughput is measured in rounds that alternate
between the servers (median reported); reply latency both under that load and with one
request in flight; server CPU from /proc/<pid>/stat. The results go to stdout and to the
section "## Core throughput (issue: foundation)" of the output file (other sections kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report as perf_doc  # noqa: E402
from bench.loadgen import AccessRequestFactory, LoadResult, percentile, run_load  # noqa: E402

SECTION = "## Core throughput (issue: foundation)"
SECRET = "bench-core-secret-0123456789"  # loopback only, throwaway
USER, PASSWORD, NAS_ID = "bench", "benchpass", "bench-nas"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the pools are sized for this rate; a faster server would exhaust them (reported)
MAX_RATE = 40_000


# --- servers -------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
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


@dataclass
class Server:
    """A server process started here, stopped by its PID only."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

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

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads), /proc/<pid>/stat fields 14, 15."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def socket_drops(self) -> int:
        """Datagrams the kernel dropped at this server's socket (/proc/net/udp, "drops")."""
        local = f"0100007F:{self.port:04X}"
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1] == local:
                return int(cols[-1])
        return 0

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(found.group(1)) / 1024 if found else math.nan


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


def start_proxy(work: Path) -> Server:
    server = Server("radius-proxy", free_udp_port(), work / "proxy.log")
    config = work / "radius-proxy.toml"
    config.write_text(PROXY_TOML.format(port=server.port, secret=SECRET))
    server.start([sys.executable, "-m", "radius_proxy", "serve", "-c", str(config)],
                 ready=lambda: True)
    return server


# test-servers.md section 1, cut down to one virtual server; no per-request auth logging,
# recv_buff as in section 8; M-A required in requests and added to every reply.
RADIUSD_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
raddbdir = {d}
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
logdir = ${{raddbdir}}/log
radacctdir = ${{logdir}}/radacct
run_dir = ${{raddbdir}}/run
db_dir = ${{raddbdir}}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/radiusd.pid
name = radiusd
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
	destination = files
	file = ${{logdir}}/radius.log
	colourise = no
	auth = no
}}
security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}}
thread pool {{
	start_servers = 5
	max_servers = 32
	min_spare_servers = 3
	max_spare_servers = 10
	max_requests_per_server = 0
	auto_limit_acct = no
}}
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


def start_freeradius(work: Path) -> Server:
    binary = shutil.which("freeradius", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        raise RuntimeError("freeradius is not installed (apt-get install freeradius)")
    d = work / "freeradius"
    (d / "log").mkdir(parents=True)
    (d / "run").mkdir()
    server = Server("FreeRADIUS", free_udp_port(), d / "stdout.log")
    (d / "radiusd.conf").write_text(RADIUSD_CONF.format(d=d, secret=SECRET, port=server.port))
    (d / "users").write_text(f'{USER}\tCleartext-Password := "{PASSWORD}"\n')
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
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyrad": importlib.metadata.version("pyrad"),
        "radius_proxy": importlib.metadata.version("radius-proxy"),
        "freeradius": fr_version.group(1) if fr_version else "unknown",
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
    socket_drops: int  # at the server's socket


def measure(server: Server, factory: AccessRequestFactory, *, seconds: float, warmup: float,
            workers: int, window: int, max_rate: float = MAX_RATE) -> Round:
    marks: dict[str, Any] = {}

    def start() -> None:
        marks["cpu0"], marks["busy0"] = server.cpu_seconds(), busy_jiffies()
        marks["drops0"] = server.socket_drops()

    def end() -> None:
        marks["cpu1"], marks["busy1"] = server.cpu_seconds(), busy_jiffies()
        marks["drops1"] = server.socket_drops()

    load = run_load(("127.0.0.1", server.port), SECRET.encode(), factory, duration=seconds,
                    warmup=warmup, workers=workers, window=window,
                    max_requests=int(max_rate * (warmup + seconds)), timeout=2.0,
                    on_window_start=start, on_window_end=end)
    (b0, i0, t0), (b1, i1, t1) = marks["busy0"], marks["busy1"]
    return Round(load, marks["cpu1"] - marks["cpu0"], (b1 - b0) / max(1, t1 - t0),
                 (i1 - i0) / max(1, t1 - t0), marks["drops1"] - marks["drops0"])


@dataclass
class Summary:
    name: str
    rounds: list[Round]
    idle: LoadResult  # one request in flight
    rss_mib: float
    nproc: int
    notes: list[str] = field(default_factory=list)

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
        return max(0.0, busy - self.server_cores - self.generator_cores - self.softirq_cores)

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
        stray = sum(x.stray for x in loads)
        if stray:
            out.append(f"{stray} stray replies (late or duplicated)")
        return out


# --- report ----------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def table(proxy: Summary, fr: Summary) -> list[tuple[str, str, str]]:
    def both(f: Callable[[Summary], str]) -> tuple[str, str]:
        return f(proxy), f(fr)

    rows = [
        ("Access-Requests/s answered (median of rounds)",
         *both(lambda s: f"**{fmt_rate(s.rate)}**")),
        ("rounds", *both(lambda s: " / ".join(fmt_rate(r) for r in s.rates))),
        ("latency under that load, p50 / p99 (ms)",
         *both(lambda s: f"{s.latency(0.5):.2f} / {s.latency(0.99):.2f}")),
        ("latency with 1 request in flight, p50 / p99 (ms)",
         *both(lambda s: f"{s.idle.percentile(0.5):.3f} / {s.idle.percentile(0.99):.3f}")),
        ("rate with 1 request in flight (req/s)", *both(lambda s: fmt_rate(s.idle.rate))),
        ("server CPU per request (µs)", *both(lambda s: f"{s.cpu_per_request_us:.0f}")),
        ("server CPU used under load (cores)", *both(lambda s: f"{s.server_cores:.2f}")),
        ("load generator CPU (cores)", *both(lambda s: f"{s.generator_cores:.2f}")),
        ("kernel irq + softirq CPU (cores)", *both(lambda s: f"{s.softirq_cores:.2f}")),
        ("busy CPU charged to none of these (cores)",
         *both(lambda s: f"{s.other_cores:.2f}")),
        ("whole machine busy (% of all cores)", *both(lambda s: f"{100 * s.machine_busy:.0f}")),
        ("lost requests / drops at the server's socket",
         *both(lambda s: f"{s.lost} / {s.socket_drops}")),
        ("server RSS after the run (MiB)", *both(lambda s: f"{s.rss_mib:.0f}")),
    ]
    return rows


def limits(proxy: Summary, fr: Summary) -> list[str]:
    """What bounds each figure, read from the CPU numbers rather than assumed."""
    out = []
    ceiling = 1e6 / proxy.cpu_per_request_us
    if proxy.server_cores >= 0.85:
        out.append(
            f"radius-proxy: its single event-loop thread is CPU-bound ({proxy.server_cores:.2f} "
            f"cores used, {proxy.cpu_per_request_us:.0f} µs per request, so about "
            f"{fmt_rate(ceiling)}/s is what one core gives). More load does not help: the "
            f"generator used only {proxy.generator_cores:.2f} cores here and drove FreeRADIUS "
            f"{fr.rate / max(1.0, proxy.rate):.1f}x as fast with the same settings.")
    else:
        out.append(
            f"radius-proxy used {proxy.server_cores:.2f} cores, less than its one thread "
            f"could; at {proxy.cpu_per_request_us:.0f} µs per request a core would give "
            f"about {fmt_rate(ceiling)}/s. Look at the machine load (other processes).")
    fr_core = 1e6 / fr.cpu_per_request_us
    if fr.machine_busy >= 0.85:
        out.append(
            f"FreeRADIUS: the machine is saturated ({100 * fr.machine_busy:.0f} % of "
            f"{fr.nproc} cores busy: FreeRADIUS {fr.server_cores:.2f}, the Python load "
            f"generator {fr.generator_cores:.2f}, softirq {fr.softirq_cores:.2f}, charged "
            f"to none {fr.other_cores:.2f}). Its figure is a lower bound set by sharing "
            f"the cores with the generator; at {fr.cpu_per_request_us:.0f} µs per request "
            f"one core of its own would serve about {fmt_rate(fr_core)}/s. The throughput "
            "ratio therefore flatters radius-proxy; the CPU-per-request ratio is the steadier "
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


def render(info: dict[str, str], proxy: Summary, fr: Summary, args: argparse.Namespace,
           when: str, total: float) -> str:
    rows = table(proxy, fr)
    ratio = proxy.rate / fr.rate if fr.rate else float("nan")
    lines = [
        SECTION,
        "",
        f"Measured {when} with `.venv/bin/python bench/core_throughput.py --seconds "
        f"{args.seconds:g}` ({total:.0f} s in all). No target yet: these are the figures to "
        "beat.",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}, Linux {info['kernel']}; "
        f"Python {info['python']}, pyrad {info['pyrad']}, radius-proxy {info['radius_proxy']} "
        f"({info['commit']}), "
        f"FreeRADIUS {info['freeradius']}. The load generator runs on the same cores as the "
        f"server under test; the machine was {info['busy_before']} % busy just before the "
        "run (other processes).",
        "",
        "| | radius-proxy | FreeRADIUS |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        "",
        f"**Ratio radius-proxy / FreeRADIUS: {ratio:.2f}** (throughput); CPU per request "
        f"{proxy.cpu_per_request_us / fr.cpu_per_request_us:.1f}x FreeRADIUS's.",
        "",
        "What limits the figures:",
        "",
        *[f"- {text}" for text in limits(proxy, fr)],
        "",
        "Method:",
        "",
        "- radius-proxy: `python -m radius_proxy serve` with primary backend `none`, identity "
        "source `file` without a mapping file and `no_secsign_id = \"accept\"`, so each "
        "request runs the packet checks, Message-Authenticator check, duplicate cache, "
        "pipeline (primary, identity, policy) and a signed Access-Accept, with no backend I/O; "
        "`require_message_authenticator = true`; `[secsign]` points at a closed loopback "
        "port, which only the start-up self-test tries; logging at `warning`, default "
        "`reply_cache_seconds` (30) and UDP receive buffer (`rmem_default` "
        f"{info['rmem_default']}).",
        "- FreeRADIUS: `freeradius -f` (threaded, pool 5..32), a private minimal config "
        "(test-servers.md §1, one virtual server), the user in the `users` file with "
        "`Cleartext-Password` checked by `pap`, Message-Authenticator required in requests "
        "and added to every reply, no auth logging, `recv_buff = 4194304`.",
        f"- Load: `bench/loadgen.py`, {args.workers} worker processes, each with one "
        f"non-blocking UDP socket and {args.window} Access-Requests in flight "
        f"({args.workers * args.window} in all), matched by Identifier. Requests carry "
        "User-Name, User-Password, NAS-Identifier and Message-Authenticator; the template is "
        "built by pyrad and every request gets a fresh Request Authenticator, so no server "
        "answers from its duplicate cache. Pools are built before the clock starts. Every "
        "16th reply's Response Authenticator is checked.",
        f"- {args.rounds} rounds per server, alternating, each {args.seconds / args.rounds:g} s "
        f"measured after {args.warmup:g} s warm-up; only replies inside the window count. "
        "Latency is per request (send to reply) under that load, and separately with one "
        f"request in flight ({args.idle_seconds:g} s, one worker).",
        "- Server CPU: utime + stime from `/proc/<pid>/stat` (all threads) across each "
        "window; divided by the replies in the window. Machine load from `/proc/stat`; "
        "it includes anything else running on the machine.",
    ]
    problems = [f"{s.name}: {p}" for s in (proxy, fr) for p in s.problems()]
    if problems:
        lines += ["", "Anomalies in this run:", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace only this benchmark's section of docs/performance.md."""
    perf_doc.write_section(path, SECTION, section)


def print_table(proxy: Summary, fr: Summary) -> None:
    rows = [("", "radius-proxy", "FreeRADIUS"), *table(proxy, fr)]
    width = [max(len(r[i].replace("**", "")) for r in rows) for i in range(3)]
    for name, a, b in rows:
        print(f"{name:<{width[0]}}  {a.replace('**', ''):>{width[1]}}  "
              f"{b.replace('**', ''):>{width[2]}}")
    print(f"ratio radius-proxy / FreeRADIUS: {proxy.rate / fr.rate:.2f}")


def _expected_warning(line: str) -> bool:
    return "secsign" in line and ("backend_check" in line or "server_fallback" in line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=12.0,
                   help="measured seconds per server, split into rounds (default 12)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up per round (default 1 s)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--window", type=int, default=64, help="requests in flight per worker")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="the one-in-flight latency run per server (default 2 s)")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

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
    work = Path(tempfile.mkdtemp(prefix="bench-core-"))
    servers: list[Server] = []
    ok = False
    try:
        proxy = start_proxy(work)
        servers.append(proxy)
        fr = start_freeradius(work)
        servers.append(fr)
        print(f"radius-proxy pid {proxy.pid} on :{proxy.port}, FreeRADIUS pid {fr.pid} on "
              f":{fr.port}", flush=True)
        idle = {}
        for s in servers:
            idle[s.name] = run_load(("127.0.0.1", s.port), SECRET.encode(), factory,
                                    duration=args.idle_seconds, warmup=0.3, workers=1,
                                    window=1, max_requests=30_000)
            print(f"{s.name}: 1 in flight: {idle[s.name].rate:.0f}/s, p50 "
                  f"{idle[s.name].percentile(0.5):.3f} ms", flush=True)
        rounds: dict[str, list[Round]] = {s.name: [] for s in servers}
        cap = {s.name: float(MAX_RATE) for s in servers}  # pool sizes; later rounds adapt
        for i in range(args.rounds):
            for s in servers:
                r = measure(s, factory, seconds=args.seconds / args.rounds, warmup=args.warmup,
                            workers=args.workers, window=args.window, max_rate=cap[s.name])
                rounds[s.name].append(r)
                cap[s.name] = min(MAX_RATE, max(5000.0, 3 * r.load.rate))
                print(f"round {i + 1} {s.name}: {r.load.rate:.0f}/s, server CPU "
                      f"{r.server_cpu / max(1, r.load.answered) * 1e6:.0f} µs/req, p99 "
                      f"{r.load.percentile(0.99):.2f} ms", flush=True)
        rss = {s.name: s.rss_mib() for s in servers}
        ok = True
    finally:
        for s in reversed(servers):
            s.stop()
        proxy_log = servers[0].log.read_text(errors="replace") if servers else ""
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and configs kept in {work}", file=sys.stderr)

    results = [Summary(s.name, rounds[s.name], idle[s.name], rss[s.name], os.cpu_count() or 1)
               for s in servers]
    # the proxy logs at warning: anything it wrote is worth a look, except its start-up
    # self-test finding the (deliberately unreachable) SecSign ID server
    logged = [ln for ln in proxy_log.splitlines() if ln.strip() and not _expected_warning(ln)]
    if logged:
        results[0].notes.append(f"the proxy logged {len(logged)} line(s) at warning or above, "
                                f"first: `{logged[0][:200]}`")
    total = time.monotonic() - began
    print()
    print_table(*results)
    for s in results:
        for problem in s.problems():
            print(f"WARNING {s.name}: {problem}")
    if args.out:
        out = Path(args.out)
        write_section(out, render(info, *results, args, when, total))
        with contextlib.suppress(ValueError):
            out = out.resolve().relative_to(Path.cwd())
        print(f"wrote section {SECTION!r} of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
