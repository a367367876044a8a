"""The pure parts of `server.workers`: the restart back-off and the worker status file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from radius_proxy.workers.status import STALE_SECONDS, WorkerStatus, read_status, write_status
from radius_proxy.workers.supervisor import restart_delay


@pytest.mark.parametrize(("lived", "quick_deaths", "delay", "after"), [
    (0.5, 0, 1.0, 1),     # first quick death: 1 s
    (0.5, 1, 2.0, 2),     # it keeps dying: doubling
    (0.5, 4, 16.0, 5),
    (0.5, 5, 30.0, 6),    # capped
    (0.5, 500, 30.0, 501),
    (59.9, 3, 8.0, 4),
    (60.0, 3, 1.0, 1),    # it ran for a minute: healthy again, 1 s
])
def test_restart_delay(lived: float, quick_deaths: int, delay: float, after: int) -> None:
    assert restart_delay(lived, quick_deaths) == (delay, after)


@pytest.mark.parametrize(("checked", "backends", "age", "state"), [
    (False, {"secsign": False}, 0.0, "starting"),
    (True, {"secsign": True, "state": True}, 0.0, "ready"),
    (True, {"secsign": True, "state": False}, 0.0, "unready"),
    (True, {"secsign": True}, STALE_SECONDS + 1, "stale"),
])
def test_status_describe(checked: bool, backends: dict[str, bool], age: float,
                         state: str) -> None:
    assert WorkerStatus(1, checked, backends, at=100.0).describe(100.0 + age) == state


def test_status_file_round_trip_belongs_to_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "worker-0.json"
    assert read_status(path, os.getpid()) is None  # not written yet: still starting
    write_status(path, True, {"secsign": True})
    status = read_status(path, os.getpid())
    assert status is not None
    assert (status.checked, status.backends) == (True, {"secsign": True})
    assert status.describe(time.monotonic()) == "ready"
    assert read_status(path, os.getpid() + 1) is None  # a predecessor's file never counts
    assert [p.name for p in tmp_path.iterdir()] == ["worker-0.json"]  # no temporary left
    path.write_text("{not json")
    assert read_status(path, os.getpid()) is None
