"""Password hashes for the users file: salted scrypt from the standard library.

The format is `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>` (Base64 without padding), the
same shape passlib uses, so a hash says how to check itself and the cost can grow later
without breaking old entries. Plain-text passwords are refused when the file is loaded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

LOG2_N = 14  # 16 MiB of memory and a few tens of milliseconds per check on a small core
BLOCK_SIZE = 8
PARALLELISM = 1
_PATTERN = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


MAX_MEM = 256 * 1024 * 1024


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=1 << ln, r=r, p=p, dklen=32,
                          maxmem=MAX_MEM + 1024 * 1024)


def hash_password(password: str | bytes, *, ln: int = LOG2_N) -> str:
    """A new salted hash of the password, for `radius-proxy hash-password`."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    salt = os.urandom(16)
    digest = _scrypt(raw, salt, ln, BLOCK_SIZE, PARALLELISM)
    return f"$scrypt$ln={ln},r={BLOCK_SIZE},p={PARALLELISM}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The parameters of a stored hash, or None when it is not one this module can check."""
    m = _PATTERN.match(stored)
    if not m:
        return None
    ln, r, p = (int(m.group(i)) for i in (1, 2, 3))
    if not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16) or 128 * r * (1 << ln) > MAX_MEM:
        return None
    try:
        salt, digest = _unb64(m.group(4)), _unb64(m.group(5))
    except ValueError:  # binascii.Error is a ValueError
        return None
    return ln, r, p, salt, digest


def is_hash(text: str) -> bool:
    """Whether text is a hash this module can check (anything else is refused as plain text)."""
    return _parse(text) is not None


def verify_password(password: bytes, stored: str) -> bool:
    """Check a password against a stored hash in constant time; False for a bad hash."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    ln, r, p, salt, digest = parsed
    try:
        computed = _scrypt(password, salt, ln, r, p)
    except ValueError:
        return False
    return hmac.compare_digest(computed, digest)


#: A hash of a random password, checked when a user is unknown so timing does not tell.
DUMMY_HASH = hash_password(os.urandom(16).hex(), ln=LOG2_N)
