"""Assembling a running proxy from a configuration: backends, pipeline, server, monitor, signals.

`App` is what `radius-proxy serve` runs and what tests start in-process; `run` adds the
signal handling of a foreground service:

- SIGTERM or SIGINT: stop reading the RADIUS sockets (a NAS retries elsewhere), let the
  requests in flight (pushes waiting for a phone) finish and send their replies, within a
  bound, then close the backends and exit 0. The same signal again stops at once.
- SIGHUP: re-read the file; clients, secrets and policy change without dropping a request.

`build_backends` is shared with `radius-proxy test-user`, so the diagnosis runs the very
backends the server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import typing
from dataclasses import dataclass, field
from typing import Any

import structlog

from radius_proxy.config import Config
from radius_proxy.config_loader import load_config
from radius_proxy.errors import ConfigError
from radius_proxy.monitoring import Monitor, Probe, self_test
from radius_proxy.pipeline.flow import Pipeline
from radius_proxy.pipeline.ports import IdentitySource, PrimaryAuthenticator
from radius_proxy.protocol.dictionary import load_dictionary
from radius_proxy.server import RadiusServer
from radius_proxy.state import StateStore
from radius_proxy.state.memory import MemoryStore

if typing.TYPE_CHECKING:
    from pyrad.dictionary import Dictionary

    from radius_proxy.backends.ldap_directory import LdapDirectory
    from radius_proxy.backends.secsign import SecSignClient
    from radius_proxy.backends.upstream_radius import UpstreamRadius
    from radius_proxy.backends.users_file import UsersFile

log = structlog.get_logger(__name__)

#: How long SIGTERM lets requests in flight finish when no client says otherwise.
DEFAULT_GRACE_SECONDS = 60.0
#: Sections whose change takes a restart; SIGHUP applies clients, secrets and policy.
_RESTART_SECTIONS = ("server", "primary", "ldap", "radius_upstream", "users_file", "identity",
                     "secsign", "state", "logging", "http")


@dataclass
class Backends:
    """The backends a configuration asks for, built but not yet used.

    `closers` are closed in reverse order by `close()`; `upstream` is started (sockets open)
    only when `build_backends` was told to.
    """

    primary: PrimaryAuthenticator
    identity: list[IdentitySource]
    second_factor: SecSignClient
    ldap: LdapDirectory | None = None
    upstream: UpstreamRadius | None = None
    users: UsersFile | None = None
    closers: list[Any] = field(default_factory=list)

    def probes(self) -> dict[str, Probe]:
        """What `/readyz` and the start-up self test check, keyed by config section."""
        probes: dict[str, Probe] = {}
        if self.ldap is not None:
            probes["ldap"] = self.ldap.probe
        if self.upstream is not None:
            probes["radius_upstream"] = self.upstream.probe
        probes["secsign"] = self.second_factor.probe
        return probes

    async def close(self) -> None:
        for backend in reversed(self.closers):
            with contextlib.suppress(Exception):
                await backend.close()
        self.closers.clear()


async def build_backends(config: Config, dictionary: Dictionary, *,
                         start_upstream: bool = True) -> Backends:
    """The primary check, identity sources and SecSign ID client of `config`.

    On an error (a broken users file, say) whatever was built is closed again.
    """
    closers: list[Any] = []
    try:
        return await _build(config, dictionary, closers, start_upstream)
    except BaseException:
        for backend in reversed(closers):
            with contextlib.suppress(Exception):
                await backend.close()
        raise


async def _build(config: Config, dictionary: Dictionary, closers: list[Any],
                 start_upstream: bool) -> Backends:
    from radius_proxy.backends.identity import MappingFileSource, UsernameSource
    from radius_proxy.backends.secsign import SecSignClient
    from radius_proxy.backends.users_file import NoPassword, UsersFile

    backend = config.primary.backend
    ldap = upstream = users = None
    if backend == "ldap" or "ldap" in config.identity.sources:
        from radius_proxy.backends.ldap_directory import LdapDirectory

        ldap = LdapDirectory(config.ldap)
        closers.append(ldap)
    primary: PrimaryAuthenticator
    if backend == "ldap":
        assert ldap is not None
        primary = ldap
    elif backend == "radius":
        from radius_proxy.backends.upstream_radius import UpstreamRadius

        upstream = UpstreamRadius(config.radius_upstream, dictionary)
        closers.append(upstream)
        if start_upstream:
            await upstream.start()
        primary = upstream
    elif backend == "file":
        users = UsersFile(config.users_file.path)
        closers.append(users)
        primary = users
    else:
        primary = NoPassword()
    identity: list[IdentitySource] = []
    for name in config.identity.sources:
        if name == "ldap":
            assert ldap is not None
            identity.append(ldap)
        elif name == "file":
            identity.append(MappingFileSource(config.identity.mapping_file))
        else:
            identity.append(UsernameSource(config.identity.username_suffix))
    second_factor = SecSignClient(config.secsign)
    closers.append(second_factor)
    return Backends(primary, identity, second_factor, ldap, upstream, users, closers)


def make_store(config: Config) -> StateStore:
    """The store of `[state]`: this process's memory, or Redis shared by several instances."""
    if config.state.backend == "redis":
        from radius_proxy.state.redis import RedisStore

        return RedisStore(config.state)
    return MemoryStore()


def stop_grace(config: Config) -> float:
    """How long SIGTERM waits for requests in flight: the longest NAS timeout.

    The pipeline ends every request by its client's `nas_timeout_seconds`, and after that
    the NAS no longer listens, so waiting longer would help nobody.
    """
    return max((c.nas_timeout_seconds for c in config.clients), default=DEFAULT_GRACE_SECONDS)


class App:
    """One proxy: its backends, pipeline, server and monitor, started and stopped together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.backends: Backends | None = None
        self.server: RadiusServer | None = None
        self.pipeline: Pipeline | None = None
        self.monitor: Monitor | None = None
        self._store: StateStore | None = None
        self._self_test: asyncio.Task[dict[str, bool]] | None = None

    async def start(self) -> None:
        """Build and start everything; on a failure, close what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        dictionary = load_dictionary(config.server.dictionaries)
        self.backends = backends = await build_backends(config, dictionary)
        self._store = make_store(config)
        self.pipeline = Pipeline(config=config, primary=backends.primary,
                                 identity=backends.identity,
                                 second_factor=backends.second_factor, store=self._store)
        self.server = RadiusServer(config, self.pipeline, dictionary)
        await self.server.start()
        probes = self.probes()
        await self._start_monitor(probes)
        # In the background: a directory that hangs must not delay listening.
        self._self_test = asyncio.create_task(self_test(probes), name="self-test")

    async def _start_monitor(self, probes: dict[str, Probe]) -> None:
        """The HTTP endpoint of `[http] listen`; a worker of several reports instead (workers/)."""
        if self.config.http.listen:
            self.monitor = Monitor(self.config.http.listen, probes)
            await self.monitor.start()

    def probes(self) -> dict[str, Probe]:
        """The backends' probes, plus the state store's when it has one (Redis)."""
        assert self.backends is not None
        probes = self.backends.probes()
        store_probe = getattr(self._store, "probe", None)
        if store_probe is not None:
            probes["state"] = store_probe
        return probes

    def reload(self, config: Config) -> list[str]:
        """Apply a new configuration's clients, secrets and policy; return what needs a restart.

        Backends, listen addresses and the state store are kept: changing them takes a
        restart, and the returned section names say so in the log. The monitor keeps
        probing the same backend objects, so its probes stay valid.
        """
        assert self.server is not None
        assert self.pipeline is not None
        kept = [name for name in _RESTART_SECTIONS
                if getattr(config, name) != getattr(self.config, name)]
        pipeline = self.pipeline.with_config(config)
        self.server.reconfigure(config, pipeline)
        self.pipeline = pipeline
        self.config = config
        return kept

    async def stop(self, grace: float = 0.0, interrupt: asyncio.Event | None = None) -> None:
        """Stop receiving, let requests in flight finish within grace, then close everything.

        The sockets stay open while requests drain, so their replies still leave from the
        address the NAS sent to; they are only no longer read. `interrupt`, when set, ends
        the wait early (a second SIGTERM).
        """
        if self._self_test is not None:
            self._self_test.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._self_test
        if self.server is not None:
            _pause_reading(self.server)
            if grace > 0:
                await _drain(self.server, grace, interrupt)
            await self.server.close(0.0)
        if self.pipeline is not None:
            await self.pipeline.cancel_pushes()
        if self.monitor is not None:
            await self.monitor.close()
        if self.backends is not None:
            await self.backends.close()
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()


def _pause_reading(server: RadiusServer) -> None:
    """No new requests: stop reading each socket, but keep it open for the replies."""
    server.stop_receiving()


async def _drain(server: RadiusServer, grace: float, interrupt: asyncio.Event | None) -> None:
    drain = asyncio.create_task(server.drain(grace))
    waits: set[asyncio.Task[Any]] = {drain}
    if interrupt is not None:
        waits.add(asyncio.create_task(interrupt.wait()))
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if not drain.done() or drain.cancelled() or not drain.result():
        log.warning("stop_cut_short", in_flight=server.in_flight,
                    detail="requests still in flight are cancelled and get no reply")


def _reload(app: App) -> None:
    """SIGHUP: read the file again; a broken file keeps the running configuration."""
    try:
        config = load_config(app.config.source)
    except ConfigError as exc:
        log.error("reload_refused", problems=[str(p) for p in exc.problems],
                  hint="the running configuration stays in force; fix the file and send SIGHUP")
        return
    needs_restart = app.reload(config)
    log.info("reloaded", clients=len(config.clients), needs_restart=needs_restart)


async def run(config: Config, grace: float | None = None, app: App | None = None) -> int:
    """Run until SIGTERM or SIGINT; then finish the work in flight and exit 0.

    `app` is for a worker of `server.workers`, which brings its own kind of App.
    """
    app = App(config) if app is None else app
    await app.start()
    collector = asyncio.create_task(_collect_when_quiet(app))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app)
    await stop.wait()
    stop.clear()  # from now on the same signal means "stop at once"
    bound = stop_grace(app.config) if grace is None else grace
    log.info("stopping", in_flight=app.server.in_flight if app.server else 0,
             grace_seconds=bound, hint="send SIGTERM again to stop without waiting")
    await app.stop(bound, interrupt=stop)
    collector.cancel()
    log.info("stopped")
    return 0


#: Full garbage collections stopped the loop for 250-750 ms with 10,000 pushes waiting
#: (each waiting login holds ~90 tracked objects: tasks, contexts, timers, coroutines), which
#: made Status-Server answers late. Objects from start-up are frozen out of collections,
#: young generations stay cheap, and full collections run only while the proxy is quiet.
GC_THRESHOLDS = (50_000, 50, 1_000_000)
GC_QUIET_IN_FLIGHT = 100
GC_INTERVAL_SECONDS = 60.0


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _collect_when_quiet(app: App) -> None:
    """A full collection now and then, when few requests are in flight (bounded pause)."""
    tune_gc()
    while True:
        await asyncio.sleep(GC_INTERVAL_SECONDS)
        if app.server is not None and app.server.in_flight < GC_QUIET_IN_FLIGHT:
            gc.collect()
