"""State store cost per authentication: the Redis store against the memory store.

    .venv/bin/python bench/state_store.py [--logins N] [--concurrency C] [--out FILE]

One run starts a private redis-server on a free loopback port (no persistence) and always
stops it. Both stores run the store operations the pipeline makes for one login, in the
order it makes them (`radius_proxy/pipeline/flow.py`):

- push login: claim, count, finish (3 operations); with `remember_minutes`: the remember
  check first and the record after the accept (5);
- challenge login: remember check and put (first Access-Request), take, claim, count,
  finish, record (second);
- joined push: instance A claims, B's claim fails and B waits, A finishes: the time from
  A's finish to B holding the outcome (pub/sub delivery), Redis only.

Measured: time per login one at a time (p50/p99) and with C logins in flight (throughput);
Redis commands per login, both as the client sends them (= round trips: every operation is
one command, none pipelined) and as the server executes them (`INFO commandstats` deltas,
which also count the commands run inside the Lua scripts); redis-server CPU per login from
/proc/<pid>/stat, hence the logins/s one Redis core carries; memory per key from MEMORY
USAGE. The results go to stdout and replace the section "## State store (issue: shared
state)" of the output file (other sections kept; the file is created if absent).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report as perf_doc  # noqa: E402
from radius_proxy.state import ChallengeContext, StateStore  # noqa: E402
from radius_proxy.state.memory import MemoryStore  # noqa: E402
from radius_proxy.state.redis import RedisStore  # noqa: E402
from radius_proxy.state.redis_support import KeySpace  # noqa: E402

SECTION = "## State store (issue: shared state)"
CLK_TCK = os.sysconf("SC_CLK_TCK")
USERS = 1000
CLAIM_TTL, OUTCOME_TTL, WINDOW, REMEMBER, CHALLENGE_TTL = 28.0, 30.0, 600.0, 600.0, 300.0

Login = Callable[[StateStore, int], Awaitable[None]]


# --- the logins, as the pipeline calls the store ---------------------------------------------

def _key(i: int) -> tuple[str, str]:
    user = f"user{i % USERS}"
    return user, f"{user}\x00bench-nas\x00198.51.100.{i % 250}:{i}"


async def push_login(store: StateStore, i: int) -> None:
    user, key = _key(i)
    assert await store.claim_push(key, CLAIM_TTL)
    await store.count_push(user, WINDOW)
    await store.finish_push(key, "approved", OUTCOME_TTL)


async def push_login_remember(store: StateStore, i: int) -> None:
    _, key = _key(i)
    if await store.is_remembered(key):
        return
    await push_login(store, i)
    await store.remember(key, REMEMBER)


async def challenge_login(store: StateStore, i: int) -> None:
    user, key = _key(i)
    if await store.is_remembered(key):
        return
    token = secrets.token_bytes(16)
    await store.put_challenge(token, ChallengeContext("secsign", "bench", user, f"{user}.id"),
                              CHALLENGE_TTL)
    assert await store.take_challenge(token) is not None
    await push_login(store, i)
    await store.remember(key, REMEMBER)


SCENARIOS: dict[str, tuple[str, Login]] = {
    "push": ("push login (claim, count, finish)", push_login),
    "push_remember": ("push login with remember_minutes (+ check, + record)",
                      push_login_remember),
    "challenge": ("challenge login with remember_minutes (2 Access-Requests)", challenge_login),
}


# --- Redis server and counting --------------------------------------------------------------

class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def version(self) -> str:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=False).stdout
        m = re.search(r"v=(\S+)", out)
        return m.group(1) if m else "unknown"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class CountingStore:
    """A RedisStore whose client counts the commands it sends (each is one round trip)."""

    def __init__(self, url: str, prefix: str) -> None:
        config = SimpleNamespace(backend="redis", redis_url=url, key_prefix=prefix,
                                 timeout_seconds=1.0)
        self.store = RedisStore(config)
        self.sent: Counter[str] = Counter()
        client: Any = self.store.redis
        inner = client.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            self.sent[str(args[0]).upper()] += 1
            return await inner(*args, **options)

        client.execute_command = counted


async def server_stats(store: RedisStore) -> Counter[str]:
    info = await store.redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()})


# --- measuring --------------------------------------------------------------------------------

@dataclass
class Result:
    sequential_us: list[float] = field(default_factory=list)
    concurrent_rate: float = 0.0
    client_cpu_us: float = 0.0
    redis_cpu_us: float | None = None
    sent: Counter[str] = field(default_factory=Counter)
    executed: Counter[str] = field(default_factory=Counter)

    @property
    def p50(self) -> float:
        return statistics.median(self.sequential_us)

    @property
    def p99(self) -> float:
        ordered = sorted(self.sequential_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(store: StateStore, login: Login, logins: int, concurrency: int,
                  offset: int, redis: RedisServer | None) -> Result:
    result = Result()
    for i in range(200):  # warm up: connections, script cache
        await login(store, offset - 1_000_000 + i)
    for i in range(logins):
        t0 = time.perf_counter()
        await login(store, offset + i)
        result.sequential_us.append((time.perf_counter() - t0) * 1e6)
    queue = iter(range(offset + logins, offset + 2 * logins))

    async def worker() -> None:
        for i in queue:
            await login(store, i)

    cpu0, redis0, t0 = process_cpu(), redis.cpu_seconds() if redis else 0.0, time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    result.concurrent_rate = logins / elapsed
    result.client_cpu_us = (process_cpu() - cpu0) / logins * 1e6
    if redis:
        result.redis_cpu_us = (redis.cpu_seconds() - redis0) / logins * 1e6
    return result


async def count_commands(url: str, login: Login, logins: int) -> tuple[Counter[str],
                                                                        Counter[str]]:
    """Commands per login: as sent by the client, and as executed by the server."""
    counting = CountingStore(url, f"count-{secrets.token_hex(4)}:")
    try:
        for i in range(20):
            await login(counting.store, -10_000 - i)  # scripts loaded
        before = await server_stats(counting.store)
        counting.sent.clear()
        for i in range(logins):
            await login(counting.store, i)
        sent = Counter(counting.sent)
        after = await server_stats(counting.store)
        executed = after - before
        executed["info"] = 0  # our own INFO
        return sent, +executed
    finally:
        await counting.store.close()


async def joined_push(url: str, rounds: int) -> list[float]:
    """Microseconds from A's finish to B's wait returning the outcome."""
    config = SimpleNamespace(backend="redis", redis_url=url, key_prefix="joined:",
                             timeout_seconds=1.0)
    a, b = RedisStore(config), RedisStore(config)
    delays = []
    try:
        for i in range(rounds):
            key = f"user{i}\x00bench-nas\x00station"
            assert await a.claim_push(key, CLAIM_TTL)
            assert not await b.claim_push(key, CLAIM_TTL)
            waiting = asyncio.create_task(b.wait_push(key, 5))
            await asyncio.sleep(0.002)
            t0 = time.perf_counter()
            await a.finish_push(key, "approved", OUTCOME_TTL)
            assert await waiting == "approved"
            delays.append((time.perf_counter() - t0) * 1e6)
    finally:
        await a.close()
        await b.close()
    return delays


async def key_sizes(url: str) -> dict[str, int]:
    config = SimpleNamespace(backend="redis", redis_url=url, key_prefix="radius-proxy:",
                             timeout_seconds=1.0)
    store = RedisStore(config)
    try:
        user, key = "someone", "someone\x00ssh-hosts\x00198.51.100.7"
        token = secrets.token_bytes(16)
        await store.put_challenge(token, ChallengeContext("secsign", "ssh-hosts", user,
                                                          "someone.example"), 300)
        await store.remember(key, 600)
        for _ in range(3):
            await store.count_push(user, 600)
        await store.claim_push(key, 28)
        keys = KeySpace("radius-proxy:")
        digest = keys.digest(key)
        names = {
            "challenge context": keys.challenge(token),
            "remembered login": keys.remember(key),
            "push counter (3 pushes)": keys.pushes(user),
            "push claim": keys.claim(digest),
        }
        sizes = {label: int(await store.redis.memory_usage(name) or 0)
                 for label, name in names.items()}
        await store.finish_push(key, "approved", 30)
        sizes["push outcome"] = int(await store.redis.memory_usage(keys.outcome(digest)) or 0)
        return sizes
    finally:
        await store.close()


# --- report -------------------------------------------------------------------------------

def fmt_counter(counter: Counter[str], per: int) -> str:
    return ", ".join(f"{name.upper()} {n / per:g}" for name, n in sorted(counter.items()))


def core_cpu_per_request(path: Path) -> float | None:
    """The proxy's CPU per Access-Request (µs), from the core throughput section, if any."""
    if not path.exists():
        return None
    m = re.search(r"\| server CPU per request \(µs\) \| ([\d.]+) \|", path.read_text())
    return float(m.group(1)) if m else None


def busy_percent(seconds: float = 1.0) -> float:
    """How busy the whole machine is right now (other processes), from /proc/stat."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "radius_proxy/"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {head}" + (" + uncommitted changes in radius_proxy/" if dirty else "")


def thousands(n: float) -> str:
    return f"{n:,.0f}".replace(",", "\u202f")


def report(args: argparse.Namespace, results: dict[str, dict[str, Result]],
           counts: dict[str, tuple[Counter[str], Counter[str]]], joined: list[float],
           sizes: dict[str, int], redis_version: str, seconds: float, busy: float) -> str:
    n = args.logins
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    import redis as redis_py

    rows = []
    for name, (label, _) in SCENARIOS.items():
        mem, red = results[name]["memory"], results[name]["redis"]
        sent, executed = counts[name]
        rows.append((label, mem, red, sum(sent.values()) / n, sum(executed.values()) / n))
    lines = [
        SECTION, "",
        f"Measured {when} with `.venv/bin/python bench/state_store.py --logins {n} "
        f"--concurrency {args.concurrency}` ({seconds:.0f} s in all).", "",
        f"Machine: {os.cpu_count()} CPUs, Linux {platform.release()}; Python "
        f"{platform.python_version()}, redis-py {redis_py.__version__}, Redis {redis_version} "
        f"on loopback (no persistence), radius-proxy {git_commit()}. The store's client and "
        f"redis-server share the machine's cores; the machine was {busy:.0f} % busy just "
        "before the run (other processes), so the times carry that noise.", "",
        "| per login | memory store | Redis store |",
        "|---|---|---|",
    ]
    for label, mem, red, sent_n, exec_n in rows:
        lines += [
            f"| **{label}**: one at a time, p50 / p99 (µs) | {mem.p50:.1f} / {mem.p99:.1f} "
            f"| {red.p50:.0f} / {red.p99:.0f} |",
            f"| {args.concurrency} in flight: logins/s (client CPU per login, µs) | "
            f"{thousands(mem.concurrent_rate)} ({mem.client_cpu_us:.0f}) | "
            f"{thousands(red.concurrent_rate)} ({red.client_cpu_us:.0f}) |",
            f"| Redis commands sent = round trips; executed incl. inside scripts | - | "
            f"**{sent_n:g}**; {exec_n:g} |",
            f"| redis-server CPU per login (µs) | - | {red.redis_cpu_us:.1f} |",
        ]
    lines += ["", "Commands per login, by name:", ""]
    for name, (label, _) in SCENARIOS.items():
        sent, executed = counts[name]
        lines.append(f"- {label}: sent {fmt_counter(sent, n)}; executed "
                     f"{fmt_counter(executed, n)}.")
    push = results["push_remember"]["redis"]
    per_core = 1e6 / push.redis_cpu_us if push.redis_cpu_us else 0.0
    trips = sum(counts["push_remember"][0].values()) / n
    executed = sum(counts["push_remember"][1].values()) / n
    request_cpu = core_cpu_per_request(Path(args.out))
    lines += [
        "",
        f"Joined push (instance B waits for A's outcome): from A's finish to B holding the "
        f"outcome, p50 {statistics.median(joined) / 1000:.2f} ms, max "
        f"{max(joined) / 1000:.2f} ms ({len(joined)} rounds).", "",
        "Redis memory per key (MEMORY USAGE, default prefix): " + ", ".join(
            f"{k} {v} B" for k, v in sizes.items()) + ".", "",
        "What it means:", "",
        f"- Redis spends {push.redis_cpu_us:.0f} µs of its one core per push login with "
        f"remember_minutes ({trips:g} round trips, {executed:g} commands): one shard carries "
        f"about "
        f"**{thousands(per_core)} logins/s** before that core is busy. On this machine most "
        "of it is per-round-trip system-call cost, not command work.",
    ]
    if request_cpu:
        instance = 1e6 / (request_cpu + push.client_cpu_us)
        lines.append(
            f"- A proxy instance spends about {request_cpu:.0f} µs on the request itself "
            f"(section Core throughput) plus {push.client_cpu_us:.0f} µs in the Redis client "
            f"per push login, so one instance core tops out near {thousands(instance)} push "
            f"logins/s (less with the ID server's HTTP calls) and one Redis shard keeps up "
            f"with about **{per_core / instance:.0f} instances** running flat out.")
    lines += [
        "- Push logins arrive at human pace: 10 000 users logging in within 15 minutes are "
        "11 logins/s. One shard, with a replica and Sentinel for availability, carries any "
        "realistic number of instances; add instances for availability, not for Redis.",
        f"- Latency: the Redis store adds about "
        f"{(push.p50 - results['push_remember']['memory'].p50) / 1000:.1f} ms per login "
        f"here ({trips:g} round trips on loopback); over a LAN add as many network round "
        "trips. Against a push that takes seconds on a phone, neither matters. A push pending "
        "longer than 10 s adds one lease renewal (EVALSHA) per 10 s; the benchmark's pushes "
        "end at once.",
        "", "Method:", "",
        "- Both stores run in this process on one event loop; the Redis store talks to a "
        "private redis-server (`--save \"\" --appendonly no`) over loopback TCP.",
        f"- Sequential: {n} logins one after another, timed each. Concurrent: {n} more logins "
        f"spread over {args.concurrency} tasks; logins/s = logins / wall time, client CPU "
        "from getrusage, redis-server CPU from /proc/<pid>/stat over the same window.",
        "- Commands: the client's `execute_command` is wrapped to count what is sent (each "
        "call is one round trip); `INFO commandstats` before and after counts what Redis "
        "executed, which includes the commands inside the Lua scripts (claim, count, finish).",
        f"- Users cycle through {USERS} names, so push counters hold several entries, as in "
        "production; each login has its own claim key.",
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace only this benchmark's section of docs/performance.md."""
    perf_doc.write_section(path, SECTION, section)


async def run(args: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    results: dict[str, dict[str, Result]] = {}
    counts = {}
    for offset, (name, (label, login)) in enumerate(SCENARIOS.items()):
        print(f"{label} ...", flush=True)
        memory = MemoryStore()
        store = RedisStore(SimpleNamespace(backend="redis", redis_url=redis.url,
                                           key_prefix=f"{name}:", timeout_seconds=1.0))
        try:
            base = (offset + 1) * 10_000_000
            results[name] = {
                "memory": await measure(memory, login, args.logins, args.concurrency, base,
                                        None),
                "redis": await measure(store, login, args.logins, args.concurrency, base,
                                       redis),
            }
        finally:
            await store.close()
        counts[name] = await count_commands(redis.url, login, args.logins)
    joined = await joined_push(redis.url, min(args.logins, 500))
    sizes = await key_sizes(redis.url)
    return {"results": results, "counts": counts, "joined": joined, "sizes": sizes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logins", type=int, default=3000, help="logins per measurement")
    p.add_argument("--concurrency", type=int, default=64, help="logins in flight")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"))
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    busy = busy_percent()
    started = time.monotonic()
    redis = RedisServer()
    try:
        data = asyncio.run(run(args, redis))
        version = redis.version()
    finally:
        redis.stop()
    section = report(args, data["results"], data["counts"], data["joined"], data["sizes"],
                     version, time.monotonic() - started, busy)
    print(section)
    if not args.no_write:
        write_section(Path(args.out), section)
        print(f"wrote the section to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
