"""The supervisor's `[http] listen` endpoint: the same three paths, for all workers at once.

- `/metrics`: every worker's series summed (gauges per their `multiprocess_mode`, see
  metrics.py), plus `radius_proxy_worker_restarts_total`; a counter keeps what a dead
  worker counted, so totals never go backwards when a worker is replaced.
- `/healthz`: 200 while the supervisor runs and every worker process is running; 503 with
  the missing ones while one waits to be restarted.
- `/readyz`: 200 when every worker reported, within the last 30 s, that all its backends
  answered; else 503 naming the workers that did not and why. `backends` is the
  single-process field, true only where every worker says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from radius_proxy.config_loader import parse_hostport
from radius_proxy.monitoring import PATHS, route
from radius_proxy.simulator.httpserver import HttpServer, Request, Response
from radius_proxy.workers.status import read_status

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as the endpoint sees it: pid None while it is not running."""

    index: int
    pid: int | None
    status_file: Path


class SupervisorEndpoint:
    """Serves `/metrics`, `/healthz`, `/readyz` from the workers' files."""

    def __init__(self, listen: str, workers: Callable[[], list[WorkerView]],
                 registry: CollectorRegistry) -> None:
        self._host, self._port = parse_hostport(listen, allow_zero=True)
        self._workers = workers
        self._registry = registry
        self._http = HttpServer(self._handle)

    async def start(self) -> None:
        await self._http.start(self._host, self._port)
        log.info("http_listening", address=f"{self._host}:{self._http.port}", paths=list(PATHS))

    async def close(self) -> None:
        await self._http.close()

    def _handle(self, request: Request) -> Response:
        return route(request, self._registry, self._healthz, self._readyz)

    def _healthz(self) -> Response:
        down = [w.index for w in self._workers() if w.pid is None]
        if not down:
            return Response(200, b"ok\n")
        return _json(503, {"status": "down", "workers_down": down})

    def _readyz(self) -> Response:
        now = time.monotonic()
        workers: dict[str, dict[str, object]] = {}
        backends: dict[str, bool] = {}
        for view in self._workers():
            status = read_status(view.status_file, view.pid) if view.pid else None
            state = "not running" if view.pid is None else (
                "starting" if status is None else status.describe(now))
            entry: dict[str, object] = {"pid": view.pid, "status": state}
            if status is not None:
                entry["backends"] = status.backends
                for name, ok in status.backends.items():
                    backends[name] = backends.get(name, True) and ok
            workers[str(view.index)] = entry
        failing = [index for index, entry in workers.items() if entry["status"] != "ready"]
        body: dict[str, object] = {"status": "unready" if failing else "ready",
                                   "backends": backends, "workers": workers}
        if failing:
            body["failing_workers"] = failing
        return _json(503 if failing else 200, body)


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(status, (json.dumps(body) + "\n").encode(), content_type="application/json")
