"""The LDAP backend's servers and kept connections: failover memory, service and bind pools.

Servers: `urls` are tried in order. A URL that failed is remembered as dead for
`dead_server_seconds` and tried only after every live one; when all are dead they are all
tried anyway, so an outage ends with the first request after the directory is back. A kept
connection to a URL that is no longer the first live one is retired, so the preferred
server is used again once its dead time has passed.

Connections (all on the event loop, no threads): service searches are multiplexed on at
most `SERVICE_CONNECTIONS` connections bound as the service account, at most
`SEARCHES_IN_FLIGHT` searches at once (slapd closes a session with too many pending). User
binds use up to `pool_size` kept connections, one bind at a time each: after a bind a
connection's identity is the user's, so it only ever serves the next bind, never a search.
A connection is opened once on demand (one opener for all waiters) and reused until it
breaks.

Connections belong to the event loop that made them. `ConnectionPools` is made per loop,
and a task of its own closes every connection when that loop's tasks are cancelled (the
end of `asyncio.run`), so nothing leaks into a closed loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

import structlog

from radius_proxy.backends.ldap_ber import SCOPE_BASE, SearchRequest
from radius_proxy.backends.ldap_client import (
    LdapConnection,
    LdapConnectionError,
    ServerAddress,
    connect,
)
from radius_proxy.backends.ldap_entries import UserRecord
from radius_proxy.backends.ldap_filter import Present
from radius_proxy.config import LdapConfig
from radius_proxy.metrics import METRICS

log = structlog.get_logger("radius_proxy.backends.ldap_directory")

#: The `backend` label of this backend's metrics (the config section).
METRIC_LABEL = "ldap"
#: Root DSE capability of Active Directory and Samba AD (MS-ADTS 3.1.1.3.4.3).
AD_CAPABILITY_OID = "1.2.840.113556.1.4.800"
#: Service connections kept, searches in flight on all of them, and the load on one that
#: makes it worth opening the next.
SERVICE_CONNECTIONS = 2
SEARCHES_IN_FLIGHT = 128
_SPREAD_AT = 32
_ROOT_DSE = SearchRequest("", SCOPE_BASE, Present("objectClass"), (
    "supportedCapabilities", "forestFunctionality", "defaultNamingContext"))


class DirectoryUnavailable(Exception):
    """No directory server answered in time: the request cannot be decided."""


@dataclass(slots=True, eq=False)
class Service:
    """A connection bound as the service account, and what its server's root DSE said."""

    conn: LdapConnection
    active_directory: bool
    naming_context: str | None

    @property
    def url(self) -> str:
        return self.conn.address.url


class ServerList:
    """The configured URLs in order, with the memory of which failed recently."""

    def __init__(self, urls: tuple[str, ...], dead_seconds: float) -> None:
        self.urls = urls
        self._dead_seconds = dead_seconds
        self._dead_until: dict[str, float] = {}
        for url in urls:
            METRICS.backend_up.labels(METRIC_LABEL, url).set(1)

    def candidates(self) -> list[str]:
        """URLs in order, the ones remembered as dead moved to the end."""
        if not self._dead_until:
            return list(self.urls)
        now = time.monotonic()
        alive = [u for u in self.urls if self._dead_until.get(u, 0.0) <= now]
        return alive + [u for u in self.urls if u not in alive]

    def preferred(self) -> str:
        """The URL a new connection would go to now."""
        if not self._dead_until:
            return self.urls[0]
        return self.candidates()[0]

    def mark_dead(self, url: str, error: str) -> None:
        now = time.monotonic()
        was_alive = self._dead_until.get(url, 0.0) <= now
        self._dead_until[url] = now + self._dead_seconds
        METRICS.backend_errors.labels(METRIC_LABEL).inc()
        METRICS.backend_up.labels(METRIC_LABEL, url).set(0)
        if was_alive:
            log.warning("ldap_server_down", server=url, error=error,
                        skip_seconds=self._dead_seconds)
        else:
            log.debug("ldap_server_still_down", server=url, error=error)

    def mark_alive(self, url: str) -> None:
        if self._dead_until.pop(url, None) is not None:
            METRICS.backend_up.labels(METRIC_LABEL, url).set(1)
            log.info("ldap_server_up", server=url)


class ConnectionPools:
    """Every connection of one event loop: service connections and kept bind connections."""

    def __init__(self, config: LdapConfig, servers: ServerList,
                 context: ssl.SSLContext) -> None:
        self.loop = asyncio.get_running_loop()
        self._config = config
        self._servers = servers
        self._context = context
        self._addresses = {url: ServerAddress.parse(url) for url in config.urls}
        self._all: set[LdapConnection] = set()
        self._services: list[Service] = []
        self._opening: asyncio.Task[Service] | None = None
        self.search_slots = asyncio.Semaphore(SEARCHES_IN_FLIGHT)
        self.bind_slots = asyncio.Semaphore(config.pool_size)
        self._idle_binders: list[LdapConnection] = []
        self._keeper = self.loop.create_task(self._keep(), name="ldap-connections")

    # -- life -------------------------------------------------------------------------------

    async def _keep(self) -> None:
        """Wait forever; when cancelled (loop shutdown, close), close every connection."""
        try:
            await self.loop.create_future()
        finally:
            self.abort_all()

    def abort_all(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._services.clear()
        self._idle_binders.clear()

    async def close(self) -> None:
        """Unbind every idle connection and close them all."""
        if self._opening is not None:
            self._opening.cancel()
        for conn in list(self._all):
            if not conn.in_flight:
                conn.close()
        self._keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper

    async def _connect(self, url: str) -> LdapConnection:
        conn = await connect(self._addresses[url], self._context, self._config.start_tls,
                             self._config.timeout_seconds)
        self._all.add(conn)
        conn.on_lost = self._all.discard
        return conn

    async def open_any(self) -> LdapConnection:
        """A new anonymous connection to the first live URL that accepts one."""
        for url in self._servers.candidates():
            try:
                return await self._connect(url)
            except LdapConnectionError as exc:
                self._servers.mark_dead(url, str(exc))
        raise DirectoryUnavailable("no directory server could be reached")

    # -- service connections ----------------------------------------------------------------

    async def service(self) -> tuple[Service, bool]:
        """A service connection for one search, and whether it was opened for this call."""
        best = self._least_loaded()
        if best is None:
            return await self._open_shared(), True
        if (best.conn.in_flight >= _SPREAD_AT and len(self._services) < SERVICE_CONNECTIONS
                and self._opening is None):
            self._start_opening()  # a second connection for the next searches
        return best, False

    def _least_loaded(self) -> Service | None:
        preferred = self._servers.preferred()
        best: Service | None = None
        for service in list(self._services):
            if service.conn.closed or service.url != preferred:
                self.discard_service(service)
            elif best is None or service.conn.in_flight < best.conn.in_flight:
                best = service
        return best

    def discard_service(self, service: Service) -> None:
        """Stop using a service connection; close it once searches on it had their time."""
        if service in self._services:
            self._services.remove(service)
        if service.conn.in_flight:
            self.loop.call_later(self._config.timeout_seconds, service.conn.close)
        else:
            service.conn.close()

    async def _open_shared(self) -> Service:
        task = self._opening or self._start_opening()
        return await asyncio.shield(task)

    def _start_opening(self) -> asyncio.Task[Service]:
        task = self.loop.create_task(self._open_service(), name="ldap-open-service")
        task.add_done_callback(self._opened)
        self._opening = task
        return task

    def _opened(self, task: asyncio.Task[Service]) -> None:
        self._opening = None
        if not task.cancelled() and task.exception() is None:
            self._services.append(task.result())

    async def _open_service(self) -> Service:
        """Connect, bind as the service account, read the root DSE: first URL that works."""
        for url in self._servers.candidates():
            try:
                conn = await self._connect(url)
            except LdapConnectionError as exc:
                self._servers.mark_dead(url, str(exc))
                continue
            try:
                service = await self._prepare_service(conn)
            except LdapConnectionError as exc:
                conn.abort()
                self._servers.mark_dead(url, str(exc))
                continue
            if service is None:
                conn.close()
                self._servers.mark_dead(url, "service account bind failed")
                continue
            self._servers.mark_alive(url)
            return service
        raise DirectoryUnavailable("no directory server could be reached")

    async def _prepare_service(self, conn: LdapConnection) -> Service | None:
        """Bind as the service account (None if refused); is this an AD, which context."""
        config = self._config
        if config.bind_dn:
            result = await conn.bind(config.bind_dn, config.bind_password.value.encode())
            if result.code != 0:
                log.error("ldap_service_bind_failed", server=conn.address.url,
                          bind_dn=config.bind_dn, result=result.code, message=result.message)
                return None
        found = await conn.search(_ROOT_DSE)
        if found.done.code != 0 or not found.entries:
            return Service(conn, False, None)
        record = UserRecord.of(found.entries[0])
        capabilities = set(record.texts("supportedCapabilities"))
        ad = AD_CAPABILITY_OID in capabilities or bool(record.texts("forestFunctionality"))
        return Service(conn, ad, record.first("defaultNamingContext"))

    # -- bind connections -------------------------------------------------------------------

    async def binder(self) -> tuple[LdapConnection, bool]:
        """A connection for one user bind (hold a `bind_slots` slot), and whether it is new."""
        preferred = self._servers.preferred()
        while self._idle_binders:
            conn = self._idle_binders.pop()
            if not conn.closed and conn.address.url == preferred:
                return conn, False
            conn.close()
        return await self.open_any(), True

    def keep_binder(self, conn: LdapConnection) -> None:
        """Put a connection back after a bind; it serves only the next bind."""
        if not conn.closed:
            self._idle_binders.append(conn)

    def drop_idle_binders(self, url: str) -> None:
        """A kept connection to url broke: the others from the same time likely did too."""
        stale = [c for c in self._idle_binders if c.address.url == url]
        self._idle_binders = [c for c in self._idle_binders if c.address.url != url]
        for conn in stale:
            conn.abort()
