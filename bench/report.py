"""docs/performance.md: one section per benchmark, each script replacing only its own."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HEADER = ("# Performance\n\nMeasured figures; each section is written by one script under "
          "`bench/`.\n\n")


def write_section(path: Path, heading: str, section: str, *, first: bool = False) -> None:
    """Replace only the section under `heading` (up to the next `## `); if absent, append
    it, or with `first` put it before the first section."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + section)
        return
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        top = next((i for i, ln in enumerate(lines) if ln.startswith("## ")), None)
        if first and top is not None:
            path.write_text("".join(lines[:top]) + section + "\n" + "".join(lines[top:]))
        else:
            path.write_text("".join(lines).rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    after = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + after if after else ""))


def target_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """The Markdown lines of a section's figures against their targets: (what, measured,
    target, verdict) per row; run_all.py collects the rows that carry a verdict."""
    return ["| | measured | target | |", "|---|---|---|---|",
            *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]]


@contextlib.contextmanager
def run_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for one run's configs and logs: removed after a run that
    finished, kept (and named on stderr) when `keep` is set or the run failed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    finished = False
    try:
        yield work
        finished = True
    finally:
        if finished and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and configs kept in {work}", file=sys.stderr)
