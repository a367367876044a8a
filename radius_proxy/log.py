"""Logging: structlog to stdout, JSON or console, with rate limiting for floods.

Request context (`request_id`, `client`, `username`) is bound once per request through
contextvars. Secrets never reach a log line: the pipeline holds them as bytes or `Secret`
values, and the `_scrub` processor drops any key that names a password or secret.
"""

from __future__ import annotations

import logging
import sys
import syslog
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_SECRET_WORDS = ("password", "secret", "authorization")


_KEY_IS_SECRET: dict[str, bool] = {}


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask any value whose key names a password or secret (decided once per key name)."""
    for key in event:
        secret = _KEY_IS_SECRET.get(key)
        if secret is None:
            secret = any(w in key.lower() for w in _SECRET_WORDS)
            if len(_KEY_IS_SECRET) < 10000:
                _KEY_IS_SECRET[key] = secret
        if secret:
            event[key] = "***"
    return event


class SyslogLogger:
    """A structlog logger that hands each rendered line to the local syslog daemon."""

    _PRIORITIES = {"debug": syslog.LOG_DEBUG, "info": syslog.LOG_INFO,
                   "warning": syslog.LOG_WARNING, "error": syslog.LOG_ERR,
                   "critical": syslog.LOG_CRIT, "exception": syslog.LOG_ERR}

    def __init__(self, facility: str) -> None:
        syslog.openlog("radius-proxy", syslog.LOG_PID,
                       getattr(syslog, f"LOG_{facility.upper()}"))

    def _send(self, level: str, message: str) -> None:
        syslog.syslog(self._PRIORITIES.get(level, syslog.LOG_INFO), message)

    def __getattr__(self, level: str) -> Callable[[str], None]:
        return lambda message: self._send(level, message)


def setup_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None,
                  destination: str = "stdout", file: str = "",
                  facility: str = "daemon") -> None:
    """Configure structlog once per process (the CLI calls it before anything logs).

    Destinations are those of the SecSign PAM module: standard output (for systemd's
    journal and containers), a file, or syslog.
    """
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_factory(destination, stream, file, facility),
        cache_logger_on_first_use=False,
    )
    # pyrad logs packets as hex at DEBUG, hidden passwords included: keep it quiet.
    logging.getLogger("pyrad").setLevel(logging.WARNING)


def _factory(destination: str, stream: TextIO | None, file: str, facility: str) -> Any:
    if destination == "syslog":
        logger = SyslogLogger(facility)
        return lambda *args: logger
    if destination == "file":
        return structlog.WriteLoggerFactory(open(file, "a", encoding="utf-8"))
    return structlog.PrintLoggerFactory(stream or sys.stdout)


class RateLimiter:
    """At most `burst` events per `period` seconds per key; counts what it suppressed.

    An attacker can send unlimited junk (RFC 2865 section 1.2 says log it, but not every
    packet), so flood logs pass through this.
    """

    def __init__(self, burst: int = 5, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._period = period
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log now, how many were suppressed since the last logged one)."""
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self._period:
            suppressed = max(0, count - self._burst)
            start, count = now, 0
            self._windows[key] = (start, 1)
            return True, suppressed
        self._windows[key] = (start, count + 1)
        if len(self._windows) > 10000:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self._period}
        return count < self._burst, 0
