"""Assembling a running proxy from a configuration: backends, pipeline, server, signals.

`App` is what `radius-proxy serve` runs and what tests start in-process; `run` adds the
signal handling of a foreground service (SIGTERM and SIGINT stop gracefully).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from radius_proxy.config import Config
from radius_proxy.config_loader import load_config
from radius_proxy.errors import ConfigError
from radius_proxy.pipeline.flow import Pipeline
from radius_proxy.pipeline.ports import IdentitySource
from radius_proxy.protocol.dictionary import load_dictionary
from radius_proxy.server import RadiusServer
from radius_proxy.state import StateStore
from radius_proxy.state.memory import MemoryStore

log = structlog.get_logger(__name__)

#: How long SIGTERM lets requests in flight finish (a push may take its whole timeout).
DEFAULT_GRACE_SECONDS = 60.0
#: Sections whose change takes a restart; SIGHUP applies clients, secrets and policy.
_RESTART_SECTIONS = ("server", "primary", "ldap", "radius_upstream", "users_file", "identity",
                     "secsign", "state", "logging", "http")


class App:
    """One proxy: its backends, pipeline and server, started and stopped together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._closers: list[Any] = []
        self.server: RadiusServer | None = None
        self.pipeline: Pipeline | None = None

    async def start(self) -> None:
        config = self.config
        dictionary = load_dictionary(config.server.dictionaries)
        primary, ldap = await self._primary(dictionary)
        identity = self._identity(ldap)
        second_factor = self._second_factor()
        store = self._store()
        self.pipeline = Pipeline(config=config, primary=primary, identity=identity,
                                 second_factor=second_factor, store=store)
        self.server = RadiusServer(config, self.pipeline, dictionary)
        await self.server.start()

    async def _primary(self, dictionary: Any) -> tuple[Any, Any]:
        backend = self.config.primary.backend
        ldap = None
        if backend == "ldap" or "ldap" in self.config.identity.sources:
            from radius_proxy.backends.ldap_directory import LdapDirectory

            ldap = self._closing(LdapDirectory(self.config.ldap))
        if backend == "ldap":
            return ldap, ldap
        if backend == "radius":
            from radius_proxy.backends.upstream_radius import UpstreamRadius

            upstream = self._closing(UpstreamRadius(self.config.radius_upstream, dictionary))
            await upstream.start()
            return upstream, ldap
        if backend == "file":
            from radius_proxy.backends.users_file import UsersFile

            return self._closing(UsersFile(self.config.users_file.path)), ldap
        from radius_proxy.backends.users_file import NoPassword

        return NoPassword(), ldap

    def _identity(self, ldap: Any) -> list[IdentitySource]:
        from radius_proxy.backends.identity import MappingFileSource, UsernameSource

        sources: list[IdentitySource] = []
        for name in self.config.identity.sources:
            if name == "ldap":
                sources.append(ldap)
            elif name == "file":
                sources.append(MappingFileSource(self.config.identity.mapping_file))
            else:
                sources.append(UsernameSource(self.config.identity.username_suffix))
        return sources

    def _second_factor(self) -> Any:
        from radius_proxy.backends.secsign import SecSignClient

        return self._closing(SecSignClient(self.config.secsign))

    def _store(self) -> StateStore:
        store = MemoryStore()
        self._closers.append(store)
        return store

    def reload(self, config: Config) -> list[str]:
        """Apply a new configuration's clients, secrets and policy; return what needs a restart.

        Backends, listen addresses and the state store are kept: changing them takes a
        restart, and the returned section names say so in the log.
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

    def _closing(self, backend: Any) -> Any:
        self._closers.append(backend)
        return backend

    async def stop(self, grace: float = 0.0) -> None:
        """Stop receiving, let requests in flight finish within grace, then close backends."""
        if self.server is not None:
            await self.server.close(grace)
        if self.pipeline is not None:
            await self.pipeline.cancel_pushes()
        for backend in reversed(self._closers):
            with contextlib.suppress(Exception):
                await backend.close()


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


async def run(config: Config, grace: float = DEFAULT_GRACE_SECONDS) -> int:
    """Run until SIGTERM or SIGINT; then finish the work in flight and exit 0."""
    app = App(config)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app)
    await stop.wait()
    log.info("stopping", in_flight=app.server.in_flight if app.server else 0)
    await app.stop(grace)
    log.info("stopped")
    return 0
