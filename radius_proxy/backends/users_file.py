"""Primary backend "file": users, scrypt hashes, SecSign IDs and groups in a TOML file.

For small sites and for the demo. The file is read once at start (and on reload); every
problem is reported with the file, the user and the fix, like the main configuration.
"""

from __future__ import annotations

import asyncio
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from radius_proxy.errors import ConfigError, Problem
from radius_proxy.passwords import DUMMY_HASH, is_hash, verify_password
from radius_proxy.pipeline.ports import (
    AuthRequest,
    DirectoryEntry,
    PrimaryOutcome,
    PrimaryResult,
)

log = structlog.get_logger(__name__)
_KEYS = frozenset({"password", "secsign_id", "groups"})


@dataclass(frozen=True, slots=True)
class UserRecord:
    password_hash: str
    secsign_id: str | None
    groups: frozenset[str]


def load_users(path: str) -> dict[str, UserRecord]:
    """Parse and validate the users file; raise ConfigError listing every problem."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([Problem(path, "-", f"cannot read the users file: {exc}",
                                   "check the path, permissions and TOML syntax")]) from None
    problems: list[Problem] = []
    users: dict[str, UserRecord] = {}
    extra = set(data) - {"users"}
    for key in sorted(extra):
        problems.append(Problem(path, key, "unknown key", "put users under [users.NAME]"))
    table = data.get("users", {})
    if not isinstance(table, dict):
        table = {}
        problems.append(Problem(path, "users", "must be a table", "write [users.alice]"))
    for name, entry in table.items():
        record = _user(path, name, entry, problems)
        if record is not None:
            users[name] = record
    if problems:
        raise ConfigError(problems)
    return users


def _user(path: str, name: str, entry: Any, problems: list[Problem]) -> UserRecord | None:
    key = f"users.{name}"
    if not isinstance(entry, dict):
        problems.append(Problem(path, key, "must be a table", f"write [{key}]"))
        return None
    before = len(problems)
    for k in sorted(set(entry) - _KEYS):
        problems.append(Problem(path, f"{key}.{k}", "unknown key",
                                "use password, secsign_id and groups"))
    pw = entry.get("password")
    if not isinstance(pw, str) or not is_hash(pw):
        problems.append(Problem(path, f"{key}.password", "is missing or not a password hash "
                                "(plain text is refused)", "run: radius-proxy hash-password"))
    sid = entry.get("secsign_id")
    if sid is not None and (not isinstance(sid, str) or not sid):
        problems.append(Problem(path, f"{key}.secsign_id", "must be a non-empty string",
                                'write secsign_id = "alice.example"'))
    groups = entry.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        problems.append(Problem(path, f"{key}.groups", "must be a list of strings",
                                'write groups = ["vpn-users"]'))
    if len(problems) > before:
        return None
    return UserRecord(str(pw), sid, frozenset(groups))


class UsersFile:
    """The `file` primary backend; password checks run off the event loop (scrypt is slow)."""

    name = "file"
    runs_without_task = True  # its only wait is the thread pool's future (pipeline/ports.py)

    def __init__(self, path: str, workers: int = 2) -> None:
        self._users = load_users(path)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="users-file")

    def entry(self, username: str) -> DirectoryEntry | None:
        record = self._users.get(username)
        if record is None:
            return None
        return DirectoryEntry("file", record.secsign_id, record.groups)

    async def authenticate(self, request: AuthRequest) -> PrimaryResult:
        record = self._users.get(request.username)
        stored = record.password_hash if record else DUMMY_HASH
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, verify_password, request.password, stored)
        if record is None:
            return PrimaryResult(PrimaryOutcome.REJECT, "unknown_user")
        if not ok:
            return PrimaryResult(PrimaryOutcome.REJECT, "bad_password")
        return PrimaryResult(PrimaryOutcome.ACCEPT, entry=self.entry(request.username))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class NoPassword:
    """Primary backend "none": the second factor alone decides (2SA, as SecSign calls it)."""

    name = "none"
    runs_without_task = True  # never waits (pipeline/ports.py)

    _ACCEPT = PrimaryResult(PrimaryOutcome.ACCEPT)  # a frozen value: one for every request

    async def authenticate(self, request: AuthRequest) -> PrimaryResult:
        return self._ACCEPT

    async def close(self) -> None:
        return None
