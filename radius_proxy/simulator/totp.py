"""Time-based one-time passwords as the SecSign ID app shows them (RFC 6238 over RFC 4226).

The simulator answers ``GET /rest/v2/TOTP/Verify/{code}`` and shows the current code on its
control API, so the proxy's passcode path can be tested without a phone. Parameters are the
common authenticator defaults: 6 digits, 30 s steps, HMAC-SHA-1.

Rules of this module: no I/O, no clock; the time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

DIGITS = 6
STEP_SECONDS = 30
#: Codes from this many steps before or after the current one are accepted (clock skew).
ALLOWED_DRIFT_STEPS = 1


def hotp(secret: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 section 5.3: HMAC the 8-byte big-endian counter, dynamically truncate."""
    mac = hmac.new(secret, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp(
    secret: bytes,
    unix_time: float,
    digits: int = DIGITS,
    step: int = STEP_SECONDS,
    digest: str = "sha1",
) -> str:
    """RFC 6238 section 4.2: HOTP with T = floor(unix_time / step), T0 = 0."""
    return hotp(secret, int(unix_time // step), digits, digest)


def verify(secret: bytes, code: str, unix_time: float) -> bool:
    """True when ``code`` is the code of the current step or a neighbouring one.

    Anything that is not exactly DIGITS ASCII digits is simply invalid, never an error,
    because the code is whatever a user typed at a RADIUS prompt.
    """
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return False
    counter = int(unix_time // STEP_SECONDS)
    candidates = range(counter - ALLOWED_DRIFT_STEPS, counter + ALLOWED_DRIFT_STEPS + 1)
    return any(hmac.compare_digest(hotp(secret, c), code) for c in candidates if c >= 0)


def derive_secret(master_key: bytes, secsignid: str) -> bytes:
    """A per-ID 20-byte secret, stable for the simulator's lifetime without storing anything."""
    return hmac.new(master_key, secsignid.lower().encode("utf-8"), hashlib.sha256).digest()[:20]
