"""Logging: the flood rate limiter (injected clock) and the `_scrub` processor.

RFC 2865 section 1.2 says log silently discarded packets, but an attacker can send unlimited
junk, so drop logs pass through `RateLimiter`. Secrets never reach a log line: `_scrub`
masks any key naming a password, secret or authorization.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from radius_proxy.log import RateLimiter, _scrub, info_enabled, info_event, setup_logging


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- RateLimiter ------------------------------------------------------------------------------
def test_burst_then_suppress() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, period=60, clock=clock)
    got = [limiter.allow("junk:192.0.2.1") for _ in range(6)]
    assert got == [(True, 0)] * 3 + [(False, 0)] * 3


def test_next_period_reports_how_many_were_suppressed() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, period=60, clock=clock)
    for _ in range(10):
        limiter.allow("k")
        clock.now += 1
    clock.now += 50  # 60 s after the first event
    assert limiter.allow("k") == (True, 7)
    assert limiter.allow("k") == (True, 0)
    assert limiter.allow("k") == (True, 0)
    assert limiter.allow("k") == (False, 0)


def test_nothing_suppressed_reports_zero() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=5, period=60, clock=clock)
    limiter.allow("k")
    limiter.allow("k")
    clock.now += 61
    assert limiter.allow("k") == (True, 0)


@pytest.mark.parametrize(("after", "fresh"), [(59.999, False), (60, True), (3600, True)])
def test_window_boundary(after: float, fresh: bool) -> None:
    clock = Clock()
    limiter = RateLimiter(burst=1, period=60, clock=clock)
    assert limiter.allow("k") == (True, 0)
    assert limiter.allow("k") == (False, 0)
    clock.now += after
    assert limiter.allow("k") == ((True, 1) if fresh else (False, 0))


def test_keys_are_limited_separately() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=1, period=60, clock=clock)
    assert limiter.allow("malformed:10.0.0.1") == (True, 0)
    assert limiter.allow("malformed:10.0.0.1") == (False, 0)
    assert limiter.allow("malformed:10.0.0.2") == (True, 0)
    assert limiter.allow("unknown_client:10.0.0.1") == (True, 0)


def test_window_table_stays_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=1, period=10, clock=clock)
    for i in range(10_001):
        limiter.allow(f"old-{i}")
    clock.now += 11
    for i in range(2):
        limiter.allow(f"new-{i}")
    # private, but bounded memory under a flood of distinct sources is the behaviour tested
    assert len(limiter._windows) <= 2
    assert limiter.allow("old-1") == (True, 0)


def test_default_clock_is_monotonic_time() -> None:
    limiter = RateLimiter(burst=2, period=60)
    assert [limiter.allow("k")[0] for _ in range(3)] == [True, True, False]


# -- _scrub -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    ["password", "Password", "User-Password", "bind_password", "pin_password_file", "secret",
     "shared_secret", "client_secret", "SECRET", "authorization", "Authorization",
     "proxy_authorization"],
)
def test_scrub_masks_secret_keys(key: str) -> None:
    event = {"event": "x", key: "hunter2", "username": "alice"}
    out = _scrub(None, "info", event)
    assert out[key] == "***"
    assert out["username"] == "alice"
    assert out["event"] == "x"


def test_scrub_leaves_other_keys_alone_and_returns_the_event() -> None:
    event: dict[str, Any] = {"event": "auth", "username": "alice", "secsign_id": "alice.id",
                             "reason": "push_approved", "total_ms": 12.5, "author": "x"}
    before = dict(event)
    out = _scrub(None, "info", event)
    assert out is event
    assert out == before


def test_scrub_masks_empty_and_non_text_values() -> None:
    out = _scrub(None, "info", {"password": b"\xff", "secret": None, "authorization": 0})
    assert out == {"password": "***", "secret": "***", "authorization": "***"}


# -- setup_logging: the processor chain in place ----------------------------------------------
@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    pyrad_level = logging.getLogger("pyrad").level
    yield
    structlog.configure(**saved)
    logging.getLogger("pyrad").setLevel(pyrad_level)


@pytest.mark.usefixtures("restore_structlog")
def test_json_logging_scrubs_and_filters_levels() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    log = structlog.get_logger("test")
    log.debug("hidden", detail="x")
    log.info("visible", username="alice", password="hunter2", secret_file="/s")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    (line,) = lines
    assert line["event"] == "visible"
    assert line["level"] == "info"
    assert line["username"] == "alice"
    assert line["password"] == "***"
    assert line["secret_file"] == "***"
    assert "timestamp" in line
    assert "hunter2" not in stream.getvalue()
    assert logging.getLogger("pyrad").level == logging.WARNING


@pytest.mark.usefixtures("restore_structlog")
def test_console_logging_scrubs_too() -> None:
    stream = io.StringIO()
    setup_logging("console", "debug", stream=stream)
    structlog.get_logger("test").debug("shown", shared_secret="s3cr3t-value")
    text = stream.getvalue()
    assert "shown" in text
    assert "s3cr3t-value" not in text


@pytest.mark.usefixtures("restore_structlog")
def test_context_variables_are_merged() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    with structlog.contextvars.bound_contextvars(request_id="abc123", client="ssh"):
        structlog.get_logger("test").warning("dropped")
    line = json.loads(stream.getvalue())
    assert (line["request_id"], line["client"], line["level"]) == ("abc123", "ssh", "warning")


# -- info_event: the audit line without structlog's per-call work ----------------------------
@pytest.mark.usefixtures("restore_structlog")
def test_info_event_writes_the_line_structlog_would() -> None:
    fields: dict[str, Any] = {"request_id": "r1", "client": "vpn", "nas_identifier": b"nas-\xff",
                              "primary_ms": 1.5, "none": None, "bind_password": "hunter2"}
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(request_id="r1", extra="ctx"):
        log.info("auth", **fields)
        info_event(log, "auth", dict(fields))
    first, second = stream.getvalue().splitlines()
    assert list(json.loads(first)) == list(json.loads(second))  # same keys, same order
    without_time = [{k: v for k, v in json.loads(line).items() if k != "timestamp"}
                    for line in (first, second)]
    assert without_time[0] == without_time[1]
    assert without_time[1]["bind_password"] == "***"
    assert without_time[1]["extra"] == "ctx"
    assert json.loads(second)["timestamp"].endswith("Z")


@pytest.mark.usefixtures("restore_structlog")
def test_info_event_respects_the_level() -> None:
    stream = io.StringIO()
    setup_logging("json", "warning", stream=stream)
    assert not info_enabled()
    info_event(structlog.get_logger("test"), "auth", {"username": "alice"})
    assert stream.getvalue() == ""


@pytest.mark.usefixtures("restore_structlog")
def test_info_event_goes_through_structlog_when_tests_capture_or_console_renders() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    with structlog.testing.capture_logs() as logs:
        assert info_enabled()
        info_event(structlog.get_logger("test"), "auth", {"username": "alice"})
    assert logs == [{"event": "auth", "username": "alice", "log_level": "info"}]
    assert stream.getvalue() == ""
    setup_logging("console", "info", stream=stream)
    info_event(structlog.get_logger("test"), "auth", {"username": "bob"})
    assert "auth" in stream.getvalue()
    assert "bob" in stream.getvalue()
