"""The supervisor of `server.workers` > 1: starts the workers, replaces, reloads, stops them.

What `radius-proxy serve` runs when the file asks for several workers (Linux only):

- N workers, each `python -m radius_proxy serve -c FILE` in a fresh interpreter (no fork of
  a process with threads), in a session of their own, so a Ctrl-C reaches only the
  supervisor, which then stops them in order;
- a worker that dies is started again after a delay that doubles while it keeps dying
  quickly (1 s up to 30 s), each time logged (`worker_exited`, `worker_restarted`);
- SIGHUP: the file is checked first; a broken file is refused here (`reload_refused`) and
  the workers keep running on the old one, otherwise each listening worker gets SIGHUP and
  reloads itself (`reloaded` from each);
- SIGTERM or SIGINT: each worker gets SIGTERM, drains the pushes in flight and answers them
  (the single-process stop, in parallel); the supervisor waits for all, then exits 0. The
  same signal again is forwarded again: the workers stop at once.

A worker that exits before it listened on the first start fails the start with its exit
code (a port taken, a broken users file), as the single process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from radius_proxy.app import stop_grace
from radius_proxy.config import Config
from radius_proxy.config_loader import load_config
from radius_proxy.errors import ConfigError
from radius_proxy.workers import ENV_COUNT, ENV_INDEX, ENV_METRICS, ENV_PIPE, ENV_STATUS
from radius_proxy.workers.http import SupervisorEndpoint, WorkerView
from radius_proxy.workers.status import read_status

log = structlog.get_logger(__name__)

RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
#: A worker that lived this long is healthy again: its next restart waits the least.
STABLE_SECONDS = 60.0
#: Beyond the workers' own bound (the longest NAS timeout) before they are killed.
STOP_MARGIN_SECONDS = 30.0
_POLL_SECONDS = 0.05


def restart_delay(lived_seconds: float, quick_deaths: int) -> tuple[float, int]:
    """The wait before starting a dead worker again, and its new count of quick deaths.

    1 s, doubling while the worker keeps dying within STABLE_SECONDS of its start, up to
    30 s: a worker that cannot start (a port taken, Redis refusing it) must not spin, and
    one that crashed once after running for a while comes back at once.
    """
    if lived_seconds >= STABLE_SECONDS:
        quick_deaths = 0
    delay = RESTART_DELAY_SECONDS * float(2 ** min(quick_deaths, 10))
    return min(delay, RESTART_DELAY_MAX_SECONDS), quick_deaths + 1


@dataclass
class _Slot:
    """One worker position; its process changes when it is restarted."""

    index: int
    status_file: Path
    process: asyncio.subprocess.Process | None = None
    pipe: int | None = None  # the write end of the worker's supervisor pipe
    started: float = 0.0
    quick_deaths: int = 0

    def running(self) -> asyncio.subprocess.Process | None:
        if self.process is not None and self.process.returncode is None:
            return self.process
        return None


class Supervisor:
    """Runs `config.server.workers` workers from `workdir` (metrics and status files)."""

    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.count = config.server.workers
        self.metrics_dir = workdir / "metrics"
        self.status_dir = workdir / "status"
        self.slots = [_Slot(i, self.status_dir / f"worker-{i}.json") for i in range(self.count)]
        for folder in (self.metrics_dir, self.status_dir):
            shutil.rmtree(folder, ignore_errors=True)  # nothing from an earlier run counts
            folder.mkdir(parents=True)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        self.restarts = Counter("radius_proxy_worker_restarts", "Workers started again after "
                                "they died", registry=self.registry)
        self._stop = asyncio.Event()
        self._endpoint: SupervisorEndpoint | None = None

    # -- the whole run ----------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, keep it running until SIGTERM, stop it; the exit code."""
        self._handle_signals()
        if self.config.http.listen:
            self._endpoint = SupervisorEndpoint(self.config.http.listen, self.workers,
                                                self.registry)
            await self._endpoint.start()
        try:
            return await self._run()
        finally:
            if self._endpoint is not None:
                await self._endpoint.close()

    async def _run(self) -> int:
        log.info("workers_starting", workers=self.count, config=self.config.source)
        for slot in self.slots:
            await self._spawn(slot)
        failed = await self._first_start()
        if failed is None and not self._stop.is_set():
            log.info("workers_started", pids=[s.process.pid for s in self.slots if s.process])
        keepers = [asyncio.create_task(self._keep(slot)) for slot in self.slots]
        if failed is not None:
            self._begin_stop()
        await self._stop.wait()
        await self._finish(keepers)
        log.info("stopped")
        return 0 if failed is None else failed

    async def _first_start(self) -> int | None:
        """Wait until every worker listens; a worker exiting first fails the start."""
        while not self._stop.is_set():
            for slot in self.slots:
                assert slot.process is not None
                if slot.process.returncode is not None:
                    log.error("worker_failed_to_start", worker=slot.index,
                              exit_code=slot.process.returncode,
                              hint="the worker's own lines above say why")
                    return slot.process.returncode or 1
            if all(self._listening(slot) for slot in self.slots):
                return None
            await asyncio.sleep(_POLL_SECONDS)
        return None

    async def _finish(self, keepers: list[asyncio.Task[None]]) -> None:
        """Wait for the stopping workers; kill what outlives its own bound by far."""
        bound = stop_grace(self.config) + STOP_MARGIN_SECONDS
        _, pending = await asyncio.wait(keepers, timeout=bound)
        if pending:
            log.error("workers_killed", workers=[s.index for s in self.slots if s.running()],
                      detail=f"still running {bound:.0f} s after SIGTERM")
            for slot in self.slots:
                process = slot.running()
                if process is not None:
                    process.kill()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- one worker --------------------------------------------------------------------------

    def _listening(self, slot: _Slot) -> bool:
        process = slot.running()
        return process is not None and read_status(slot.status_file, process.pid) is not None

    def _environment(self, slot: _Slot, pipe: int) -> dict[str, str]:
        return {**os.environ, ENV_INDEX: str(slot.index), ENV_COUNT: str(self.count),
                ENV_STATUS: str(slot.status_file), ENV_PIPE: str(pipe),
                ENV_METRICS: str(self.metrics_dir)}

    async def _spawn(self, slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        try:
            slot.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "radius_proxy", "serve", "--config", self.config.source,
                env=self._environment(slot, read_end), pass_fds=(read_end,),
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        slot.pipe = write_end
        slot.started = time.monotonic()
        log.info("worker_started", worker=slot.index, pid=slot.process.pid)
        if self._stop.is_set():  # SIGTERM came while it was being started
            slot.process.send_signal(signal.SIGTERM)

    def _gone(self, slot: _Slot) -> None:
        """Forget a dead worker: its live gauges, its status file, its pipe."""
        assert slot.process is not None
        mark_process_dead(slot.process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        slot.status_file.unlink(missing_ok=True)
        if slot.pipe is not None:
            os.close(slot.pipe)
            slot.pipe = None

    async def _keep(self, slot: _Slot) -> None:
        """Wait for this worker to exit; start it again unless we are stopping."""
        while True:
            code = pid = None
            if slot.process is not None:
                pid = slot.process.pid
                code = await slot.process.wait()
                self._gone(slot)
                if self._stop.is_set():
                    log.info("worker_stopped", worker=slot.index, exit_code=code)
                    return
            delay, slot.quick_deaths = restart_delay(time.monotonic() - slot.started,
                                                     slot.quick_deaths)
            log.error("worker_exited", worker=slot.index, pid=pid, exit_code=code,
                      restart_in_seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            self.restarts.inc()
            await self._restart(slot)

    async def _restart(self, slot: _Slot) -> None:
        """Start the worker again; a failure to even start it (no memory, no file
        descriptors) is backed off like a death."""
        try:
            await self._spawn(slot)
        except OSError as exc:
            log.error("worker_start_failed", worker=slot.index, error=str(exc))
            slot.process = None
            slot.started = time.monotonic()
            return
        assert slot.process is not None
        log.info("worker_restarted", worker=slot.index, pid=slot.process.pid)

    # -- signals -----------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _begin_stop(self) -> None:
        """First time: every worker drains; again: forwarded again, they stop at once."""
        if not self._stop.is_set():
            log.info("stopping", workers=self.count,
                     hint="send SIGTERM again to stop without waiting")
            self._stop.set()
        self._send(signal.SIGTERM, [slot for slot in self.slots if slot.running()])

    def _reload(self) -> None:
        """Check the file, then let each worker reload; a broken file changes nothing."""
        if self._stop.is_set():
            return
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload_refused", problems=[str(p) for p in exc.problems],
                      hint="the workers keep the running configuration; fix the file and "
                      "send SIGHUP")
            return
        listening = [slot for slot in self.slots if self._listening(slot)]
        self._send(signal.SIGHUP, listening)
        needs_restart = ["server.workers"] if config.server.workers != self.count else []
        log.info("reload_forwarded", workers=[slot.index for slot in listening],
                 needs_restart=needs_restart)

    @staticmethod
    def _send(sig: int, slots: list[_Slot]) -> None:
        for slot in slots:
            process = slot.running()
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    # -- for the HTTP endpoint ---------------------------------------------------------------

    def workers(self) -> list[WorkerView]:
        """Each worker's pid (None while it is down) and status file."""
        views = []
        for slot in self.slots:
            process = slot.running()
            views.append(WorkerView(slot.index, process.pid if process else None,
                                    slot.status_file))
        return views


async def supervise(config: Config) -> int:
    """`radius-proxy serve` with workers > 1: run the supervisor in a private directory."""
    if not sys.platform.startswith("linux"):
        log.error("workers_unsupported", platform=sys.platform,
                  hint="server.workers > 1 needs Linux (SO_REUSEPORT balancing); set workers = 1")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="radius-proxy-workers-"))
    try:
        return await Supervisor(config, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
