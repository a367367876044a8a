"""Overhead: the latency radius-proxy itself adds to a login, at a steady 100 requests/s.

    .venv/bin/python bench/overhead.py [--rate 100] [--seconds 60] [--out docs/performance.md]

Set-up as in `pipeline_throughput.py` (slapd with 1000 users, the simulator approving at once
with `*=approve:0`, radius-proxy with primary and identity `ldap`, REST, poll interval 0.05 s,
logging at info as JSON to a file). A paced sender (open loop: requests leave on schedule,
whatever the answers do) sends `--rate` Access-Requests per second for `--seconds`, each for
the next user from its own Calling-Station-Id, and times each answer.

Each request is then joined, by its Calling-Station-Id, to the proxy's audit line
(`primary_ms`, `second_factor_ms`) and, by SecSign ID and time, to the simulator's request
log (when it received the push's start and its final state request). Two figures:

- **added outside the backends** = end-to-end - `primary_ms` - `second_factor_ms`: packet
  checks and decoding, the pipeline's own steps, logging, the reply, the event loop's queue;
- **added including the HTTP client** = end-to-end - `primary_ms` - (simulator saw the state
  request - simulator saw the start): the above plus the proxy's side of one HTTP exchange
  (the start going out, the final state answer coming in), and with it the simulator's time
  to answer that state request; the poll wait, the start's answer and the state request going
  out fall in the interval left out. So this figure is stricter than the proxy's own share in
  one way (it counts the simulator's answer) and looser in another (half the HTTP work).

As a reference, the same rate against the core path (a second proxy: primary `none`, no
SecSign ID, `no_secsign_id = "accept"`, same logging) gives the proxy's latency with no
backend at all. The target (the issue): the proxy's own added latency p99 at most 5 ms.
The result replaces the section "## Overhead" of the output file.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import select
import socket
import sys
import time
from array import array
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
    BenchSlapd,
    DistinctUsers,
    SimulatorProcess,
    audit_lines,
    log_problems,
    machine_info,
    machine_line,
    now_utc,
    pct,
    proxy_toml,
    start_proxy,
    station_id,
    stop_all,
)
from bench.report import run_directory, target_table, write_section  # noqa: E402

SECTION = "## Overhead"
TARGET_P99_MS = 5.0
POLL_INTERVAL = 0.05


def paced(target: tuple[str, int], factory: DistinctUsers, *, rate: float, seconds: float,
          first_index: int = 0, timeout: float = 5.0) -> dict[str, Any]:
    """Send rate/s for seconds on one socket (Identifiers in turn); every answer timed."""
    n = int(rate * seconds)
    packets = [factory.packet(i % 256, first_index + i) for i in range(n)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(target)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    clock = time.monotonic
    send_t, recv_t, codes = array("d", [0.0] * n), array("d", [0.0] * n), array("B", [0] * n)
    by_id: dict[int, int] = {}
    t0 = clock() + 0.05
    cursor = answered = stray = 0
    end = t0 + seconds + timeout
    while clock() < end and (cursor < n or by_id):
        now = clock()
        while cursor < n and now >= t0 + cursor / rate:
            pid = cursor % 256
            by_id.pop(pid, None)  # 256 still unanswered: that answer is over 2.5 s late
            sock.send(packets[cursor])
            send_t[cursor] = clock()
            by_id[pid] = cursor
            cursor += 1
        wait_ms = max(0, min(5, int((t0 + cursor / rate - clock()) * 1000)))
        if poller.poll(wait_ms):
            while True:
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                t = clock()
                index = by_id.get(data[1]) if len(data) >= 20 else None
                if index is None or hashlib.md5(
                        data[:4] + packets[index][4:20] + data[20:] + factory.secret,
                        usedforsecurity=False).digest() != data[4:20]:
                    stray += 1  # late, for an earlier request with this Identifier
                    continue
                del by_id[data[1]]
                recv_t[index], codes[index] = t, data[0]
                answered += 1
    sock.close()
    return {"send_t": send_t, "recv_t": recv_t, "codes": codes, "n": n, "answered": answered,
            "stray": stray, "first_index": first_index}


def joined(run: dict[str, Any], audits: list[dict[str, Any]], sim_log: list[dict[str, Any]],
           epoch_offset: float, users: list[tuple[str, str]]) -> dict[str, list[float]]:
    """Per request: e2e, primary, second factor, and the two added-latency figures (ms)."""
    by_station = {e.get("calling_station_id"): e for e in audits}
    starts: dict[str, list[tuple[float, str]]] = {}
    finals: dict[str, float] = {}
    for entry in sim_log:
        t = entry["time"] - epoch_offset  # back to CLOCK_MONOTONIC, as the sender's clock
        sid = entry.get("authsessionid")
        if entry["type"] == "start" and sid:
            starts.setdefault(entry["secsignid"], []).append((t, sid))
        elif entry["type"] == "state" and sid:
            finals[sid] = t  # the last state request of the session
    out: dict[str, list[float]] = {k: [] for k in ("e2e", "primary", "second", "outside",
                                                   "with_http", "sim_wait")}
    for i in range(run["n"]):
        s, r = run["send_t"][i], run["recv_t"][i]
        if not r or run["codes"][i] != 2:
            continue
        index = run["first_index"] + i
        audit = by_station.get(station_id(index))
        if audit is None or audit.get("primary_ms") is None or \
                audit.get("second_factor_ms") is None:
            continue
        e2e = (r - s) * 1000
        out["e2e"].append(e2e)
        out["primary"].append(audit["primary_ms"])
        out["second"].append(audit["second_factor_ms"])
        out["outside"].append(e2e - audit["primary_ms"] - audit["second_factor_ms"])
        name = users[index % len(users)][0]
        session = next((sid for t, sid in starts.get(f"{name}.secsign", []) if s <= t <= r),
                       None)
        if session is not None and session in finals:
            t_start = next(t for t, sid in starts[f"{name}.secsign"] if sid == session)
            wait = (finals[session] - t_start) * 1000
            out["sim_wait"].append(wait)
            out["with_http"].append(e2e - audit["primary_ms"] - wait)
    return out


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Any] = []
    r: dict[str, Any] = {}
    try:
        ldap = BenchSlapd(work, args.users)
        servers.append(ldap)
        sim = SimulatorProcess(work, ["*=approve:0"], lifetime=30.0)
        servers.append(sim)
        log_file = work / "proxy.log"
        proxy = start_proxy(work, proxy_toml(
            port=free_udp_port(), simulator_url=sim.url, log_file=log_file, ldap_url=ldap.url,
            poll_interval=POLL_INTERVAL))
        servers.append(proxy)
        print(f"proxy pid {proxy.pid} :{proxy.port}, slapd pid {ldap.pid}, simulator pid "
              f"{sim.pid}", flush=True)
        factory = DistinctUsers(SECRET.encode(), ldap.users)
        target = ("127.0.0.1", proxy.port)
        paced(target, factory, rate=args.rate, seconds=args.warmup, first_index=10_000_000)
        sim.request("POST", "/simulator/api/reset", {})
        cpu0 = {k: process_cpu(p) for k, p in (("proxy", proxy.pid), ("slapd", ldap.pid),
                                                ("simulator", sim.pid))}
        busy0 = busy_jiffies()
        run = paced(target, factory, rate=args.rate, seconds=args.seconds)
        busy1 = busy_jiffies()
        r["machine_busy"] = (busy1[0] - busy0[0]) / max(1, busy1[2] - busy0[2])
        r["cpu"] = {k: process_cpu(p) - cpu0[k] for k, p in (("proxy", proxy.pid),
                                                              ("slapd", ldap.pid),
                                                              ("simulator", sim.pid))}
        sim_log = sim.request("GET", "/simulator/api/log", timeout=60)
        proxy.stop()
        r["full"] = joined(run, audit_lines(log_file), sim_log, sim.epoch_offset, ldap.users)
        r["run"] = run
        r["problems"] = log_problems(log_file)
        # the reference: the core path at the same rate, same logging
        core_log = work / "core.log"
        core = start_proxy(work, proxy_toml(
            port=free_udp_port(), simulator_url=sim.url, log_file=core_log, ldap_url=None,
            poll_interval=POLL_INTERVAL, identity="file", no_secsign_id="accept"), name="core")
        servers.append(core)
        paced(("127.0.0.1", core.port), factory, rate=args.rate, seconds=args.warmup,
              first_index=20_000_000)
        base = paced(("127.0.0.1", core.port), factory, rate=args.rate,
                     seconds=args.core_seconds, first_index=30_000_000)
        r["core"] = sorted((base["recv_t"][i] - base["send_t"][i]) * 1000
                           for i in range(base["n"]) if base["recv_t"][i])
        r["core_run"] = base
    finally:
        stop_all(servers)
    return r


def render(info: dict[str, str], args: argparse.Namespace, r: dict[str, Any], when: str,
           total: float) -> tuple[str, list[str]]:
    f, run = r["full"], r["run"]

    def p(key: str) -> str:
        return f"{pct(f[key], 0.5):.2f} / {pct(f[key], 0.99):.2f}"

    accepts = sum(1 for c in run["codes"] if c == 2)
    outside99, http99 = pct(f["outside"], 0.99), pct(f["with_http"], 0.99)
    rows = [
        ("requests sent / Access-Accepts / joined to audit and simulator log",
         f"{run['n']} / {accepts} / {len(f['e2e'])}, {len(f['with_http'])}", "", ""),
        ("end-to-end latency at the NAS, p50 / p99 (ms)", p("e2e"), "", ""),
        ("audit primary_ms (LDAP search + bind), p50 / p99", p("primary"), "", ""),
        ("audit second_factor_ms (start, poll wait, state), p50 / p99", p("second"), "", ""),
        ("simulator: start received to final state request received, p50 / p99 (ms)",
         p("sim_wait"), "", ""),
        ("**added by the proxy outside the backends, p50 / p99 (ms)**", f"**{p('outside')}**",
         f"p99 ≤ {TARGET_P99_MS:g} ms", verdict(outside99 <= TARGET_P99_MS)),
        ("**added including its side of one HTTP exchange, p50 / p99 (ms)**",
         f"**{p('with_http')}**", f"p99 ≤ {TARGET_P99_MS:g} ms",
         verdict(http99 <= TARGET_P99_MS)),
        ("reference: core path only (primary none, no push), p50 / p99 (ms)",
         f"{pct(r['core'], 0.5):.2f} / {pct(r['core'], 0.99):.2f}", "", ""),
        ("proxy / slapd / simulator CPU at this rate (cores)",
         " / ".join(f"{r['cpu'][k] / args.seconds:.2f}" for k in ("proxy", "slapd",
                                                                  "simulator")), "", ""),
        ("whole machine busy during the run (% of all cores)",
         f"{100 * r['machine_busy']:.0f}", "", ""),
    ]
    hidden = pct(f["with_http"], 0.5) - pct(f["outside"], 0.5)
    lines = [
        SECTION,
        "",
        f"Measured {when} with `.venv/bin/python bench/overhead.py --rate {args.rate:g} "
        f"--seconds {args.seconds:g}` ({total:.0f} s in all). Target (the issue): with instant "
        f"approval, the proxy's own added latency p99 at most {TARGET_P99_MS:g} ms at "
        f"{args.rate:g} requests per second.",
        "",
        machine_line(info),
        "",
        *target_table(rows),
        "",
        "What the figures say:",
        "",
        f"- The end-to-end time is almost all the push's poll wait (`poll_interval_seconds` "
        f"{POLL_INTERVAL:g} s ±10 %: the REST start answer carries no state, so every push "
        "waits one interval before its first state request) and the LDAP check; the proxy's "
        f"own share outside the backends is {pct(f['outside'], 0.5):.2f} ms at the median.",
        f"- Counting the proxy's side of one HTTP exchange adds about {hidden:.1f} ms at the "
        "median: the HTTP client's own work (`secsign/aio_transport.py` on the event loop), "
        "the simulator's answer to the state request, and turns on the two cores that the "
        "proxy, slapd, the simulator and the sender share. A push makes two exchanges.",
        f"- At {args.rate:g} requests/s the proxy already uses "
        f"{r['cpu']['proxy'] / args.seconds:.2f} cores: the tail (p99) is requests queueing "
        "behind each other on the one event loop and behind the other processes on the shared "
        "cores, so it moves from run to run more than the median does.",
        "- `primary_ms` includes the proxy's own LDAP client work (BER encoding, the search and "
        "the bind on pooled connections, `backends/ldap_client.py`) as well as slapd's; it is "
        "left out of both figures, as the issue asks.",
        "",
        "Method:",
        "",
        f"- Open loop: one UDP socket sends {args.rate:g} Access-Requests/s on schedule for "
        f"{args.seconds:g} s after a {args.warmup:g} s warm-up, each for the next of "
        f"{args.users} LDAP users with its own Calling-Station-Id; answers timed on "
        "CLOCK_MONOTONIC.",
        "- Joined per request: the audit line by Calling-Station-Id; the simulator's request "
        "log (`GET /simulator/api/log`, wall time turned back into CLOCK_MONOTONIC with the "
        "simulator's own offset) by SecSign ID and time.",
        "- The core-path reference runs a second proxy after the first has stopped: primary "
        "`none`, identity `file` with no mapping, `no_secsign_id = \"accept\"`, same logging, "
        f"{args.core_seconds:g} s at the same rate.",
    ]
    if r["problems"]:
        lines += ["", "The proxy logged warnings: " + ", ".join(
            f"`{k}` x{v}" for k, v in r["problems"].most_common(5)) + "."]
    summary = [f"{a}: {b} {d}".replace("**", "") for a, b, _, d in rows]
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="requests/s (default 100)")
    # 60 s, not 20: the p99 of 2,000 requests moved between 1.7 and 4.7 ms from run to run
    # on the shared 2-core machine; 6,000 give a steadier tail.
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds (default 60)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (default 2)")
    p.add_argument("--core-seconds", type=float, default=10.0,
                   help="seconds of the core-path reference (default 10)")
    p.add_argument("--users", type=int, default=1000, help="LDAP users (default 1000)")
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    began = time.monotonic()
    when = now_utc()
    info = machine_info()
    info["busy_before"] = f"{100 * machine_busy(0.5):.0f}"
    with run_directory("bench-overhead-", args.keep) as work:
        result = measure(args, work)
    if not result["full"]["e2e"]:
        print("no request could be joined to its audit line", file=sys.stderr)
        return 1
    section, summary = render(info, args, result, when, time.monotonic() - began)
    print()
    print("\n".join(summary))
    if args.out:
        write_section(Path(args.out), SECTION, section)
        print(f"wrote section {SECTION!r} of {args.out}")
    return 0 if not math.isnan(pct(result["full"]["outside"], 0.99)) else 1


if __name__ == "__main__":
    sys.exit(main())
