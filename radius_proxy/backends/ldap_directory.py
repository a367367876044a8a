"""Primary backend and identity source "ldap": Active Directory and other LDAP directories.

The password check is search-then-bind: the service account finds exactly one entry with
`user_filter` (the user name escaped per RFC 4515 section 3, so a name cannot widen the
filter), then a simple bind (RFC 4511 section 4.2, RFC 4513 section 5.1.3) as that entry's DN
proves the password on a connection of its own. An empty password is refused before any
bind, because RFC 4513 section 5.1.2 makes a bind with a DN and no password an
"unauthenticated" bind that succeeds.

Blocking and time: ldap3 is synchronous, so every directory call runs in a bounded thread
pool of `pool_size` workers, and each public method waits at most one overall deadline on
the event loop. Inside a worker, ldap3 has `timeout_seconds` for each connect and each
operation, and the worker checks the same deadline between steps. A directory that is down
is an UNAVAILABLE result (never an accept); for `lookup`, which has no such value, it is a
`BackendError`, so the server's boundary fails closed rather than treating the user as one
without a SecSign ID.

Servers: `urls` are tried in order. A URL that failed to connect is remembered as dead for
`dead_server_seconds` and tried only after every live one; when all are dead they are all
tried anyway, so an outage ends with the first request after the directory is back. The
service account's connection is kept open and shared behind a lock; when it breaks it is
reopened once (possibly on the next URL) before the request is given up.

Groups are reported both as DNs and as the first RDN's value, so a policy can name either
`CN=vpn-users,OU=Groups,DC=example,DC=com` or `vpn-users`. Nested groups use Active
Directory's LDAP_MATCHING_RULE_IN_CHAIN when the root DSE says the server is an AD (Samba
included), and otherwise walk the groups' own `memberOf`, bounded in depth and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import math
import re
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from radius_proxy.config import LdapConfig
from radius_proxy.errors import BackendError, ConfigError, Problem
from radius_proxy.metrics import METRICS
from radius_proxy.pipeline.ports import (
    AuthRequest,
    DirectoryEntry,
    PrimaryOutcome,
    PrimaryResult,
)

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names that pyasn1 >= 0.6.2 deprecates (tagMap, typeMap); harmless,
    # but fatal under -W error. Importing it here first keeps the warning out for everyone.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter
    from ldap3.utils.dn import parse_dn

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: The `backend` label of this module's metrics (the config section).
METRIC_LABEL = "ldap"

#: userAccountControl flags (MS-ADTS 2.2.16).
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
#: Root DSE capability of Active Directory and Samba AD (MS-ADTS 3.1.1.3.4.3).
AD_CAPABILITY_OID = "1.2.840.113556.1.4.800"
#: LDAP_MATCHING_RULE_IN_CHAIN (MS-ADTS 3.1.1.3.4.4.3): transitive `member`.
MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
#: Bounds of the memberOf walk: levels of nesting, and groups in all.
MAX_GROUP_DEPTH = 8
MAX_GROUPS = 1000
#: AD's bind diagnostics ("... data 533, ...") that mean the account, not the password.
_AD_ACCOUNT_CODES = frozenset({"533", "701", "775"})  # disabled, expired, locked out
_AD_EXPIRED_CODES = frozenset({"532", "773"})  # password expired, must be changed
_AD_DATA = re.compile(r"\bdata ([0-9a-fA-F]+)\b")
#: Result codes after which another server may answer (busy, unavailable, unwilling).
_RETRY_CODES = frozenset({51, 52})
#: Characters RFC 4515 section 3 requires escaped, plus everything outside printable ASCII.
_FILTER_SPECIAL = frozenset(b"*()\\")


class _Seconds(float):
    """A timeout ldap3 can use both ways: it calls `socket.settimeout()` with the float, and
    packs SO_RCVTIMEO as whole seconds (`struct.pack("LL", ...)`), which needs `__index__`.
    """

    def __index__(self) -> int:
        return max(1, math.ceil(self))


class _Unavailable(Exception):
    """No directory server answered in time: the request cannot be decided."""


class _ServerFailure(Exception):
    """A server answered an operation with an error that another connection may not have."""


def escape_filter_value(value: str) -> str:
    """Escape an assertion value for a search filter (RFC 4515 section 3).

    `* ( ) \\` and NUL must be escaped; every other non-printable or non-ASCII byte of the
    UTF-8 encoding is escaped too, which RFC 4515 allows and which keeps the filter pure
    ASCII whatever the NAS sent. Raises UnicodeEncodeError for text that is not valid UTF-8.
    """
    out: list[str] = []
    for byte in value.encode("utf-8"):
        if byte in _FILTER_SPECIAL or byte < 0x20 or byte >= 0x7F:
            out.append(f"\\{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def reduce_username(username: str, strip_domain: bool) -> str:
    """The name to search for: `DOMAIN\\user` and `user@domain` become `user` when asked.

    Neither a NetBIOS domain nor a UPN suffix can contain the other separator, so splitting
    at the last `\\` and the last `@` is unambiguous.
    """
    if not strip_domain:
        return username
    name = username.rpartition("\\")[2]
    if "@" in name:
        name = name.rpartition("@")[0]
    return name


def group_names(dns: Sequence[str]) -> frozenset[str]:
    """Each group DN, and its first RDN's value (`vpn-users` of `CN=vpn-users,...`)."""
    names: set[str] = set()
    for dn in dns:
        names.add(dn)
        try:
            rdns = parse_dn(dn)
        except LDAPException:
            continue
        if rdns:
            names.add(_unescape_dn_value(rdns[0][1]))
    return frozenset(names)


def _unescape_dn_value(value: str) -> str:
    r"""Undo RFC 4514 section 2.4 escapes (`\,` and `\2c`) so `vpn\2cusers` reads `vpn,users`."""
    raw = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                raw.append(int(pair, 16))
                i += 3
                continue
            raw.extend(value[i + 1].encode("utf-8"))
            i += 2
            continue
        raw.extend(char.encode("utf-8"))
        i += 1
    return raw.decode("utf-8", errors="replace")


def _reject(reason: str) -> PrimaryResult:
    return PrimaryResult(PrimaryOutcome.REJECT, reason)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise _Unavailable("deadline passed")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class _UserRecord:
    """The entry the service account found: its DN and the attributes we asked for."""

    dn: str
    attributes: dict[str, list[bytes]]

    def texts(self, name: str) -> list[str]:
        values = self.attributes.get(name.lower(), [])
        return [v.decode("utf-8", errors="replace") for v in values]

    def first(self, name: str) -> str | None:
        for text in self.texts(name):
            if text.strip():
                return text.strip()
        return None

    def integer(self, name: str) -> int | None:
        text = self.first(name)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None


def account_unusable(record: _UserRecord) -> bool:
    """Disabled or locked, as far as the directory's attributes tell.

    AD: userAccountControl ACCOUNTDISABLE; locked per msDS-User-Account-Control-Computed's
    LOCKOUT bit when the server computes it (it accounts for the lockout duration having
    passed, which a raw `lockoutTime` > 0 does not), else `lockoutTime` > 0. OpenLDAP:
    ppolicy's `pwdAccountLockedTime`, and `userAccountControl` where the schema carries it.
    """
    uac = record.integer("userAccountControl")
    if uac is not None and uac & UF_ACCOUNTDISABLE:
        return True
    computed = record.integer("msDS-User-Account-Control-Computed")
    if computed is not None:
        if computed & UF_LOCKOUT:
            return True
    else:
        lockout = record.integer("lockoutTime")
        if lockout is not None and lockout > 0:
            return True
    return bool(record.texts("pwdAccountLockedTime"))


@dataclass(slots=True)
class _Service:
    """The service account's open connection, and what its server's root DSE said."""

    url: str
    conn: Any
    active_directory: bool
    naming_context: str | None


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]
    """ldap3's Tls, with the certificate and host name checked by Python's own ssl module.

    ldap3 2.9 turns `check_hostname` off and calls the deprecated `ssl.match_hostname`,
    which is gone in Python 3.12 and cannot match IP addresses. This context always
    verifies (CERT_REQUIRED, host name or IP against the URL's host, TLS 1.2 or newer).
    """

    def __init__(self, ca_file: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = ssl.create_default_context(cafile=ca_file or None)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


class LdapDirectory:
    """The directory: PrimaryAuthenticator (search-then-bind) and IdentitySource in one."""

    name = "ldap"

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        self._check_config(config)
        timeout = config.timeout_seconds
        try:
            tls = _VerifiedTls(config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([Problem("ldap", "ldap.ca_file", f"cannot load: {exc}",
                                       "name a readable PEM file of CA certificates")]) from exc
        self._servers = {
            url: ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=timeout, tls=tls)
            for url in config.urls
        }
        #: Overall budget of one request: a connect timeout per URL, plus one operation.
        self._budget = timeout * (len(config.urls) + 1)
        self._attributes = sorted({
            config.secsign_id_attribute, config.group_attribute, "userAccountControl",
            "lockoutTime", "msDS-User-Account-Control-Computed", "pwdAccountLockedTime",
        })
        self._executor = ThreadPoolExecutor(max_workers=config.pool_size,
                                            thread_name_prefix="ldap")
        # Service-account connections, one per worker at most: searches run in parallel
        # (one shared connection serialised them: over a second per login under load).
        self._idle_services: list[_Service] = []
        self._services_lock = threading.Lock()
        self._service_slots = threading.BoundedSemaphore(config.pool_size)
        self._dead_until: dict[str, float] = {}
        self._state_lock = threading.Lock()
        for url in config.urls:
            self._warn_cleartext(url)
            METRICS.backend_up.labels(METRIC_LABEL, url).set(1)

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
            result = await self._run(partial(self._authenticate_sync, name, request.password))
        except _Unavailable as exc:
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
            return await self._run(partial(self._lookup_sync, name))
        except _Unavailable as exc:
            log.warning("ldap_unavailable", username=name, error=str(exc))
            raise BackendError(f"LDAP directory unavailable: {exc}") from exc

    async def probe(self) -> bool:
        """Can the service account bind and read `base_dn` right now (for /readyz)?"""
        try:
            return await self._run(self._probe_sync)
        except _Unavailable:
            return False

    async def close(self) -> None:
        """Unbind the service connection and stop the worker threads."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError, RuntimeError):
            await asyncio.wait_for(loop.run_in_executor(self._executor, self._close_service),
                                   timeout=self._config.timeout_seconds)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- running blocking work -------------------------------------------------------------

    async def _run(self, fn: Callable[[float], T]) -> T:
        """Run fn(deadline) in the pool; give up on the loop side at the same deadline."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._budget
        context = contextvars.copy_context()  # the request's bound log keys, in the worker too
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, context.run, fn, deadline),
                timeout=self._budget)
        except TimeoutError as exc:
            METRICS.backend_errors.labels(METRIC_LABEL).inc()
            raise _Unavailable(f"no answer within {self._budget:g} s") from exc

    def _authenticate_sync(self, name: str, password: bytes, deadline: float) -> PrimaryResult:
        _check_deadline(deadline)
        found = self._with_service(partial(self._find_user, name), deadline)
        if isinstance(found, str):
            return _reject(found)
        if account_unusable(found):
            return _reject("account_disabled")
        verdict = self._bind_user(found.dn, password, deadline)
        if verdict:
            return _reject(verdict)
        groups = self._with_service(partial(self._resolve_groups, found), deadline)
        entry = self._entry(found, groups)
        log.debug("ldap_accept", username=name, dn=found.dn, groups=len(groups),
                  has_secsign_id=entry.secsign_id is not None)
        return PrimaryResult(PrimaryOutcome.ACCEPT, entry=entry)

    def _lookup_sync(self, name: str, deadline: float) -> DirectoryEntry | None:
        _check_deadline(deadline)

        def find_with_groups(service: _Service) -> DirectoryEntry | None:
            found = self._find_user(name, service)
            if isinstance(found, str):
                return None
            return self._entry(found, self._resolve_groups(found, service))

        return self._with_service(find_with_groups, deadline)

    def _probe_sync(self, deadline: float) -> bool:
        def read_base(service: _Service) -> bool:
            conn = service.conn
            conn.search(self._config.base_dn, "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=[ldap3.NO_ATTRIBUTES])
            if conn.result.get("result") != 0:
                raise _ServerFailure(f"base_dn read: {conn.result.get('description')}")
            return True

        return self._with_service(read_base, deadline)

    def _entry(self, found: _UserRecord, groups: frozenset[str]) -> DirectoryEntry:
        return DirectoryEntry(source=self.name,
                              secsign_id=found.first(self._config.secsign_id_attribute),
                              groups=groups, dn=found.dn)

    # -- servers and connections -----------------------------------------------------------

    def _candidates(self) -> list[str]:
        """URLs in order, the ones remembered as dead moved to the end."""
        now = time.monotonic()
        with self._state_lock:
            alive = [u for u in self._config.urls if self._dead_until.get(u, 0.0) <= now]
        return alive + [u for u in self._config.urls if u not in alive]

    def _mark_dead(self, url: str, error: str) -> None:
        with self._state_lock:
            was_alive = self._dead_until.get(url, 0.0) <= time.monotonic()
            self._dead_until[url] = time.monotonic() + self._config.dead_server_seconds
        METRICS.backend_errors.labels(METRIC_LABEL).inc()
        METRICS.backend_up.labels(METRIC_LABEL, url).set(0)
        if was_alive:
            log.warning("ldap_server_down", server=url, error=error,
                        skip_seconds=self._config.dead_server_seconds)
        else:
            log.debug("ldap_server_still_down", server=url, error=error)

    def _mark_alive(self, url: str) -> None:
        with self._state_lock:
            was_dead = self._dead_until.pop(url, None) is not None
        if was_dead:
            METRICS.backend_up.labels(METRIC_LABEL, url).set(1)
            log.info("ldap_server_up", server=url)

    def _open(self, url: str, user: str | None, password: str | bytes | None) -> Any:
        """A connection to url, TLS as configured, after a simple bind (or anonymous).

        The bind's own failure is left in `conn.bound` / `conn.result` for the caller;
        network and TLS failures raise.
        """
        server = self._servers[url]
        conn = ldap3.Connection(
            server, user=user or None, password=password if user else None,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            client_strategy=ldap3.SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False, read_only=True, auto_referrals=False,
            check_names=False, auto_escape=False,
            receive_timeout=_Seconds(self._config.timeout_seconds),
        )
        try:
            server.reset_availability()  # ldap3's own 5 s memory of failures; ours governs
            conn.open(read_server_info=False)
            if self._config.start_tls and not server.ssl and not conn.start_tls(
                    read_server_info=False):
                raise _ServerFailure("StartTLS refused")
            conn.bind(read_server_info=False)
        except BaseException:
            _unbind_quietly(conn)
            raise
        return conn

    def _connect_service(self, deadline: float) -> _Service:
        for url in self._candidates():
            _check_deadline(deadline)
            try:
                conn = self._open(url, self._config.bind_dn, self._config.bind_password.value)
            except (LDAPException, OSError, _ServerFailure) as exc:
                self._mark_dead(url, _describe(exc))
                continue
            if not conn.bound:
                log.error("ldap_service_bind_failed", server=url, bind_dn=self._config.bind_dn,
                          result=conn.result.get("description"))
                _unbind_quietly(conn)
                self._mark_dead(url, "service account bind failed")
                continue
            try:
                service = self._read_root_dse(url, conn)
            except (LDAPException, OSError) as exc:
                _unbind_quietly(conn)
                self._mark_dead(url, _describe(exc))
                continue
            self._mark_alive(url)
            return service
        raise _Unavailable("no directory server could be reached")

    def _read_root_dse(self, url: str, conn: Any) -> _Service:
        """Is this an Active Directory (in-chain matching rule), and its naming context."""
        conn.search("", "(objectClass=*)", search_scope=ldap3.BASE, attributes=[
            "supportedCapabilities", "forestFunctionality", "defaultNamingContext"])
        record = _first_record(conn.response) if conn.result.get("result") == 0 else None
        if record is None:
            return _Service(url, conn, False, None)
        capabilities = set(record.texts("supportedCapabilities"))
        ad = AD_CAPABILITY_OID in capabilities or bool(record.texts("forestFunctionality"))
        return _Service(url, conn, ad, record.first("defaultNamingContext"))

    def _with_service(self, op: Callable[[_Service], T], deadline: float) -> T:
        """Run op on the shared service connection, reconnecting (with failover) if it broke.

        A failure on a connection that was just opened marks its server dead; one on a
        kept connection may just be an idle timeout, so it is only reopened.
        """
        if not self._service_slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _Unavailable("service connections busy until the deadline")
        try:
            for _ in range(len(self._config.urls) + 1):
                with self._services_lock:
                    kept = self._idle_services.pop() if self._idle_services else None
                service = kept or self._connect_service(deadline)
                try:
                    result = op(service)
                except (LDAPException, OSError, _ServerFailure) as exc:
                    METRICS.backend_errors.labels(METRIC_LABEL).inc()
                    log.warning("ldap_service_operation_failed", server=service.url,
                                error=_describe(exc), reused=kept is not None)
                    _unbind_quietly(service.conn)
                    if kept is None:
                        self._mark_dead(service.url, _describe(exc))
                    else:  # the others kept from before are likely stale too (a restart)
                        self._close_service()
                    _check_deadline(deadline)
                    continue
                with self._services_lock:
                    self._idle_services.append(service)
                return result
            raise _Unavailable("every directory server failed")
        finally:
            self._service_slots.release()

    def _close_service(self) -> None:
        with self._services_lock:
            services, self._idle_services = self._idle_services, []
        for service in services:
            _unbind_quietly(service.conn)

    # -- the directory operations ------------------------------------------------------------

    def _find_user(self, name: str, service: _Service) -> _UserRecord | str:
        """The one entry user_filter finds for name, or the reject reason."""
        try:
            value = escape_filter_value(name)
        except UnicodeEncodeError:
            return "unknown_user"
        search_filter = self._config.user_filter.replace("{username}", value)
        conn = service.conn
        conn.search(self._config.base_dn, search_filter, search_scope=ldap3.SUBTREE,
                    attributes=self._attributes, size_limit=2,
                    time_limit=max(1, int(self._config.timeout_seconds)))
        code = conn.result.get("result")
        entries = _records(conn.response)
        if code == 32:
            log.error("ldap_base_dn_missing", base_dn=self._config.base_dn, server=service.url)
            return "unknown_user"
        if code not in (0, 4):
            raise _ServerFailure(f"user search: {conn.result.get('description')}")
        if code == 4 or len(entries) > 1:
            log.warning("ldap_ambiguous_user", username=name, matches=len(entries),
                        dns=[e.dn for e in entries])
            return "ambiguous_user"
        if not entries:
            return "unknown_user"
        return entries[0]

    def _bind_user(self, dn: str, password: bytes, deadline: float) -> str:
        """Bind as dn on a connection of its own: "" when the password is right, else why not."""
        for url in self._candidates():
            _check_deadline(deadline)
            try:
                conn = self._open(url, dn, password)
            except (LDAPException, OSError, _ServerFailure) as exc:
                self._mark_dead(url, _describe(exc))
                continue
            try:
                if conn.bound:
                    self._mark_alive(url)
                    return ""
                code = conn.result.get("result")
                if code in _RETRY_CODES:
                    self._mark_dead(url, f"bind: {conn.result.get('description')}")
                    continue
                return bind_failure_reason(code, str(conn.result.get("message") or ""), dn)
            finally:
                _unbind_quietly(conn)
        raise _Unavailable("no directory server could check the password")

    def _resolve_groups(self, found: _UserRecord, service: _Service) -> frozenset[str]:
        direct = found.texts(self._config.group_attribute)
        if not self._config.nested_groups:
            return group_names(direct)
        chained = self._groups_in_chain(found.dn, service) if service.active_directory else None
        if chained is None:
            dns, method = self._walk_groups(direct, service), "walk"
        else:
            dns, method = _merge(direct, chained), "in_chain"
        log.debug("ldap_groups", dn=found.dn, method=method, direct=len(direct), total=len(dns))
        return group_names(dns)

    def _groups_in_chain(self, user_dn: str, service: _Service) -> list[str] | None:
        """Every group user_dn is in, transitively, in one paged search (AD only).

        None when the server refuses the matching rule, so the caller walks instead.
        """
        conn = service.conn
        search_filter = f"(member:{MATCHING_RULE_IN_CHAIN}:={escape_filter_value(user_dn)})"
        base = service.naming_context or self._config.base_dn
        found: list[str] = []
        cookie: bytes | None = None
        while len(found) < MAX_GROUPS:
            conn.search(base, search_filter, search_scope=ldap3.SUBTREE,
                        attributes=[ldap3.NO_ATTRIBUTES], paged_size=500, paged_cookie=cookie,
                        time_limit=max(1, int(self._config.timeout_seconds)))
            code = conn.result.get("result")
            if code not in (0, 4):
                if code in _RETRY_CODES or code is None:
                    raise _ServerFailure(f"in-chain search: {conn.result.get('description')}")
                log.info("ldap_in_chain_refused", server=service.url,
                         result=conn.result.get("description"))
                return None
            found.extend(r.dn for r in _records(conn.response))
            cookie = _paged_cookie(conn.result)
            if not cookie or code == 4:
                break
        return found

    def _walk_groups(self, direct: list[str], service: _Service) -> list[str]:
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
                for parent in self._read_values(group_dn, service):
                    if parent.lower() not in seen:
                        seen.add(parent.lower())
                        found.append(parent)
                        upper.append(parent)
            if not upper:
                break
            frontier = upper
        return found

    def _read_values(self, dn: str, service: _Service) -> list[str]:
        conn = service.conn
        attribute = self._config.group_attribute
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[attribute])
        code = conn.result.get("result")
        if code == 32:  # the group is gone, or not visible to the service account
            return []
        if code != 0:
            raise _ServerFailure(f"group read: {conn.result.get('description')}")
        record = _first_record(conn.response)
        return record.texts(attribute) if record else []

    # -- configuration checks --------------------------------------------------------------

    @staticmethod
    def _check_config(config: LdapConfig) -> None:
        problems: list[Problem] = []
        if not config.urls:
            problems.append(Problem("ldap", "ldap.urls", "no directory URL",
                                    'add e.g. urls = ["ldaps://dc1.example.com"]'))
        for url in config.urls:
            if urlsplit(url).scheme.lower() not in ("ldap", "ldaps"):
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
                parse_filter(config.user_filter.replace("{username}", "x"), None, False, False,
                             None, False)
            except LDAPException as exc:
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


def bind_failure_reason(code: Any, message: str, dn: str) -> str:
    """invalidCredentials is a wrong password, unless AD's diagnostic (MS-ADTS error
    data) says the account is disabled, expired or locked, or the password has expired."""
    match = _AD_DATA.search(message)
    if match and match.group(1) in _AD_ACCOUNT_CODES:
        return "account_disabled"
    if match and match.group(1) in _AD_EXPIRED_CODES:
        return "password_expired"
    if code != 49:
        log.warning("ldap_user_bind_refused", dn=dn, result=code, message=message)
    return "bad_password"


def _records(response: Any) -> list[_UserRecord]:
    """The search result entries (references to other servers are ignored)."""
    records: list[_UserRecord] = []
    for item in response or ():
        if item.get("type") != "searchResEntry":
            continue
        raw = item.get("raw_attributes") or {}
        attributes = {str(k).lower(): [v if isinstance(v, bytes) else str(v).encode()
                                       for v in values] for k, values in raw.items()}
        records.append(_UserRecord(str(item.get("dn", "")), attributes))
    return records


def _first_record(response: Any) -> _UserRecord | None:
    records = _records(response)
    return records[0] if records else None


def _paged_cookie(result: dict[str, Any]) -> bytes | None:
    control = (result.get("controls") or {}).get("1.2.840.113556.1.4.319") or {}
    cookie = (control.get("value") or {}).get("cookie")
    return cookie if isinstance(cookie, bytes) and cookie else None


def _merge(first: list[str], second: list[str]) -> list[str]:
    seen: set[str] = set()
    merged: list[str] = []
    for dn in [*first, *second]:
        if dn.lower() not in seen:
            seen.add(dn.lower())
            merged.append(dn)
    return merged


def _unbind_quietly(conn: Any) -> None:
    """Unbind, and close the socket too: ldap3 leaves it open when connect() failed."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
