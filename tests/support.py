"""Helpers for tests that run real servers: free ports, binaries, managed child processes.

Integration tests never skip in CI: with CI=true a missing server binary fails the test,
because a skipped integration test in CI proves nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Skip a test whose requirement is missing locally; in CI that is a failure."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str, *extra_dirs: str) -> str:
    """The path of a server binary; skip locally, fail in CI, when it is not installed."""
    found = shutil.which(name, path=os.pathsep.join([*extra_dirs, os.environ.get("PATH", ""),
                                                     "/usr/sbin", "/sbin"]))
    if found:
        return found
    unavailable(f"{name} is not installed (see .ci/run for the Debian packages)")


def require_file(path: str) -> str:
    """Like require_binary, for a file such as a PAM module."""
    if os.path.exists(path):
        return path
    unavailable(f"{path} is missing (see .ci/run for the Debian packages)")


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP on host right now."""
    for _ in range(50):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(family, other) as s2:
                s2.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> None:
    """Poll predicate until it is true; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child process with its output in a file, always stopped by the fixture that made it."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after grace seconds; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def python_module_cmd(*args: str) -> list[str]:
    """The command line that runs radius-proxy with this interpreter."""
    return [sys.executable, "-m", "radius_proxy", *args]
