"""Primary backend and identity source "ldap": Active Directory and other LDAP directories.

The password check is search-then-bind: the service account finds exactly one entry with
`user_filter` (the user name escaped per RFC 4515 section 3, so a name cannot widen the
filter), then a simple bind (RFC 4511 section 4.2, RFC 4513 section 5.1.3) as that entry's DN
proves the password on a connection that is never used for anything but user binds. An
empty password is refused before any bind, because RFC 4513 section 5.1.2 makes a bind with
a DN and no password an "unauthenticated" bind that succeeds.

Blocking and time: nothing blocks. The LDAP client (`ldap_client`, `ldap_ber`) runs on the
event loop; each public method has one overall deadline (a connect timeout per URL plus one
operation), and each connect and each operation has `timeout_seconds`. A directory that is
down is an UNAVAILABLE result (never an accept); for `lookup`, which has no such value, it
is a `BackendError`, so the server's boundary fails closed rather than treating the user as
one without a SecSign ID.

Servers and connections (`ldap_pool`): `urls` are tried in order, a failed URL is skipped
for `dead_server_seconds`; service searches are multiplexed on a few kept connections bound
as the service account; user binds re-bind kept connections, at most `pool_size` of them.
A kept connection that breaks is reopened (possibly on the next URL) before the request is
given up.

Groups are reported both as DNs and as the first RDN's value, so a policy can name either
`CN=vpn-users,OU=Groups,DC=example,DC=com` or `vpn-users`. Nested groups use Active
Directory's LDAP_MATCHING_RULE_IN_CHAIN when the root DSE says the server is an AD (Samba
included), and otherwise walk the groups' own `memberOf`, bounded in depth and count.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from radius_proxy.backends.ldap_ber import (
    SCOPE_BASE,
    SCOPE_SUBTREE,
    SearchRequest,
    paged_cookie,
    paged_results_control,
)
from radius_proxy.backends.ldap_client import LdapConnectionError, ServerAddress
from radius_proxy.backends.ldap_entries import (
    UserRecord,
    account_unusable,
    bind_failure_reason,
    group_names,
    reduce_username,
)
from radius_proxy.backends.ldap_filter import (
    Extensible,
    Filter,
    Present,
    compile_filter,
    escape_filter_value,
)
from radius_proxy.backends.ldap_pool import (
    METRIC_LABEL,
    ConnectionPools,
    DirectoryUnavailable,
    ServerList,
    Service,
)
from radius_proxy.backends.ldap_tlv import (
    LdapCodecError,
)
from radius_proxy.config import LdapConfig
from radius_proxy.eager import Deadline
from radius_proxy.errors import BackendError, ConfigError, Problem
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline.ports import (
    AuthRequest,
    DirectoryEntry,
    PrimaryOutcome,
    PrimaryResult,
)

__all__ = ["METRIC_LABEL", "LdapDirectory", "bind_failure_reason", "escape_filter_value",
           "group_names", "reduce_username"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: LDAP_MATCHING_RULE_IN_CHAIN (MS-ADTS 3.1.1.3.4.4.3): transitive `member`.
MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
#: Bounds of the memberOf walk: levels of nesting, and groups in all.
MAX_GROUP_DEPTH = 8
MAX_GROUPS = 1000
#: Result codes after which another server may answer (busy, unavailable).
_RETRY_CODES = frozenset({51, 52})
_ANY_ENTRY = Present("objectClass")
_NO_ATTRIBUTES = ("1.1",)  # RFC 4511 section 4.5.1.8
#: Compiled user filters kept, keyed by user name (a login repeats its search).
_FILTER_CACHE_SIZE = 4096


class _ServerFailure(Exception):
    """A server answered an operation with an error that another connection may not have."""


def _reject(reason: str) -> PrimaryResult:
    return PrimaryResult(PrimaryOutcome.REJECT, reason)


class LdapDirectory:
    """The directory: PrimaryAuthenticator (search-then-bind) and IdentitySource in one."""

    name = "ldap"

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        self._check_config(config)
        try:
            self._context = ssl.create_default_context(cafile=config.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([Problem("ldap", "ldap.ca_file", f"cannot load: {exc}",
                                       "name a readable PEM file of CA certificates")]) from exc
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._servers = ServerList(config.urls, config.dead_server_seconds)
        #: Overall budget of one request: a connect timeout per URL, plus one operation.
        self._budget = config.timeout_seconds * (len(config.urls) + 1)
        self._attempts = len(config.urls) + 1
        self._time_limit = max(1, int(config.timeout_seconds))
        self._attributes = tuple(sorted({
            config.secsign_id_attribute, config.group_attribute, "userAccountControl",
            "lockoutTime", "msDS-User-Account-Control-Computed", "pwdAccountLockedTime",
        }))
        self._filters: dict[str, Filter | None] = {}
        self._pools: ConnectionPools | None = None
        for url in config.urls:
            self._warn_cleartext(url)

    # -- the ports -------------------------------------------------------------------------

    async def authenticate(self, request: AuthRequest) -> PrimaryResult:
        """Search the user, refuse unusable accounts, bind as the user, collect groups."""
        if not request.password:
            log.debug("ldap_reject", username=request.username, reason="empty_password")
            return _reject("empty_password")
        name = reduce_username(request.username, self._config.strip_domain)
        if not name:
            return _reject("unknown_user")
        try:
            result = await self._run(self._authenticate(name, request.password))
        except DirectoryUnavailable as exc:
            log.warning("ldap_unavailable", username=name, error=str(exc))
            return PrimaryResult(PrimaryOutcome.UNAVAILABLE, "directory_unavailable")
        if result.outcome is not PrimaryOutcome.ACCEPT:
            log.debug("ldap_reject", username=name, reason=result.reason)
        return result

    async def lookup(self, username: str, primary: PrimaryResult) -> DirectoryEntry | None:
        """The SecSign ID and groups; reuses the entry when the password check was ours.

        None when the directory has no such (single) user. An entry whose `secsign_id` is
        None means the user exists without the attribute; its groups still count.
        """
        if primary.entry is not None and primary.entry.source == self.name:
            return primary.entry
        name = reduce_username(username, self._config.strip_domain)
        if not name:
            return None
        try:
            return await self._run(self._with_service(
                lambda service: self._find_with_groups(name, service)))
        except DirectoryUnavailable as exc:
            log.warning("ldap_unavailable", username=name, error=str(exc))
            raise BackendError(f"LDAP directory unavailable: {exc}") from exc

    async def probe(self) -> bool:
        """Can the service account bind and read `base_dn` right now (for /readyz)?"""
        try:
            return await self._run(self._with_service(self._read_base))
        except DirectoryUnavailable:
            return False

    async def close(self) -> None:
        """Unbind and close every connection this loop has open."""
        pools, self._pools = self._pools, None
        if pools is not None and pools.loop is asyncio.get_running_loop():
            await pools.close()
        # a pool of another loop was closed by its own task when that loop shut down

    # -- flows -------------------------------------------------------------------------------

    def _here(self) -> ConnectionPools:
        """The connections of the running loop (made on first use in each loop)."""
        pools = self._pools
        if pools is None or pools.loop is not asyncio.get_running_loop():
            pools = self._pools = ConnectionPools(self._config, self._servers, self._context)
        return pools

    async def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Await work within the request's overall budget.

        `Deadline`, not `asyncio.timeout`: the server runs a request's first step without a
        Task (radius_proxy.eager), and the timer is armed only if the work has to wait.
        """
        try:
            return await Deadline(work, self._budget)
        except TimeoutError as exc:
            METRICS.backend_errors.labels(METRIC_LABEL).inc()
            raise DirectoryUnavailable(f"no answer within {self._budget:g} s") from exc

    async def _authenticate(self, name: str, password: bytes) -> PrimaryResult:
        found = await self._with_service(lambda service: self._find_user(name, service))
        if isinstance(found, str):
            return _reject(found)
        if account_unusable(found):
            return _reject("account_disabled")
        verdict = await self._bind_user(found.dn, password)
        if verdict:
            return _reject(verdict)
        groups = await self._groups(found)
        entry = self._entry(found, groups)
        log.debug("ldap_accept", username=name, dn=found.dn, groups=len(groups),
                  has_secsign_id=entry.secsign_id is not None)
        return PrimaryResult(PrimaryOutcome.ACCEPT, entry=entry)

    async def _find_with_groups(self, name: str, service: Service) -> DirectoryEntry | None:
        found = await self._find_user(name, service)
        if isinstance(found, str):
            return None
        return self._entry(found, await self._resolve_groups(found, service))

    async def _read_base(self, service: Service) -> bool:
        result = await service.conn.search(SearchRequest(
            self._config.base_dn, SCOPE_BASE, _ANY_ENTRY, _NO_ATTRIBUTES))
        if result.done.code != 0:
            raise _ServerFailure(f"base_dn read: {result.done.code} {result.done.message}")
        return True

    def _entry(self, found: UserRecord, groups: frozenset[str]) -> DirectoryEntry:
        return DirectoryEntry(source=self.name,
                              secsign_id=found.first(self._config.secsign_id_attribute),
                              groups=groups, dn=found.dn)

    # -- connections ---------------------------------------------------------------------------

    async def _with_service(self, op: Callable[[Service], Awaitable[T]]) -> T:
        """Run op on a service connection, reconnecting (with failover) if it broke.

        A failure on a connection that was just opened marks its server dead; one on a
        kept connection may just be an idle timeout, so it is only reopened.
        """
        pools = self._here()
        async with pools.search_slots:
            for _ in range(self._attempts):
                service, fresh = await pools.service()
                try:
                    return await op(service)
                except (LdapConnectionError, _ServerFailure, LdapCodecError) as exc:
                    METRICS.backend_errors.labels(METRIC_LABEL).inc()
                    log.warning("ldap_service_operation_failed", server=service.url,
                                error=str(exc), reused=not fresh)
                    pools.discard_service(service)
                    if fresh:
                        self._servers.mark_dead(service.url, str(exc))
            raise DirectoryUnavailable("every directory server failed")

    async def _bind_user(self, dn: str, password: bytes) -> str:
        """Bind as dn on a bind connection: "" when the password is right, else why not."""
        pools = self._here()
        async with pools.bind_slots:
            for _ in range(self._attempts):
                conn, fresh = await pools.binder()
                url = conn.address.url
                try:
                    result = await conn.bind(dn, password)
                except LdapConnectionError as exc:
                    if fresh:
                        self._servers.mark_dead(url, str(exc))
                    else:
                        pools.drop_idle_binders(url)
                    continue
                except BaseException:  # cancelled mid-bind: the identity is unknown
                    conn.abort()
                    raise
                if result.code in _RETRY_CODES:
                    conn.close()
                    self._servers.mark_dead(url, f"bind: {result.code} {result.message}")
                    continue
                pools.keep_binder(conn)
                if fresh:
                    self._servers.mark_alive(url)
                if result.code == 0:
                    return ""
                return bind_failure_reason(result.code, result.message, dn)
            raise DirectoryUnavailable("no directory server could check the password")

    # -- the directory operations ------------------------------------------------------------

    def _user_filter(self, name: str) -> Filter | None:
        """user_filter with name as one escaped assertion value; None if it cannot be."""
        try:
            return self._filters[name]
        except KeyError:
            pass
        try:
            text = self._config.user_filter.replace("{username}", escape_filter_value(name))
            compiled: Filter | None = compile_filter(text)
        except (UnicodeEncodeError, LdapCodecError):
            compiled = None
        if len(self._filters) >= _FILTER_CACHE_SIZE:
            self._filters.clear()
        self._filters[name] = compiled
        return compiled

    async def _find_user(self, name: str, service: Service) -> UserRecord | str:
        """The one entry user_filter finds for name, or the reject reason."""
        search_filter = self._user_filter(name)
        if search_filter is None:
            return "unknown_user"
        result = await service.conn.search(SearchRequest(
            self._config.base_dn, SCOPE_SUBTREE, search_filter, self._attributes, 2,
            self._time_limit))
        code, entries = result.done.code, result.entries
        if code == 32:
            log.error("ldap_base_dn_missing", base_dn=self._config.base_dn, server=service.url)
            return "unknown_user"
        if code not in (0, 4):
            raise _ServerFailure(f"user search: {code} {result.done.message}")
        if code == 4 or len(entries) > 1:
            log.warning("ldap_ambiguous_user", username=name, matches=len(entries),
                        dns=[e.dn for e in entries])
            return "ambiguous_user"
        if not entries:
            return "unknown_user"
        return UserRecord.of(entries[0])

    async def _groups(self, found: UserRecord) -> frozenset[str]:
        """The user's groups; a service connection only when nesting must be resolved."""
        if not self._config.nested_groups or not found.attributes.get(
                self._config.group_attribute.lower()):
            return group_names(found.texts(self._config.group_attribute))
        return await self._with_service(lambda service: self._resolve_groups(found, service))

    async def _resolve_groups(self, found: UserRecord, service: Service) -> frozenset[str]:
        direct = found.texts(self._config.group_attribute)
        if not self._config.nested_groups or not direct:
            return group_names(direct)
        chained = (await self._groups_in_chain(found.dn, service)
                   if service.active_directory else None)
        if chained is None:
            dns, method = await self._walk_groups(direct, service), "walk"
        else:
            dns, method = _merge(direct, chained), "in_chain"
        log.debug("ldap_groups", dn=found.dn, method=method, direct=len(direct), total=len(dns))
        return group_names(dns)

    async def _groups_in_chain(self, user_dn: str, service: Service) -> list[str] | None:
        """Every group user_dn is in, transitively, in one paged search (AD only).

        None when the server refuses the matching rule, so the caller walks instead.
        """
        request = SearchRequest(
            service.naming_context or self._config.base_dn, SCOPE_SUBTREE,
            Extensible(MATCHING_RULE_IN_CHAIN, "member", user_dn.encode("utf-8")),
            _NO_ATTRIBUTES, 0, self._time_limit)
        found: list[str] = []
        cookie = b""
        while len(found) < MAX_GROUPS:
            result = await service.conn.search(request, (paged_results_control(500, cookie),))
            code = result.done.code
            if code not in (0, 4):
                if code in _RETRY_CODES:
                    raise _ServerFailure(f"in-chain search: {code} {result.done.message}")
                log.info("ldap_in_chain_refused", server=service.url, result=code,
                         message=result.done.message)
                return None
            found.extend(entry.dn for entry in result.entries)
            cookie = paged_cookie(result.controls)
            if not cookie or code == 4:
                break
        return found

    async def _walk_groups(self, direct: list[str], service: Service) -> list[str]:
        """Follow each group's own group attribute upwards, breadth first, loop-safe."""
        seen = {dn.lower() for dn in direct}
        found = list(direct)
        frontier = list(direct)
        for _ in range(MAX_GROUP_DEPTH - 1):
            upper: list[str] = []
            for group_dn in frontier:
                if len(found) >= MAX_GROUPS:
                    log.warning("ldap_group_walk_truncated", groups=len(found))
                    return found
                for parent in await self._read_values(group_dn, service):
                    if parent.lower() not in seen:
                        seen.add(parent.lower())
                        found.append(parent)
                        upper.append(parent)
            if not upper:
                break
            frontier = upper
        return found

    async def _read_values(self, dn: str, service: Service) -> list[str]:
        attribute = self._config.group_attribute
        result = await service.conn.search(SearchRequest(dn, SCOPE_BASE, _ANY_ENTRY,
                                                         (attribute,)))
        code = result.done.code
        if code == 32:  # the group is gone, or not visible to the service account
            return []
        if code != 0:
            raise _ServerFailure(f"group read: {code} {result.done.message}")
        if not result.entries:
            return []
        return UserRecord.of(result.entries[0]).texts(attribute)

    # -- configuration checks --------------------------------------------------------------

    @staticmethod
    def _check_config(config: LdapConfig) -> None:
        problems: list[Problem] = []
        if not config.urls:
            problems.append(Problem("ldap", "ldap.urls", "no directory URL",
                                    'add e.g. urls = ["ldaps://dc1.example.com"]'))
        for url in config.urls:
            try:
                ServerAddress.parse(url)
            except ValueError:
                problems.append(Problem("ldap", "ldap.urls", f"{url!r} is not ldap:// or "
                                        "ldaps://", "write the URL as ldaps://host[:port]"))
        if config.bind_dn and not config.bind_password:
            problems.append(Problem("ldap", "ldap.bind_password", "bind_dn without a password "
                                    "would be an unauthenticated bind (RFC 4513 5.1.2)",
                                    "set bind_password_file, or leave bind_dn empty for "
                                    "anonymous searches"))
        if "{username}" not in config.user_filter:
            problems.append(Problem("ldap", "ldap.user_filter", "has no {username} placeholder",
                                    "e.g. (&(objectClass=user)(sAMAccountName={username}))"))
        else:
            try:
                compile_filter(config.user_filter.replace("{username}", "x"))
            except LdapCodecError as exc:
                problems.append(Problem("ldap", "ldap.user_filter", f"not a filter: {exc}",
                                        "write an RFC 4515 filter, e.g. "
                                        "(&(objectClass=user)(sAMAccountName={username}))"))
        if problems:
            raise ConfigError(problems)

    def _warn_cleartext(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "ldap" or self._config.start_tls:
            return
        try:
            loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            log.warning("ldap_cleartext", server=url,
                        detail="passwords cross the network unencrypted; use ldaps:// or "
                               "start_tls = true")


def _merge(first: list[str], second: list[str]) -> list[str]:
    seen: set[str] = set()
    merged: list[str] = []
    for dn in [*first, *second]:
        if dn.lower() not in seen:
            seen.add(dn.lower())
            merged.append(dn)
    return merged
