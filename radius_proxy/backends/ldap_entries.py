"""What the LDAP backend reads from a directory entry: names, account state, groups, binds.

Rules of this module: no I/O; entries and strings in, values out. These are the directory
semantics of Active Directory and OpenLDAP that decide a login: `DOMAIN\\user` and UPN
reduction, the disabled and locked flags (MS-ADTS 2.2.16, ppolicy), AD's bind diagnostics
(MS-ADTS "data 533" codes), and group DNs reported with their short names (RFC 4514).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from radius_proxy.backends.ldap_ber import SearchResultEntry

log = structlog.get_logger("radius_proxy.backends.ldap_directory")

#: userAccountControl flags (MS-ADTS 2.2.16).
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
#: AD's bind diagnostics ("... data 533, ...") that mean the account, not the password.
_AD_ACCOUNT_CODES = frozenset({"533", "701", "775"})  # disabled, expired, locked out
_AD_EXPIRED_CODES = frozenset({"532", "773"})  # password expired, must be changed
_AD_DATA = re.compile(r"\bdata ([0-9a-fA-F]+)\b")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """An entry a search found: its DN and its attributes, names in lower case."""

    dn: str
    attributes: dict[str, list[bytes]]

    @classmethod
    def of(cls, entry: SearchResultEntry) -> UserRecord:
        attributes: dict[str, list[bytes]] = {}
        for name, values in entry.attributes:
            attributes.setdefault(name.lower(), []).extend(values)
        return cls(entry.dn, attributes)

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


def account_unusable(record: UserRecord) -> bool:
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


def bind_failure_reason(code: int, message: str, dn: str) -> str:
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


def group_names(dns: Sequence[str]) -> frozenset[str]:
    """Each group DN, and its first RDN's value (`vpn-users` of `CN=vpn-users,...`)."""
    names: set[str] = set()
    for dn in dns:
        names.add(dn)
        short = first_rdn_value(dn)
        if short:
            names.add(short)
    return frozenset(names)


def first_rdn_value(dn: str) -> str | None:
    """The value of a DN's first attribute (RFC 4514 section 3), unescaped; None if none."""
    end = 0
    while end < len(dn) and dn[end] not in ",+":
        end += 2 if dn[end] == "\\" else 1
    attribute, equals, value = dn[:end].partition("=")
    if not equals or not attribute.strip():
        return None
    value = value.lstrip(" ")
    if value.endswith(" ") and not value.endswith("\\ "):
        value = value.rstrip(" ")
    return unescape_dn_value(value)


def unescape_dn_value(value: str) -> str:
    r"""Undo RFC 4514 section 2.4 escapes (`\,` and `\2c`) so `vpn\2cusers` reads `vpn,users`."""
    if "\\" not in value:
        return value
    raw = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
                raw.append(int(pair, 16))
                i += 3
                continue
            raw.extend(value[i + 1].encode("utf-8"))
            i += 2
            continue
        raw.extend(char.encode("utf-8"))
        i += 1
    return raw.decode("utf-8", errors="replace")
