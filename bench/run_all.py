"""Every benchmark, one after the other, each updating its own section of docs/performance.md.

    .venv/bin/python bench/run_all.py [--out docs/performance.md] [--only NAME ...]
                                      [--profile]

Runs, each in a fresh interpreter with a time bound, in this order:

- `core_throughput.py`: the proxy's core path, one process and `server.workers = 2`, side
  by side with FreeRADIUS (section "Core throughput"; the issue's target: the proxy's core
  at least half of FreeRADIUS's requests per second, a PASS/FAIL row of its own);
- `state_store.py`: the Redis state store's cost per login ("State store");
- `pipeline_throughput.py`: LDAP + push, authentications per second ("Full pipeline
  throughput");
- `wait_at_scale.py`: 10 000 logins waiting on their phones ("The wait at scale");
- `overhead.py`: the latency the proxy adds at 100 requests/s ("Overhead");
- `upstream_radius.py`: FreeRADIUS through the proxy's `radius` primary against the same
  FreeRADIUS directly ("Upstream RADIUS relay").

Each script replaces only its own section, so the others stay as they are. At the end the
PASS/FAIL lines of the file are printed and written to its first section, "Targets at a
glance". About 8 minutes on a 2-core machine; the
benchmarks share the cores with whatever else runs, so the machine's load is printed before
each one (each section records it too). `--profile` adds a py-spy profile of the proxy
during the wait's hold (it disturbs the Status-Server figures a little).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))

from bench.report import write_section  # noqa: E402

#: (name, script, extra arguments, time bound in seconds)
STEPS: tuple[tuple[str, str, list[str], int], ...] = (
    ("core", "core_throughput.py", [], 600),
    ("state", "state_store.py", [], 600),
    ("pipeline", "pipeline_throughput.py", [], 600),
    ("wait", "wait_at_scale.py", [], 900),
    ("overhead", "overhead.py", [], 600),
    ("upstream", "upstream_radius.py", [], 600),
)


SUMMARY = "## Targets at a glance"


def summary(verdicts: list[str]) -> str:
    """The section that lists every PASS/FAIL row of the file, written last by this script."""
    rows = [f"- {line}" for line in verdicts] or ["- (no verdicts yet)"]
    return (f"{SUMMARY}\n\nWritten by `bench/run_all.py` after its run of "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: every row of the sections "
            "below that carries a target, as `[section] what | measured | target | verdict`. "
            "The figures and their method are in each section.\n\n" + "\n".join(rows) + "\n")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def verdict_lines(path: Path) -> list[str]:
    """The table rows with a PASS or FAIL, under their section headings."""
    out: list[str] = []
    heading = ""
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and ("PASS" in line or "FAIL" in line):
            cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
            out.append(f"[{heading}] " + " | ".join(c for c in cells if c))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "performance.md"),
                   help="the markdown file every script updates")
    p.add_argument("--only", nargs="+", choices=[s[0] for s in STEPS],
                   help="run only these (default: all)")
    p.add_argument("--profile", action="store_true",
                   help="also py-spy the proxy during the wait's hold (the pipeline section "
                        "always has a profile, from a round of its own)")
    args = p.parse_args(argv)

    failed: list[str] = []
    began = time.monotonic()
    for name, script, extra, bound in STEPS:
        if args.only and name not in args.only:
            continue
        path = BENCH / script
        more = ["--profile"] if args.profile and name == "wait" else []
        argv_ = [sys.executable, str(path), "--out", args.out, *extra, *more]
        print(f"== {script} (load average {load_average()})", flush=True)
        t0 = time.monotonic()
        try:
            code = subprocess.run(argv_, cwd=REPO, timeout=bound, check=False).returncode
        except subprocess.TimeoutExpired:
            code = -1
            print(f"== {script}: stopped after {bound} s", flush=True)
        print(f"== {script}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
        if code != 0:
            failed.append(script)
    verdicts = verdict_lines(Path(args.out))
    print(f"\nall done in {time.monotonic() - began:.0f} s; verdicts in {args.out}:")
    for line in verdicts:
        print("  " + line)
    write_section(Path(args.out), SUMMARY, summary(verdicts), first=True)
    if failed:
        print(f"scripts that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
