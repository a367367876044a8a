"""Full pipeline throughput: LDAP password check against slapd + SecSign push, on this machine.

    .venv/bin/python bench/pipeline_throughput.py [--seconds N] [--users N]
                                                  [--profile-seconds N] [--out FILE]

One run starts three servers on free loopback ports and always stops them:

- slapd (tests/servers/slapd.py: private config, mdb, the AD-like schema) with `--users`
  extra accounts (default 1000), each with a `secsignId`; no group memberships;
- the SecSign ID simulator in a process of its own, rule `*=approve:0` (every push is
  approved the moment it is first looked at), keeping finished sessions for 5 s;
- radius-proxy (`python -m radius_proxy serve`): primary `ldap` (search-then-bind as the
  service account of slapd.py), identity `ldap`, SecSign REST against the simulator,
  `poll_interval_seconds` 0.05, all else default (`max_connections` 32, `pool_size` 8),
  `max_pushes_per_user` raised to its maximum so repeated logins are not rate limited,
  logging at info as JSON to a file (one audit line per login).

The load is `bench/loadgen.py` (closed loop, `--workers` processes x `--window` requests in
flight), every request a different user in turn and a different Calling-Station-Id. Counted
in the measuring window: Access-Accepts per second; CPU seconds per authentication of the
proxy, slapd and the simulator (each process's /proc/<pid>/stat); latency p50/p99; the audit
log's `primary_ms` and `second_factor_ms`; the LDAP backend's cost per call. Then a separate round
under the same load samples the proxy with py-spy (`--profile-seconds`, default 10) and
reports where its GIL time goes. The result goes to stdout and replaces the
section "## Full pipeline throughput" of the output file (other sections kept).

This module also holds the harness the other pipeline benchmarks (`wait_at_scale.py`,
`overhead.py`) share: the simulator process, the slapd with users, the proxy's config, the
distinct-user request factory and py-spy.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import hmac
import http.client
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report as perf_doc  # noqa: E402
from bench.core_throughput import (  # noqa: E402
    SECRET,
    Server,
    busy_jiffies,
    free_udp_port,
    machine,
    machine_busy,
    process_cpu,
    verdict,
)
from bench.loadgen import hide_password, percentile, run_load  # noqa: E402

SECTION = "## Full pipeline throughput"
NAS_ID = "bench-nas"
PIN_ACCOUNT, PIN_PASSWORD = "bench", "bench-pin-password"  # loopback simulator, throwaway
TARGET_RATE = 500.0  # authentications/s on a 2-core machine (the issue)


# --- small process readings ----------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status (kB for the Vm* keys); 0 when absent."""
    found = re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found.group(1)) if found else 0


def proc_rss_mib(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def fmt(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}".replace(",", " ")


def pct(values: Sequence[float], q: float) -> float:
    return percentile(sorted(values), q)


# --- the SecSign ID simulator, in a process of its own ---------------------------------------


class _BenchApp:
    """The simulator's app plus `GET /bench/stats`: requests by kind and handler time."""

    def __init__(self, sim: Any) -> None:
        from radius_proxy.simulator.app import SimulatorApp

        self.sim = sim
        self.app = SimulatorApp(sim)
        self.kinds: collections.Counter[str] = collections.Counter()
        self.busy = 0.0

    def __call__(self, request: Any) -> Any:
        from radius_proxy.simulator.protocol import json_response
        from radius_proxy.simulator.sessions import WAITING

        if request.path == "/bench/stats":
            with self.sim._lock:
                now = self.sim._clock()
                waiting = 0
                for session in self.sim._sessions.values():
                    self.sim._advance(session, now)
                    waiting += session.info.state in WAITING
                total = len(self.sim._sessions)
            return json_response(200, {"kinds": dict(self.kinds), "busy_seconds": self.busy,
                                       "sessions": total, "waiting": waiting})
        t0 = time.perf_counter()
        path = request.path
        if path.startswith("/rest/v2/AuthSession"):
            kind = {"DELETE": "cancel"}.get(request.method,
                                            "state" if path.count("/") > 3 else "start")
        elif path.startswith("/simulator/api"):
            kind = "control"
        else:
            kind = "other"
        self.kinds[kind] += 1
        try:
            return self.app(request)
        finally:
            self.busy += time.perf_counter() - t0


def simulator_child(argv: Sequence[str]) -> int:
    """Entry of the simulator process: prints {"port", "epoch_offset"} once listening."""
    p = argparse.ArgumentParser()
    p.add_argument("--rule", action="append", default=[])
    p.add_argument("--lifetime", type=float, default=600.0)
    args = p.parse_args(argv)

    from radius_proxy.simulator import sessions as sm
    from radius_proxy.simulator.httpserver import IDLE_TIMEOUT_SECONDS, HttpServer
    from radius_proxy.simulator.rules import parse_rules

    # bench only: keep finished sessions briefly (memory), allow more than the default at once
    sim = sm.Simulator(parse_rules(args.rule), session_lifetime_seconds=args.lifetime,
                       retain_seconds=5.0, max_sessions=200_000)

    async def serve() -> None:
        http = HttpServer(_BenchApp(sim), IDLE_TIMEOUT_SECONDS)
        await http.start("127.0.0.1", 0)
        print(json.dumps({"port": http.port, "epoch_offset": sim._epoch_offset}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await http.close()

    asyncio.run(serve())
    return 0


class SimulatorProcess:
    """The simulator started as a child process of this bench, stopped by its PID."""

    def __init__(self, work: Path, rules: Sequence[str], *, lifetime: float = 600.0) -> None:
        self.log = work / "simulator.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "--simulator-child",
                "--lifetime", str(lifetime), *[f"--rule={r}" for r in rules]]
        self._err = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._err,
                                     stdin=subprocess.DEVNULL, cwd=REPO)
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if line.strip():
                break
        try:
            hello = json.loads(line)
        except ValueError:
            self.stop()
            raise RuntimeError(
                f"simulator did not start: {self.log.read_text()[-2000:]}") from None
        self.port = int(hello["port"])
        self.epoch_offset = float(hello["epoch_offset"])  # wall time - CLOCK_MONOTONIC
        self.url = f"http://127.0.0.1:{self.port}"
        self._conn: http.client.HTTPConnection | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """One control call on a kept-alive connection; the JSON answer."""
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                data = json.dumps(body).encode() if body is not None else None
                headers = {"Content-Type": "application/json"} if method == "POST" else {}
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
                return json.loads(payload) if payload else None
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        return None

    def stats(self) -> dict[str, Any]:
        return dict(self.request("GET", "/bench/stats"))

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


# --- slapd with many users -----------------------------------------------------------------


def bench_user(i: int) -> tuple[str, str]:
    return f"bench{i:05d}", f"pw-bench{i:05d}"


class BenchSlapd:
    """tests/servers/slapd.py's slapd, plus `users` accounts bench00000... with a secsignId."""

    def __init__(self, work: Path, users: int) -> None:
        from tests.servers import slapd as sl

        self.sl = sl
        self.users = [bench_user(i) for i in range(users)]
        self.server = sl.Slapd(work / "slapd")
        try:
            conn = self.server.admin()
            try:
                for name, password in self.users:
                    conn.add(f"uid={name},{sl.PEOPLE}", ["inetOrgPerson", "adLikeUser"],
                             {"uid": name, "cn": name, "sn": "Bench", "sAMAccountName": name,
                              "userPassword": sl.ssha(password),
                              "secsignId": f"{name}.secsign"})
            finally:
                conn.unbind()
        except BaseException:
            self.server.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    @property
    def url(self) -> str:
        return self.server.ldap_url

    def stop(self) -> None:
        self.server.stop()


def slapd_version() -> str:
    out = subprocess.run(["/usr/sbin/slapd", "-VV"], capture_output=True, text=True,
                         check=False, timeout=10)
    found = re.search(r"slapd ([\d.]+)", out.stdout + out.stderr)
    return found.group(1) if found else "unknown"


def ldap_client_costs(ldap: BenchSlapd, n: int = 500) -> list[tuple[str, float, float]]:
    """The proxy's LDAP backend (`LdapDirectory`, its own client on the event loop) per call,
    measured in this process against the bench slapd: (what, client CPU µs, slapd CPU µs).
    One call at a time, then 32 in flight (how the server runs them under load)."""
    import resource

    from radius_proxy.backends.ldap_directory import LdapDirectory
    from radius_proxy.config import LdapConfig, Secret
    from radius_proxy.log import setup_logging
    from radius_proxy.pipeline.ports import AuthRequest, PrimaryOutcome, PrimaryResult

    setup_logging("json", "warning")  # no debug lines, as in the proxy (which logs at info)
    sl = ldap.sl
    users = ldap.users[:200]
    config = LdapConfig(urls=(ldap.url,), bind_dn=sl.SERVICE_DN,
                        bind_password=Secret(sl.SERVICE_PASSWORD), base_dn=sl.SUFFIX,
                        user_filter=sl.USER_FILTER, nested_groups=False, timeout_seconds=5.0)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def request(i: int) -> AuthRequest:
        name, password = users[i % len(users)]
        return AuthRequest(request_id=str(i), client="bench", client_ip="127.0.0.1",
                           username=name, password=password.encode())

    nobody = PrimaryResult(PrimaryOutcome.ACCEPT)  # no entry of ours: lookup searches

    async def measure(directory: LdapDirectory, parallel: int) -> list[tuple[float, float]]:
        async def login(i: int) -> None:
            result = await directory.authenticate(request(i))
            assert result.outcome is PrimaryOutcome.ACCEPT, result

        async def lookup(i: int) -> None:
            found = await directory.lookup(users[i % len(users)][0], nobody)
            assert found is not None

        out = []
        for op in (login, lookup):
            await op(0)
            c0, s0 = cpu(), process_cpu(ldap.pid)
            for start in range(0, n, parallel):
                await asyncio.gather(*(op(i) for i in range(start, start + parallel)))
            out.append(((cpu() - c0) / n * 1e6, (process_cpu(ldap.pid) - s0) / n * 1e6))
        return out

    async def run() -> list[tuple[str, float, float]]:
        directory = LdapDirectory(config)
        try:
            rows = []
            for parallel in (1, 32):
                (lc, ls), (kc, ks) = await measure(directory, parallel)
                rows += [(f"login: search as the service account + bind as the user "
                          f"(`authenticate`), {parallel} in flight", lc, ls),
                         (f"identity only: the search (`lookup`), {parallel} in flight", kc, ks)]
            return rows
        finally:
            await directory.close()

    return asyncio.run(run())


# --- the proxy -----------------------------------------------------------------------------


def proxy_toml(*, port: int, simulator_url: str, log_file: Path, ldap_url: str | None,
               poll_interval: float, push_timeout: float = 50.0, nas_timeout: float = 60.0,
               max_pending: int = 10000, level: str = "info", identity: str = "ldap",
               no_secsign_id: str = "reject", extra_secsign: str = "") -> str:
    """A config for the pipeline benchmarks; `ldap_url` None means primary "none"."""
    from tests.servers import slapd as sl

    lines = [
        "[server]",
        f'listen = ["127.0.0.1:{port}"]',
        f"max_pending = {max_pending}",
        "",
        "[[clients]]",
        'name = "bench"',
        'networks = ["127.0.0.1/32"]',
        f'secret = "{SECRET}"',
        "require_message_authenticator = true",
        f"nas_timeout_seconds = {nas_timeout}",
        "",
        "[primary]",
        f'backend = "{"ldap" if ldap_url else "none"}"',
        "",
    ]
    if ldap_url:
        lines += [
            "[ldap]",
            f'urls = ["{ldap_url}"]',
            f'bind_dn = "{sl.SERVICE_DN}"',
            f'bind_password = "{sl.SERVICE_PASSWORD}"',
            f'base_dn = "{sl.PEOPLE}"',
            f'user_filter = "{sl.USER_FILTER}"',
            'secsign_id_attribute = "secsignId"',
            "",
        ]
    lines += [
        "[identity]",
        f'sources = ["{identity}"]',
        "",
        "[secsign]",
        'api = "rest"',
        f'servers = ["{simulator_url}"]',
        f'pin_account = "{PIN_ACCOUNT}"',
        f'pin_password = "{PIN_PASSWORD}"',
        f"poll_interval_seconds = {poll_interval}",
        f"push_timeout_seconds = {push_timeout}",
        extra_secsign,
        "",
        "[policy]",
        "max_pushes_per_user = 1000",
        "push_window_minutes = 0.1",
        f'no_secsign_id = "{no_secsign_id}"',
        "",
        "[logging]",
        'format = "json"',
        f'level = "{level}"',
        'destination = "file"',
        f'file = "{log_file}"',
        "",
        "[http]",
        'listen = ""',
        "",
    ]
    return "\n".join(lines)


def start_proxy(work: Path, toml_text: str, name: str = "radius-proxy") -> Server:
    """`python -m radius_proxy serve` on the config; ready when Status-Server is answered."""
    port = int(re.search(r'listen = \["127\.0\.0\.1:(\d+)"\]', toml_text).group(1))  # type: ignore[union-attr]
    server = Server(name, port, work / f"{name}.stdout")
    config = work / f"{name}.toml"
    config.write_text(toml_text)
    server.start([sys.executable, "-m", "radius_proxy", "serve", "-c", str(config)],
                 ready=lambda: True)
    return server


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The audit events (`auth` with a request_id) of a proxy log file."""
    return [e for e in read_json_lines(path) if e.get("event") == "auth" and "total_ms" in e]


def log_problems(path: Path) -> collections.Counter[str]:
    """Warning-or-worse events of a proxy log, by event name."""
    return collections.Counter(e.get("event", "?") for e in read_json_lines(path)
                               if e.get("level") in ("warning", "error", "critical"))


def wall(e: dict[str, Any]) -> float:
    """An audit line's ISO timestamp as Unix time."""
    return datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


# --- requests from many users ----------------------------------------------------------------


def _attr(kind: int, value: bytes) -> bytes:
    return bytes((kind, 2 + len(value))) + value


def station_id(index: int) -> str:
    return "02-" + "-".join(f"{b:02X}" for b in index.to_bytes(5, "big"))


class DistinctUsers:
    """PAP Access-Requests (User-Name, NAS-Identifier, Calling-Station-Id, User-Password,
    Message-Authenticator first, as `loadgen.AccessRequestFactory` lays them out): request
    number `index` is for user `index % len(users)` from Calling-Station-Id `station_id(index)`.

    As a loadgen factory (`factory(packet_id)`), a worker's k-th packet for an Identifier
    gets index (k * 256 + packet_id) * workers + worker: roughly the order they are sent,
    so the requests in flight are for different users, and no two workers repeat an index.
    """

    def __init__(self, secret: bytes, users: Sequence[tuple[str, str]], *, workers: int = 1,
                 nas_id: str = NAS_ID) -> None:
        self.secret = secret
        self.users = [(n.encode(), p.encode()) for n, p in users]
        self.nas = _attr(32, nas_id.encode())
        self.workers = workers
        self._worker: int | None = None
        self._count = [0] * 256
        self._check()

    def packet(self, packet_id: int, index: int) -> bytes:
        name, password = self.users[index % len(self.users)]
        authenticator = os.urandom(16)
        tail = (_attr(1, name) + self.nas + _attr(31, station_id(index).encode())
                + _attr(2, hide_password(password, self.secret, authenticator)))
        header = struct.pack("!BBH16s", 1, packet_id, 38 + len(tail), authenticator)
        mac = hmac.digest(self.secret, header + b"\x50\x12" + bytes(16) + tail, "md5")
        return header + b"\x50\x12" + mac + tail

    def __call__(self, packet_id: int) -> bytes:
        if self._worker is None:
            name = mp.current_process().name
            self._worker = int(name.rsplit("-", 1)[1]) if name.startswith("loadgen-") else 0
        k = self._count[packet_id]
        self._count[packet_id] = k + 1
        return self.packet(packet_id, (k * 256 + packet_id) * self.workers + self._worker)

    def _check(self) -> None:
        from pyrad import packet as rp

        from radius_proxy.protocol.dictionary import load_dictionary

        raw = self.packet(7, 3)
        pkt = rp.AuthPacket(packet=raw, secret=self.secret, dict=load_dictionary())
        name, password = self.users[3 % len(self.users)]
        if pkt.id != 7 or pkt.PwDecrypt(pkt[2][0]).encode() != password or \
                pkt["User-Name"][0].encode() != name or not pkt.verify_message_authenticator():
            raise AssertionError("DistinctUsers builds packets pyrad does not read back")


def status_server_packet(packet_id: int, secret: bytes) -> bytes:
    """A Status-Server with Message-Authenticator (RFC 5997), fresh authenticator."""
    authenticator = os.urandom(16)
    header = struct.pack("!BBH16s", 12, packet_id, 38, authenticator)
    mac = hmac.digest(secret, header + b"\x50\x12" + bytes(16), "md5")
    return header + b"\x50\x12" + mac


# --- py-spy --------------------------------------------------------------------------------


class PySpy:
    """`py-spy record --gil --format raw` on a PID for a bounded time; top functions after."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 100) -> None:
        binary = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:"
                              f"{os.environ.get('PATH', '')}")
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if binary is None:
            print("py-spy not found (pip install py-spy into the venv); no profile",
                  file=sys.stderr)
            return
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
             "--rate", str(rate), "--gil", "--nonblocking", "--format", "raw", "--output",
             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def top(self, n: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]],
                                        list[tuple[str, float]], int]:
        """(self time, inclusive time, categories) as shares of the GIL-holding samples,
        and the number of samples."""
        if not self.out.exists():
            return [], [], [], 0
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            weight = int(count)
            total += weight
            kinds[categorize(stack)] += weight
            frames = [_short_frame(f) for f in stack.split(";")[1:]]  # [0] is the thread
            if frames:
                own[frames[-1]] += weight
            for frame in set(frames):
                inclusive[frame] += weight
        if not total:
            return [], [], [], 0
        return ([(f, c / total) for f, c in own.most_common(n)],
                [(f, c / total) for f, c in inclusive.most_common()
                 if not any(g in f for g in _GENERIC)][:n],
                [(f, c / total) for f, c in kinds.most_common()], total)


#: Where a GIL-holding sample's time goes, by the frames on its stack (first match wins).
CATEGORIES = (
    ("HTTP client (secsign/aio_transport.py, http11.py)",
     ("aio_transport.py", "secsign/http11.py", "secsign/transport.py", "http/client.py")),
    ("LDAP client (backends/ldap_*.py)",
     ("ldap_directory.py", "ldap_client.py", "ldap_ber.py", "ldap_tlv.py", "ldap_filter.py",
      "ldap_pool.py", "ldap_entries.py")),
    ("logging (structlog, log.py)", ("structlog/", "radius_proxy/log.py")),
    ("RADIUS packets (pyrad, protocol/)", ("pyrad/", "radius_proxy/protocol/")),
    ("event loop and the rest (asyncio, server.py, pipeline/, secsign/client.py)", ("",)),
)


def categorize(stack: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in stack for n in needles):
            return name
    return CATEGORIES[-1][0]


#: Frames every sample of a thread has; left out of the inclusive list.
_GENERIC = ("_worker (", "Thread._bootstrap", "Thread.run (", "_WorkItem.run (", "runners.py",
            "run_forever (", "run_until_complete (", "_run_once (", "_serve (", "<module> (",
            "_run_code (", "main (radius_proxy/cli.py)", "Handle._run (")


def _short_frame(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)', site-packages paths trimmed."""
    found = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not found:
        return frame
    func, path = found.groups()
    path = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", path)
    path = path.replace(str(REPO) + "/", "")
    return f"{func} ({path})"


def print_profile(title: str, spy: PySpy, n: int = 12) -> list[str]:
    own, inclusive, kinds, samples = spy.top(n)
    lines = [f"{title} (py-spy --gil, {samples} GIL-holding samples):"]
    if not own:
        lines.append("  (no samples)")
    lines.append("  by part:")
    lines += [f"    {share * 100:5.1f} %  {name}" for name, share in kinds]
    lines.append("  self time:")
    lines += [f"    {share * 100:5.1f} %  {name}" for name, share in own]
    lines.append("  inclusive (without the frames every thread has):")
    lines += [f"    {share * 100:5.1f} %  {name}" for name, share in inclusive]
    print("\n".join(lines), flush=True)
    return lines


# --- report plumbing -----------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    info = machine()
    info.update({
        "slapd": slapd_version(),
        "structlog": importlib.metadata.version("structlog"),
        "loadavg": load_average(),
    })
    return info


def machine_line(info: dict[str, str]) -> str:
    return (f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}, Linux {info['kernel']}; "
            f"Python {info['python']}, radius-proxy {info['radius_proxy']} ({info['commit']}), "
            f"pyrad {info['pyrad']}, structlog {info['structlog']}, OpenLDAP slapd "
            f"{info['slapd']}. Everything (load generator, proxy, slapd, simulator) shares "
            f"these cores; the machine was "
            f"{info['busy_before']} % busy just before the run (load average "
            f"{info['loadavg']}: other engineers' tests run on it too).")


def stop_all(servers: Sequence[Any]) -> None:
    """Stop every server started here, last first; one failing does not keep the others up."""
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:  # report, and go on stopping the others
            print(f"stopping {type(server).__name__} failed: {exc}", file=sys.stderr)


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- the measurement -----------------------------------------------------------------------


@dataclass
class Window:
    """CPU and wall readings at the edges of a measuring window."""

    pids: dict[str, int]
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)
    busy0: tuple[int, int, int] = (0, 0, 0)
    busy1: tuple[int, int, int] = (0, 0, 0)
    wall0: float = 0.0
    wall1: float = 0.0

    def start(self) -> None:
        self.wall0 = time.time()
        self.cpu0 = {k: process_cpu(p) for k, p in self.pids.items()}
        self.busy0 = busy_jiffies()

    def end(self) -> None:
        self.wall1 = time.time()
        self.cpu1 = {k: process_cpu(p) for k, p in self.pids.items()}
        self.busy1 = busy_jiffies()

    def cpu(self, name: str) -> float:
        return self.cpu1[name] - self.cpu0[name]

    @property
    def machine_busy(self) -> float:
        return (self.busy1[0] - self.busy0[0]) / max(1, self.busy1[2] - self.busy0[2])


def run_pipeline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Any] = []
    result: dict[str, Any] = {}
    try:
        print(f"starting slapd with {args.users} users...", flush=True)
        ldap = BenchSlapd(work, args.users)
        servers.append(ldap)
        sim = SimulatorProcess(work, ["*=approve:0"], lifetime=30.0)
        servers.append(sim)
        log_file = work / "proxy.log"
        proxy = start_proxy(work, proxy_toml(
            port=free_udp_port(), simulator_url=sim.url, log_file=log_file,
            ldap_url=ldap.url, poll_interval=args.poll_interval))
        servers.append(proxy)
        print(f"proxy pid {proxy.pid} :{proxy.port}, slapd pid {ldap.pid}, simulator pid "
              f"{sim.pid} :{sim.port}", flush=True)
        factory = DistinctUsers(SECRET.encode(), ldap.users, workers=args.workers)
        # a short warm-up round: connections, first binds, code paths
        run_load(("127.0.0.1", proxy.port), SECRET.encode(), factory, duration=1.0,
                 warmup=0.5, workers=args.workers, window=8, max_requests=3000, timeout=5.0)
        win = Window({"proxy": proxy.pid, "slapd": ldap.pid, "simulator": sim.pid})
        spy: PySpy | None = None
        marks: dict[str, Any] = {}

        def begin() -> None:
            win.start()
            marks["sim0"] = sim.stats()

        def end() -> None:
            win.end()
            marks["sim1"] = sim.stats()

        drops0 = proxy.socket_drops()
        load = run_load(("127.0.0.1", proxy.port), SECRET.encode(), factory,
                        duration=args.seconds, warmup=args.warmup, workers=args.workers,
                        window=args.window, max_requests=int(2000 * (args.seconds + args.warmup)),
                        timeout=5.0, on_window_start=begin, on_window_end=end)
        result["drops"] = proxy.socket_drops() - drops0
        result["rss"] = {"proxy": proxy.rss_mib(), "slapd": proc_rss_mib(ldap.pid),
                         "simulator": proc_rss_mib(sim.pid)}
        result.update(load=load, win=win, **marks)
        if args.profile_seconds > 0:  # a separate, unmeasured round under the profiler
            print(f"profiling the proxy for {args.profile_seconds:g} s...", flush=True)

            def attach() -> None:
                nonlocal spy
                spy = PySpy(proxy.pid, args.profile_seconds, work / "proxy.pyspy.txt",
                            rate=250)

            run_load(("127.0.0.1", proxy.port), SECRET.encode(), factory,
                     duration=args.profile_seconds, warmup=1.0, workers=args.workers,
                     window=args.window, max_requests=int(2000 * (args.profile_seconds + 1)),
                     timeout=5.0, on_window_start=attach)
            if spy is not None:
                spy.wait()
                result["profile"] = print_profile("proxy profile", spy)
                result["profile_kinds"] = spy.top()[2]
        proxy.stop()
        result["ldap_costs"] = ldap_client_costs(ldap)
    finally:
        stop_all(servers)
    audits = [e for e in audit_lines(log_file) if win.wall0 <= wall(e) < win.wall1]
    result["audits"] = audits
    result["log_bytes_per_auth"] = log_file.stat().st_size / max(1, len(audit_lines(log_file)))
    result["problems"] = log_problems(log_file)
    return result


def render(info: dict[str, str], args: argparse.Namespace, r: dict[str, Any], when: str,
           total: float) -> tuple[str, list[str]]:
    load, win = r["load"], r["win"]
    accepts = load.codes.get("Access-Accept", 0)
    rate = accepts / load.seconds if load.seconds else 0.0
    per = {k: win.cpu(k) / max(1, accepts) * 1e3 for k in ("proxy", "slapd", "simulator")}
    gen = load.generator_cpu_seconds / max(1, accepts) * 1e3
    audits = r["audits"]
    prim = [e["primary_ms"] for e in audits if e.get("primary_ms") is not None]
    second = [e["second_factor_ms"] for e in audits if e.get("second_factor_ms") is not None]
    kinds0, kinds1 = r["sim0"]["kinds"], r["sim1"]["kinds"]
    http_calls = sum(kinds1.get(k, 0) - kinds0.get(k, 0) for k in ("start", "state", "cancel"))
    per_auth_http = http_calls / max(1, load.answered)
    sim_busy = (r["sim1"]["busy_seconds"] - r["sim0"]["busy_seconds"]) / max(1, accepts) * 1e3
    ok = rate >= TARGET_RATE
    cores = win.cpu("proxy") / load.seconds
    rows = [
        ("authentications/s (Access-Accepts in the window)", f"**{fmt(rate)}**",
         f"≥ {TARGET_RATE:.0f}", verdict(ok)),
        ("CPU per authentication: radius-proxy (ms)", f"**{per['proxy']:.2f}**", "", ""),
        ("CPU per authentication: slapd (ms)", f"{per['slapd']:.2f}", "", ""),
        ("CPU per authentication: simulator (ms; in its request handler)",
         f"{per['simulator']:.2f} ({sim_busy:.2f})", "", ""),
        ("CPU per authentication: load generator (ms)", f"{gen:.2f}", "", ""),
        ("radius-proxy CPU used (cores)", f"{cores:.2f}", "", ""),
        ("whole machine busy (% of all cores)", f"{100 * win.machine_busy:.0f}", "", ""),
        ("latency p50 / p99 (ms)",
         f"{load.percentile(0.5):.1f} / {load.percentile(0.99):.1f}", "", ""),
        ("audit primary_ms (LDAP search + bind) p50 / p99",
         f"{pct(prim, 0.5):.1f} / {pct(prim, 0.99):.1f}", "", ""),
        ("audit second_factor_ms (start, poll wait, state) p50 / p99",
         f"{pct(second, 0.5):.1f} / {pct(second, 0.99):.1f}", "", ""),
        ("HTTP calls to the ID server per authentication", f"{per_auth_http:.2f}", "", ""),
        ("replies other than Access-Accept / lost / socket drops",
         f"{load.answered - accepts} / {load.lost} / {r['drops']}", "0 / 0 / 0",
         verdict(load.answered == accepts and not load.lost)),
        ("RSS after the run: proxy / slapd / simulator (MiB)",
         " / ".join(f"{r['rss'][k]:.0f}" for k in ("proxy", "slapd", "simulator")), "", ""),
    ]
    lines = [
        SECTION,
        "",
        f"Measured {when} with `.venv/bin/python bench/pipeline_throughput.py --seconds "
        f"{args.seconds:g}` ({total:.0f} s in all). Target (the issue): at least "
        f"{TARGET_RATE:.0f} authentications per second on a 2-core machine, the full "
        "pipeline: LDAP primary against slapd, SecSign push against the simulator approving "
        "at once.",
        "",
        machine_line(info),
        "",
        *perf_doc.target_table(rows),
        "",
        "What the figures say:",
        "",
    ]
    notes = []
    ceiling = 1000 / per["proxy"] if per["proxy"] else math.nan
    if cores >= 0.85:
        notes.append(
            f"The proxy is CPU-bound: {cores:.2f} cores at {per['proxy']:.2f} ms per "
            f"authentication, so one proxy process tops out near {fmt(ceiling)}/s whatever the "
            "machine has: one event loop runs it all (LDAP and HTTP included, no threads); "
            "`server.workers` adds processes.")
    else:
        notes.append(
            f"The proxy used {cores:.2f} cores; at {per['proxy']:.2f} ms per authentication a "
            f"fully busy GIL would give about {fmt(ceiling)}/s. Other load on the machine "
            f"({100 * win.machine_busy:.0f} % busy) limited this run.")
    if r.get("profile_kinds"):
        notes.append(
            "Where the proxy's CPU goes per authentication (its profile's shares times "
            f"{per['proxy']:.2f} ms): " + "; ".join(
                f"{name.split(' (')[0]} {share * per['proxy']:.2f} ms"
                for name, share in r["profile_kinds"]) + ".")
    total_ms = per["proxy"] + per["slapd"] + per["simulator"] + gen
    notes.append(
        f"All processes together spend {total_ms:.2f} ms of CPU per authentication; two "
        f"cores give at most {fmt(2000 / total_ms)}/s for the whole set-up, so the "
        f"{TARGET_RATE:.0f}/s target needs the proxy itself near "
        f"{max(0.0, 2000 / TARGET_RATE - per['slapd'] - per['simulator'] - gen):.1f} ms or "
        "less (while sharing the machine with slapd, the simulator and the generator).")
    notes.append(
        f"The latency is mostly the push's poll wait: `poll_interval_seconds` "
        f"{args.poll_interval:g} s (±10 % jitter) before the first state request; with the "
        "default 2 s every login would wait about 2 s however fast the phone is, and "
        f"throughput would need {fmt(2 * TARGET_RATE)}+ requests in flight.")
    if r["problems"]:
        notes.append("The proxy logged warnings: " + ", ".join(
            f"`{k}` x{v}" for k, v in r["problems"].most_common(5)) + ".")
    lines += [f"- {n}" for n in notes]
    lines += [
        "",
        "What the proxy's LDAP backend costs per call (`LdapDirectory` driven in the bench "
        "process against the same slapd after the run):",
        "",
        "| operation | client CPU (µs) | slapd CPU (µs) |",
        "|---|---|---|",
        *[f"| {what} | {c:.0f} | {sv:.0f} |" for what, c, sv in r["ldap_costs"]],
        "",
        "Method:",
        "",
        f"- slapd from `tests/servers/slapd.py` with {args.users} extra users (`bench00000`...), "
        "each with `secsignId`, `{SSHA}` passwords, no group memberships; per login the "
        "proxy searches as the service account (shared kept connections) and binds as the "
        "user on a kept bind connection, as in production.",
        "- The SecSign ID simulator runs in its own process, rule `*=approve:0`, finished "
        "sessions kept 5 s.",
        f"- radius-proxy: REST API, `poll_interval_seconds = {args.poll_interval:g}`, "
        "`max_pushes_per_user = 1000` (users repeat every "
        f"{args.users} requests), Message-Authenticator required, logging at info as JSON "
        f"to a file ({r['log_bytes_per_auth']:.0f} bytes per login); everything else default.",
        f"- Load: `bench/loadgen.py`, {args.workers} processes x {args.window} requests in "
        "flight, each request a fresh packet for the next user with its own "
        f"Calling-Station-Id; {args.warmup:g} s warm-up, {args.seconds:g} s measured; a reply "
        "later than 5 s counts as lost.",
        "- CPU: utime + stime from `/proc/<pid>/stat` across the window, divided by the "
        "Access-Accepts in it. Audit figures: the proxy's `auth` lines of the window.",
    ]
    if r.get("profile"):
        lines += ["", f"Profile of the proxy under the same load, in a separate "
                  f"{args.profile_seconds:g} s round after the measurement (py-spy `--gil "
                  "--nonblocking`, 250 Hz: where the one GIL's time goes):",
                  "", "```", *r["profile"], "```"]
    anomalies = []
    if load.pool_exhausted:
        anomalies.append("the request pool ran out before the window ended")
    if load.bad_authenticator:
        anomalies.append(f"{load.bad_authenticator} replies with a wrong Response Authenticator")
    if anomalies:
        lines += ["", "Anomalies in this run:", "", *[f"- {a}" for a in anomalies]]
    summary = [f"{a}: {b} {d}".replace("**", "") for a, b, _, d in rows]
    summary += [f"LDAP {what}: client {c:.0f} µs, slapd {sv:.0f} µs"
                for what, c, sv in r["ldap_costs"]]
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--simulator-child"]:
        return simulator_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (default 3)")
    p.add_argument("--users", type=int, default=1000, help="LDAP users (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--window", type=int, default=64, help="requests in flight per worker")
    p.add_argument("--poll-interval", type=float, default=0.05,
                   help="secsign.poll_interval_seconds (default 0.05)")
    p.add_argument("--profile-seconds", type=float, default=10.0,
                   help="after the measurement, profile the proxy with py-spy under the same "
                        "load for this long (default 10; 0: no profile)")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    began = time.monotonic()
    when = now_utc()
    info = machine_info()
    info["busy_before"] = f"{100 * machine_busy(0.5):.0f}"
    with perf_doc.run_directory("bench-pipeline-", args.keep) as work:
        result = run_pipeline(args, work)
    section, summary = render(info, args, result, when, time.monotonic() - began)
    print()
    print("\n".join(summary))
    if args.out:
        perf_doc.write_section(Path(args.out), SECTION, section)
        print(f"wrote section {SECTION!r} of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
