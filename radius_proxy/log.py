"""Logging: structlog to stdout, JSON or console, with rate limiting for floods.

Request context (`request_id`, `client`, `username`) is bound once per request through
contextvars. Secrets never reach a log line: the pipeline holds them as bytes or `Secret`
values, and the `_scrub` processor drops any key that names a password or secret.
`info_event` writes the once-per-request audit line without the processor chain, byte for
byte as the chain would.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import syslog
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
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

    Loggers are cached on first use: otherwise every call, even one the level filters
    out, assembles a new logger (about 3.4 us against 0.3 us), and the backends make
    several debug calls per login. So this must run before anything logs, and a test
    that calls it must not expect a later `structlog.configure` to reach loggers it used.
    """
    global _DIRECT
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    factory = _factory(destination, stream, file, facility)
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
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    _DIRECT = _Direct(renderer, _LEVELS[level], factory() if fmt == "json" else None)
    # pyrad logs packets as hex at DEBUG, hidden passwords included: keep it quiet.
    logging.getLogger("pyrad").setLevel(logging.WARNING)


def _factory(destination: str, stream: TextIO | None, file: str, facility: str) -> Any:
    if destination == "syslog":
        logger = SyslogLogger(facility)
        return lambda *args: logger
    if destination == "file":
        return structlog.WriteLoggerFactory(open(file, "a", encoding="utf-8"))
    return structlog.PrintLoggerFactory(stream or sys.stdout)


# --- info events on hot paths -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Direct:
    """What `setup_logging` installed, for `info_event`.

    `renderer` tells whether that configuration is still in force (tests reconfigure
    structlog, `capture_logs` for one); `output` is the structlog output logger (print,
    file or syslog, with its lock) that JSON lines go to directly, None for the console
    format, whose lines only structlog renders.
    """

    renderer: Any
    level: int
    output: Any


_DIRECT: _Direct | None = None


def _direct() -> _Direct | None:
    direct = _DIRECT
    if direct is None:
        return None
    processors = structlog.get_config()["processors"]
    if not processors or processors[-1] is not direct.renderer:
        return None
    return direct


def info_enabled() -> bool:
    """False when the configured level hides info events, so a hot path skips building one."""
    direct = _direct()
    return direct is None or direct.level <= logging.INFO


def info_event(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """Log an info event that happens once per request (the audit event), cheaply.

    With the JSON format set up by `setup_logging`, the line is built here exactly as the
    processor chain would build it (fields, `event`, the contextvars, `level`,
    `timestamp`, `_scrub`, json.dumps with repr for other types) and handed to the same
    output, skipping structlog's per-call logger assembly and its chain: about a tenth of
    the CPU. Anything else (the console format, tests' own structlog configuration) goes
    through `logger`. `fields` is consumed.
    """
    direct = _direct()
    if direct is None or direct.output is None:
        logger.info(event, **fields)
        return
    if direct.level > logging.INFO:
        return
    fields["event"] = event
    for key, value in structlog.contextvars.get_contextvars().items():
        fields.setdefault(key, value)
    fields["level"] = "info"
    fields["timestamp"] = _utc_now().isoformat().replace("+00:00", "Z")
    _scrub(None, "info", fields)
    direct.output.info(json.dumps(fields, default=repr))


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


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
