"""One worker of `server.workers`: the usual proxy, minus the HTTP endpoint, plus reports.

A worker is `radius-proxy serve` started by the supervisor with the environment of
`radius_proxy.workers`. It runs `app.run` unchanged (SIGHUP reloads, SIGTERM drains the
pushes in flight and answers them) with three differences:

- its RADIUS sockets are bound with SO_REUSEPORT, next to its siblings';
- it does not bind `[http] listen` (the supervisor does); its readiness prober writes the
  status file instead (`status.py`), and its metrics go to the multiprocess directory (the
  in-flight gauge written once a second);
- it stops by itself, gracefully, when the supervisor disappears (end of file on its pipe),
  so a supervisor killed with SIGKILL leaves no orphans answering on the port.

Every log line carries `worker`, the index, so an `auth` event names the worker that
answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import structlog

from radius_proxy.app import App, run
from radius_proxy.config import Config
from radius_proxy.metrics import METRICS
from radius_proxy.monitoring import Monitor, Probe
from radius_proxy.workers import WorkerSettings
from radius_proxy.workers.status import write_status

log = structlog.get_logger(__name__)

#: How often a worker writes its in-flight count for the supervisor's /metrics.
IN_FLIGHT_PERIOD_SECONDS = 1.0


class StatusReporter(Monitor):
    """The readiness prober of monitoring.py, reporting to a file instead of over HTTP."""

    def __init__(self, probes: dict[str, Probe], status_file: Path) -> None:
        super().__init__("127.0.0.1:0", probes)  # never bound: start() below skips HTTP
        self._status_file = status_file

    async def start(self) -> None:
        """Report "listening" at once, then probe as the single process does."""
        self._report()
        self._task = asyncio.create_task(self._probe_forever(), name="worker-status")

    async def check(self) -> dict[str, bool]:
        results = await super().check()
        self._report()
        return results

    def _report(self) -> None:
        try:
            write_status(self._status_file, self._checked, self.ready())
        except OSError as exc:  # the supervisor's directory went away: it is stopping
            log.debug("worker_status_unwritable", error=str(exc))


class WorkerApp(App):
    """An App that reports readiness to its supervisor and watches it."""

    def __init__(self, config: Config, settings: WorkerSettings) -> None:
        super().__init__(config)
        self.settings = settings
        self._gauge_task: asyncio.Task[None] | None = None

    async def _start_monitor(self, probes: dict[str, Probe]) -> None:
        reporter = StatusReporter(probes, self.settings.status_file)
        await reporter.start()
        self.monitor = reporter
        _watch_supervisor(self.settings.pipe_fd)
        self._gauge_task = asyncio.create_task(self._write_in_flight(), name="worker-in-flight")

    async def _write_in_flight(self) -> None:
        """Write the in-flight count for the supervisor's sum once a second: the gauge's
        scrape-time function (server.py) runs only in the process that is scraped."""
        while True:
            METRICS.in_flight.set(self.server.in_flight if self.server is not None else 0)
            await asyncio.sleep(IN_FLIGHT_PERIOD_SECONDS)


def _watch_supervisor(fd: int) -> None:
    """On end of file (the supervisor died), stop like on SIGTERM: drain, answer, exit."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            if os.read(fd, 64):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        log.warning("supervisor_gone", hint="this worker stops; restart radius-proxy")
        os.kill(os.getpid(), signal.SIGTERM)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


def as_worker(config: Config, settings: WorkerSettings) -> Config:
    """The config with the supervisor's worker count, so the sockets share the port even
    if the file was edited since the supervisor started (that change takes a restart)."""
    if config.server.workers == settings.count:
        return config
    return dataclasses.replace(
        config, server=dataclasses.replace(config.server, workers=settings.count))


async def run_worker(config: Config, settings: WorkerSettings) -> int:
    """Run one worker until SIGTERM (from the supervisor), like `radius-proxy serve`."""
    # Until run() installs its handler, a forwarded SIGHUP must not kill a starting worker
    # (it reads the file at start anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    structlog.contextvars.bind_contextvars(worker=settings.index)
    config = as_worker(config, settings)
    return await run(config, app=WorkerApp(config, settings))
