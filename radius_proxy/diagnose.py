"""`radius-proxy test-user USER`: what the proxy would do with a login, without a NAS.

It runs the configured backends, the same objects `serve` builds, step by step and says
what each found: the directory entry (LDAP DN or users-file entry), the SecSign ID and the
source it came from, the groups, the policy decision (`pipeline.policy.decide`), and with
`--push` a real push through the configured ID server. An administrator answers "why can't
alice log in?" with it before touching a NAS.

No password is checked unless one is given (`--password`): the tool is for the
administrator, who does not know the user's password. Runtime state is not consulted
(remembered logins, the push limit per user), and neither is the NAS's side (timeouts,
Message-Authenticator): `radius-proxy radtest` covers that.

Exit codes: 0 the user could log in (given the password, and the push approved where one is
needed); 1 the user could not; 2 the answer depends on a backend that failed, or the
configuration is broken.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TextIO

from radius_proxy.app import Backends, build_backends
from radius_proxy.config import Config
from radius_proxy.errors import BackendError, ConfigError
from radius_proxy.pipeline import policy as pol
from radius_proxy.pipeline.ports import (
    AuthRequest,
    DirectoryEntry,
    PrimaryOutcome,
    PrimaryResult,
    PushOutcome,
)
from radius_proxy.protocol.dictionary import load_dictionary

OK, NO, ERROR = 0, 1, 2


@dataclass
class _Report:
    """Aligned "label  text" lines, and the verdict so far."""

    out: TextIO
    code: int = OK
    why: list[str] = field(default_factory=list)

    def line(self, label: str, text: str) -> None:
        print(f"{label:<12} {text}", file=self.out, flush=True)

    def fail(self, code: int, why: str) -> None:
        self.code = max(self.code, code)
        self.why.append(why)


async def test_user(config: Config, username: str, push: bool, password: str | None,
                    out: TextIO) -> int:
    """Diagnose one user's login; print the findings to out; return the exit code."""
    report = _Report(out)
    report.line("user", username)
    report.line("config", config.source)
    try:
        backends = await build_backends(config, load_dictionary(config.server.dictionaries),
                                        start_upstream=password is not None)
    except ConfigError as exc:
        for problem in exc.problems:
            report.line("error", str(problem))
        return ERROR
    try:
        await _diagnose(config, backends, username, push, password, report)
    except BackendError as exc:
        report.line("error", str(exc))
        report.fail(ERROR, "a backend failed")
    finally:
        await backends.close()
    _conclude(username, password, report)
    return report.code


async def _diagnose(config: Config, backends: Backends, username: str, push: bool,
                    password: str | None, report: _Report) -> None:
    entry = await _directory(config, backends, username, report)
    primary = await _password(config, backends, username, password, entry, report)
    secsign_id, groups = await _identity(config, backends, username, primary, report)
    verdict = pol.decide(config.policy, groups=groups, secsign_id=secsign_id)
    _policy(config, verdict, secsign_id, report)
    if verdict.action is pol.Action.SECOND_FACTOR and secsign_id is not None:
        await _second_factor(config, backends, secsign_id, push, report)


async def _directory(config: Config, backends: Backends, username: str,
                     report: _Report) -> DirectoryEntry | None:
    """The user's entry where the configuration has a directory: users file or LDAP."""
    backend = config.primary.backend
    entry: DirectoryEntry | None = None
    if backends.users is not None:
        entry = backends.users.entry(username)
        where = f"users file {config.users_file.path}"
        report.line("directory", f"{where}: entry [users.{username}]" if entry else
                    f"{where}: no entry [users.{username}]")
    if backends.ldap is not None:
        found = await backends.ldap.lookup(username, PrimaryResult(PrimaryOutcome.REJECT))
        report.line("directory", f"ldap: {found.dn}" if found else
                    f"ldap: no single entry matches {config.ldap.user_filter} under "
                    f"{config.ldap.base_dn}")
        entry = found if backend == "ldap" else entry or found
    if backend == "radius":
        report.line("directory", "the upstream RADIUS server checks the password; "
                    "it has no entry to show")
    elif backend == "none":
        report.line("directory", 'primary backend "none": no password check, no directory')
    elif entry is None and backend in ("file", "ldap"):
        report.fail(NO, f"the {backend} backend does not know the user")
    return entry


async def _password(config: Config, backends: Backends, username: str, password: str | None,
                    entry: DirectoryEntry | None, report: _Report) -> PrimaryResult:
    """The primary check when a password was given; else the entry found, unchecked."""
    backend = config.primary.backend
    unchecked = PrimaryResult(PrimaryOutcome.ACCEPT, "not_checked", entry=entry)
    if password is None:
        if backend != "none":
            report.line("password", "not checked (give --password to check it with the "
                        f'primary backend "{backend}")')
        return unchecked
    request = AuthRequest(request_id="test-user", client="test-user", client_ip="127.0.0.1",
                          username=username, password=password.encode("utf-8"))
    result = await backends.primary.authenticate(request)
    if result.outcome is PrimaryOutcome.ACCEPT:
        report.line("password", f'accepted by the primary backend "{backend}"')
        return result if result.entry is not None else unchecked
    if result.outcome is PrimaryOutcome.CHALLENGE:
        report.line("password", "the upstream answers with a challenge of its own; the proxy "
                    "relays it to the NAS (try radius-proxy radtest)")
        return unchecked
    if result.outcome is PrimaryOutcome.UNAVAILABLE:
        report.line("password", f"cannot be checked: {result.reason}")
        report.fail(ERROR, f'the primary backend "{backend}" is unavailable')
        return unchecked
    report.line("password", f"rejected ({result.reason})")
    report.fail(NO, f"the password was rejected ({result.reason})")
    return unchecked  # go on with what the directory knows


async def _identity(config: Config, backends: Backends, username: str, primary: PrimaryResult,
                    report: _Report) -> tuple[str | None, frozenset[str]]:
    """Each identity source in order, as the pipeline asks them: the first ID wins."""
    groups = set(primary.entry.groups) if primary.entry else set()
    secsign_id: str | None = None
    origin = ""
    for source in backends.identity:
        entry = await source.lookup(username, primary)
        if entry is not None:
            groups |= entry.groups
        text = _source_text(config, source.name, entry, primary.entry)
        report.line("identity", f"{source.name}: {text}")
        if secsign_id is None and entry is not None and entry.secsign_id:
            secsign_id, origin = entry.secsign_id, f"{source.name}: {text}"
    report.line("secsign id", f"{secsign_id} (from {origin.partition(': ')[0]})"
                if secsign_id else "none found")
    report.line("groups", _groups_text(frozenset(groups)))
    return secsign_id, frozenset(groups)


def _source_text(config: Config, source: str, entry: DirectoryEntry | None,
                 primary_entry: DirectoryEntry | None) -> str:
    if entry is None or not entry.secsign_id:
        return {"ldap": f"no {config.ldap.secsign_id_attribute} attribute",
                "file": "no SecSign ID in the users file or the mapping file",
                }.get(source, "no SecSign ID")
    if source == "ldap":
        return f"{entry.secsign_id} (attribute {config.ldap.secsign_id_attribute})"
    if source == "file":
        where = "users file" if entry is primary_entry else \
            f"mapping file {config.identity.mapping_file}"
        return f"{entry.secsign_id} ({where})"
    return f'{entry.secsign_id} (user name + suffix "{config.identity.username_suffix}")'


def _groups_text(groups: frozenset[str]) -> str:
    """Group names; a directory reports each group as a DN and as a name, show the names."""
    names = sorted((g for g in groups if "=" not in g), key=str.casefold) or sorted(groups)
    return ", ".join(names) if names else "none"


def _policy(config: Config, verdict: pol.Verdict, secsign_id: str | None,
            report: _Report) -> None:
    if verdict.action is pol.Action.ACCEPT:
        report.line("policy", f"accept without a second factor ({verdict.reason})")
    elif verdict.action is pol.Action.REJECT:
        report.line("policy", f"reject ({verdict.reason})")
        report.fail(NO, f"the policy rejects the user ({verdict.reason})")
    else:
        report.line("policy", f"second factor for {secsign_id} (mode {config.policy.mode}, "
                    f"failmode {config.policy.failmode})")
    report.line("", "not evaluated here: remembered logins, the push limit per user")


async def _second_factor(config: Config, backends: Backends, secsign_id: str, push: bool,
                         report: _Report) -> None:
    client = backends.second_factor
    if report.code != OK:
        report.line("push", "not sent: the login fails before the second factor")
        return
    if not push:
        if await client.probe():
            report.line("id server", "reachable (give --push to send a real push)")
        else:
            _unreachable(config, report)
        return
    host = socket.gethostname()
    report.line("push", f"sent to {secsign_id}; waiting up to "
                f"{config.secsign.push_timeout_seconds:g} s for the phone")
    result = await client.push(secsign_id, f"radius-proxy test-user on {host}", host)
    if result.outcome is PushOutcome.UNREACHABLE:
        report.line("push", f"not sent: {result.detail}")
        _unreachable(config, report)
        return
    verdict = pol.push_verdict(result.outcome, config.policy.failmode)
    report.line("push", f"{result.outcome.value} ({result.detail}) -> {verdict.action.value}")
    if verdict.action is not pol.Action.ACCEPT:
        report.fail(NO, f"the push ended {result.outcome.value} ({verdict.reason})")


def _unreachable(config: Config, report: _Report) -> None:
    servers = ", ".join(config.secsign.servers)
    if config.policy.failmode == "safe":
        report.line("id server", f"unreachable ({servers}); failmode safe lets the user in "
                    "on the password alone")
        return
    report.line("id server", f"unreachable ({servers}); failmode secure rejects every login "
                "that needs a push")
    report.fail(ERROR, "the SecSign ID server cannot be reached")


def _conclude(username: str, password: str | None, report: _Report) -> None:
    if report.code == OK:
        caveat = "" if password is not None else " (with the right password)"
        report.line("result", f"{username} can log in{caveat}")
    else:
        report.line("result", f"{username} cannot log in: {'; '.join(report.why)}")
