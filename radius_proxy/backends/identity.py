"""Identity sources "file" and "username": a user's SecSign ID without a directory attribute.

"file" reads a mapping file of `user = secsignid` lines; it also counts the SecSign ID the
users file (primary backend "file") already put on the primary's entry, so a site with a
users file needs no second list. "username" derives the ID from the login name plus a
fixed suffix, for sites whose SecSign IDs follow their user names.

Both carry over the groups of the primary's entry, so a policy on groups keeps working when
the ID comes from somewhere other than the directory that knows the groups.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import structlog

from radius_proxy.errors import ConfigError, Problem
from radius_proxy.pipeline.ports import DirectoryEntry, PrimaryResult

log = structlog.get_logger(__name__)


def parse_mapping(text: str, path: str = "<mapping>") -> dict[str, str]:
    """`user = secsignid` lines into a dict keyed by the lowercased user name.

    Blank lines and `#` comments (whole lines, or after whitespace at a line's end) are
    skipped; a malformed line is logged with its number and skipped, so one typo does not
    lock everyone out. User names compare case-insensitively, as directories do; a name
    given twice keeps its last line, with a warning.
    """
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        content = _strip_comment(line).strip()
        if not content:
            continue
        user, sep, secsign_id = content.partition("=")
        user, secsign_id = user.strip(), secsign_id.strip()
        if not sep or not user or not secsign_id:
            log.warning("mapping_line_invalid", path=path, line=number,
                        detail='expected "user = secsignid"')
            continue
        key = user.lower()
        if key in mapping:
            log.warning("mapping_user_repeated", path=path, line=number, user=user)
        mapping[key] = secsign_id
    return mapping


def _strip_comment(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith("#"):
        return ""
    for marker in (" #", "\t#"):
        cut = line.find(marker)
        if cut >= 0:
            line = line[:cut]
    return line


def _without_netbios_domain(username: str) -> str:
    r"""`EXAMPLE\alice` -> `alice`: a NetBIOS domain is never part of a SecSign ID."""
    return username.rpartition("\\")[2]


def _candidates(username: str) -> list[str]:
    r"""Keys to try in order: the name as typed, then without `DOMAIN\`, then without `@domain`."""
    plain = _without_netbios_domain(username)
    names = [username, plain, plain.rpartition("@")[0] if "@" in plain else plain]
    return list(dict.fromkeys(n.lower() for n in names if n))


def _carry(primary: PrimaryResult, source: str, secsign_id: str) -> DirectoryEntry:
    """An entry with this ID, keeping the groups and DN the primary already found."""
    entry = primary.entry
    if entry is None:
        return DirectoryEntry(source=source, secsign_id=secsign_id)
    return DirectoryEntry(source=source, secsign_id=secsign_id, groups=entry.groups,
                          dn=entry.dn)


@dataclass(frozen=True, slots=True)
class _Loaded:
    mtime_ns: int
    size: int
    mapping: dict[str, str]


class MappingFileSource:
    """Identity source "file": the mapping file, re-read when it changes on disk."""

    name = "file"
    runs_without_task = True  # its only wait is asyncio.to_thread (pipeline/ports.py)

    def __init__(self, path: str) -> None:
        self._path = path
        self._loaded: _Loaded | None = None
        if path:
            try:
                self._loaded = self._load()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError([Problem("identity", "identity.mapping_file",
                                           f"cannot read {path}: {exc}",
                                           "create the file or fix its permissions")]) from exc

    async def lookup(self, username: str, primary: PrimaryResult) -> DirectoryEntry | None:
        """The users file's ID on the primary's entry first, then the mapping file."""
        entry = primary.entry
        if entry is not None and entry.source == self.name and entry.secsign_id:
            return entry
        if not self._path:
            return None
        mapping = await asyncio.to_thread(self._current)
        for key in _candidates(username):
            if key in mapping:
                return _carry(primary, self.name, mapping[key])
        return None

    def _current(self) -> dict[str, str]:
        """The mapping, re-read if the file changed; the last good one if it cannot be read."""
        try:
            stat = os.stat(self._path)
            loaded = self._loaded
            if loaded is None or (stat.st_mtime_ns, stat.st_size) != (loaded.mtime_ns,
                                                                      loaded.size):
                self._loaded = self._load()
                log.info("mapping_file_loaded", path=self._path,
                         users=len(self._loaded.mapping))
        except (OSError, UnicodeDecodeError) as exc:
            log.error("mapping_file_unreadable", path=self._path, error=str(exc))
        return self._loaded.mapping if self._loaded else {}

    def _load(self) -> _Loaded:
        with open(self._path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            text = handle.read().decode("utf-8")
        return _Loaded(stat.st_mtime_ns, stat.st_size, parse_mapping(text, self._path))


class UsernameSource:
    r"""Identity source "username": the SecSign ID is the user name plus a suffix.

    A `DOMAIN\` prefix is dropped first (it is never part of an ID); `user@domain` is kept
    as typed, because it may be the ID itself.
    """

    name = "username"
    runs_without_task = True  # never waits (pipeline/ports.py)

    def __init__(self, suffix: str) -> None:
        self._suffix = suffix

    async def lookup(self, username: str, primary: PrimaryResult) -> DirectoryEntry | None:
        name = _without_netbios_domain(username).strip()
        if not name:
            return None
        return _carry(primary, self.name, name + self._suffix)
