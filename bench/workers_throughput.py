"""Core throughput with `server.workers` = 1 and 2: does a second worker use a second core?

    .venv/bin/python bench/workers_throughput.py [--rounds 3] [--seconds 4] [--workers 1 2]

The proxy of `bench/core_throughput.py` (primary "none", no push, logging at warning),
plus `[state] backend = "redis"` on a private redis-server (workers > 1 require it; the
core path does not touch it, which its CPU reading confirms). One proxy per worker count,
all started at once, measured in alternating rounds with `bench/loadgen.py`.

The generator uses several processes with one socket each, because the kernel spreads by
source address and port: with one or two sockets, one worker could get all the load. The
server's CPU is the supervisor's plus its workers' (/proc/<pid>/stat of each), so CPU per
request includes what the extra processes cost. Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.core_throughput import (  # noqa: E402
    CLK_TCK,
    NAS_ID,
    PASSWORD,
    PROXY_TOML,
    SECRET,
    USER,
    Server,
    busy_jiffies,
    free_udp_port,
)
from bench.loadgen import AccessRequestFactory, run_load  # noqa: E402


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of pid and each of its children (the workers), by pid."""
    return {p: _cpu(p) for p in [pid, *_children(pid)]}


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = _free_tcp_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def _listening(http: int, workers: int) -> bool:
    """Every worker wrote its status (it bound the port); readiness needs no ID server here."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
    except OSError:
        return False
    states = [w["status"] for w in body.get("workers", {}).values()]
    return len(states) == workers and all(s in ("ready", "unready") for s in states)


def start_proxy(work: Path, workers: int, redis_port: int) -> Server:
    server = Server(f"workers={workers}", free_udp_port(), work / f"proxy-{workers}.log")
    http = _free_tcp_port()
    text = PROXY_TOML.format(port=server.port, secret=SECRET)
    text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    text = text.replace('[http]\nlisten = ""', f'[http]\nlisten = "127.0.0.1:{http}"')
    text += f'\n[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{redis_port}/0"\n'
    config = work / f"radius-proxy-{workers}.toml"
    config.write_text(text)
    server.start([sys.executable, "-m", "radius_proxy", "serve", "-c", str(config)],
                 ready=lambda: workers == 1 or _listening(http, workers))
    return server


#: CPU seconds by pid, redis-server's CPU seconds, /proc/stat jiffies (busy, irq, total).
Mark = tuple[dict[int, float], float, tuple[int, int, int]]


@dataclass
class Reading:
    rate: float
    us_per_request: float
    server_cores: float
    per_process_cores: list[float]
    redis_cores: float
    generator_cores: float
    machine_busy: float
    p99_ms: float
    lost: int


def measure(server: Server, redis_pid: int, factory: AccessRequestFactory,
            args: argparse.Namespace) -> Reading:
    marks: dict[str, Mark] = {}

    def mark(name: str) -> None:
        marks[name] = (tree_cpu(server.pid), _cpu(redis_pid), busy_jiffies())

    load = run_load(("127.0.0.1", server.port), SECRET.encode(), factory,
                    duration=args.seconds, warmup=args.warmup, workers=args.generators,
                    window=args.window, max_requests=int(40_000 * (args.seconds + args.warmup)),
                    on_window_start=lambda: mark("a"), on_window_end=lambda: mark("b"))
    cpu0, r0, (b0, _, t0) = marks["a"]
    cpu1, r1, (b1, _, t1) = marks["b"]
    window = load.seconds
    per = [(cpu1[p] - cpu0.get(p, 0.0)) / window for p in cpu1]
    used = sum(per) * window
    return Reading(load.rate, used / max(1, load.answered) * 1e6, sum(per), per,
                   (r1 - r0) / window, load.generator_cpu_seconds / window,
                   (b1 - b0) / max(1, t1 - t0), load.percentile(0.99), load.lost)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="measured per round")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--generators", type=int, default=6, help="load generator processes")
    p.add_argument("--window", type=int, default=32, help="requests in flight per generator")
    args = p.parse_args()
    factory = AccessRequestFactory(SECRET.encode(), PASSWORD,
                                   [("User-Name", USER), ("NAS-Identifier", NAS_ID)])
    work = Path(tempfile.mkdtemp(prefix="wkh_bench-"))
    redis, redis_port = start_redis(work)
    servers: list[Server] = []
    readings: dict[str, list[Reading]] = {}
    try:
        for n in args.workers:
            servers.append(start_proxy(work, n, redis_port))
        time.sleep(2.0)  # start-up self tests and imports settle
        for i in range(args.rounds):
            for s in servers:
                r = measure(s, redis.pid, factory, args)
                readings.setdefault(s.name, []).append(r)
                print(f"round {i + 1} {s.name}: {r.rate:.0f}/s, {r.us_per_request:.0f} µs/req, "
                      f"server {r.server_cores:.2f} cores "
                      f"({' + '.join(f'{c:.2f}' for c in r.per_process_cores)}), "
                      f"redis {r.redis_cores:.2f}, generator {r.generator_cores:.2f}, "
                      f"machine {100 * r.machine_busy:.0f} %, p99 {r.p99_ms:.1f} ms, "
                      f"lost {r.lost}", flush=True)
    finally:
        for s in servers:
            s.stop()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| | " + " | ".join(readings) + " |\n|---|" + "---|" * len(readings))
    rows: list[tuple[str, Callable[[Reading], str]]] = [
        ("Access-Requests/s (median)", lambda r: f"{r.rate:,.0f}"),
        ("server CPU per request (µs)", lambda r: f"{r.us_per_request:.0f}"),
        ("server CPU used (cores)", lambda r: f"{r.server_cores:.2f}"),
        ("generator CPU (cores)", lambda r: f"{r.generator_cores:.2f}"),
        ("redis-server CPU (cores)", lambda r: f"{r.redis_cores:.2f}"),
        ("whole machine busy (%)", lambda r: f"{100 * r.machine_busy:.0f}"),
        ("p99 latency under load (ms)", lambda r: f"{r.p99_ms:.1f}")]
    for label, show in rows:
        cells = []
        for rs in readings.values():
            median = sorted(rs, key=lambda r: r.rate)[len(rs) // 2]
            cells.append(show(median))
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name, rs in readings.items():
        print(f"{name}: rounds {' / '.join(f'{r.rate:.0f}' for r in rs)}; "
              f"median µs/req {statistics.median(r.us_per_request for r in rs):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
