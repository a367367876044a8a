"""`server.workers`: several proxy processes on one port, one per core.

One Python process is one core: the proxy's core path tops out near 4,000 requests a second
(docs/performance.md). With `server.workers = N` > 1 on Linux, `radius-proxy serve` becomes
a supervisor (`supervisor.py`) that starts N workers (`worker.py`), each a full proxy in a
fresh interpreter binding the same RADIUS addresses with SO_REUSEPORT. The kernel picks a
worker by the datagram's source address and port, so a NAS's retransmits reach the worker
that holds its duplicate cache; everything else a login needs from another worker
(challenges, the pending push, push counts, remembered logins) is in Redis, which the
loader therefore requires.

The supervisor owns the `[http]` endpoint: `/metrics` sums the workers' files
(prometheus_client's multiprocess mode), `/healthz` and `/readyz` read what each worker
reports in a small status file (`status.py`).

The contract between the two is the environment below, set by the supervisor for each
worker it starts; a process without `RADIUS_PROXY_WORKER` is not a worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The worker's index (0..N-1); its presence makes `serve` run as a worker.
ENV_INDEX = "RADIUS_PROXY_WORKER"
#: How many workers the supervisor runs (the worker binds with SO_REUSEPORT whatever its
#: file says by now).
ENV_COUNT = "RADIUS_PROXY_WORKERS"
#: The file the worker writes its readiness to.
ENV_STATUS = "RADIUS_PROXY_WORKER_STATUS"
#: The read end of a pipe whose other end only the supervisor holds: end of file means
#: the supervisor is gone, and the worker stops (gracefully) instead of living on alone.
ENV_PIPE = "RADIUS_PROXY_WORKER_PIPE"
#: prometheus_client reads it at import: each worker writes its metrics there.
ENV_METRICS = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker was told by its supervisor."""

    index: int
    count: int
    status_file: Path
    pipe_fd: int


def worker_settings() -> WorkerSettings | None:
    """This process's settings as a worker, or None when it was not started as one."""
    index = os.environ.get(ENV_INDEX)
    if index is None:
        return None
    return WorkerSettings(index=int(index), count=int(os.environ[ENV_COUNT]),
                          status_file=Path(os.environ[ENV_STATUS]),
                          pipe_fd=int(os.environ[ENV_PIPE]))
