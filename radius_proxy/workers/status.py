"""The status file a worker writes and the supervisor reads: how `/readyz` sees every worker.

Each worker runs the usual readiness prober (monitoring.py) and, after every round, replaces
its file with the result (write to a temporary name, then rename, so a reader never sees
half a file). The file also carries the writer's pid, so a file left by a worker that died
is never taken for its successor's, and the time of writing, so a worker whose loop hangs
turns unready instead of staying ready for ever. The first file is written right after the
worker's sockets are bound: its existence means "listening".
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

#: A status older than this is stale: a probe round takes at most 10 s, rounds are 5 s apart.
STALE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker's last report; `at` is `time.monotonic()`, the same clock in every process."""

    pid: int
    checked: bool
    backends: dict[str, bool]
    at: float

    def describe(self, now: float) -> str:
        """ready | unready | starting (no probe round yet) | stale (no report for a while)."""
        if now - self.at > STALE_SECONDS:
            return "stale"
        if not self.checked:
            return "starting"
        return "ready" if all(self.backends.values()) else "unready"


def write_status(path: Path, checked: bool, backends: dict[str, bool]) -> None:
    """Atomically replace path with this process's status."""
    body = {"pid": os.getpid(), "checked": checked, "backends": backends,
            "at": time.monotonic()}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(body), encoding="utf-8")
    os.replace(temporary, path)


def read_status(path: Path, pid: int) -> WorkerStatus | None:
    """The status process pid wrote to path; None when it has not written one (yet)."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("pid") != pid:
        return None
    backends = body.get("backends")
    if not isinstance(backends, dict):
        return None
    return WorkerStatus(pid=pid, checked=bool(body.get("checked")),
                        backends={str(k): bool(v) for k, v in backends.items()},
                        at=float(body.get("at", 0.0)))
