"""The deployment files under deploy/: checked by the tools that read them, where they exist
here (systemd-analyze, pam_radius_auth via pamtester), and by reading where not (Docker)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from radius_proxy.app import DEFAULT_GRACE_SECONDS
from radius_proxy.config import SecSignConfig
from radius_proxy.metrics import Metrics
from radius_proxy.simulator import BackgroundSimulator
from tests.clients import PAM_MODULE
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts
from tests.support import REPO, require_binary, require_file, unavailable

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "radius-proxy.service"


def _unit_settings(text: str) -> dict[str, list[str]]:
    """[Service] Key=Value lines (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _fake_root(tmp_path: Path) -> Path:
    """A root with the unit, the system's units, and stand-ins for the programs it runs, so
    systemd-analyze checks this file as if radius-proxy were installed."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    program = root / "opt/radius-proxy/bin/radius-proxy"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    return root


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    root = _fake_root(tmp_path)
    proc = subprocess.run([analyze, "verify", f"--root={root}", UNIT.name],
                          capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not ours, "\n".join(ours)
    security = subprocess.run([analyze, "security", "--offline=yes", f"--root={root}",
                               "--no-pager", UNIT.name],
                              capture_output=True, text=True, timeout=60, check=False)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0, security.stdout


def test_systemd_unit_hardening_and_timeouts() -> None:
    settings = _unit_settings(UNIT.read_text())
    for key, value in {
        "User": "radius-proxy", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ReadOnlyPaths": "/etc/radius-proxy", "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure", "KillSignal": "SIGTERM",
    }.items():
        assert settings.get(key) == [value], key
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["ExecStart"] == [
        "/opt/radius-proxy/bin/radius-proxy serve -c /etc/radius-proxy/radius-proxy.toml"]
    stop = float(settings["TimeoutStopSec"][0])
    # SIGTERM waits up to the longest NAS timeout, then cancels pushes at the ID server.
    assert stop > DEFAULT_GRACE_SECONDS + SecSignConfig().request_timeout_seconds
    assert stop > SecSignConfig().push_timeout_seconds


def _stages(text: str) -> list[list[str]]:
    """Dockerfile instructions (continuations joined), split into build stages."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_by_reading() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert all(s[0].split()[1] == "python:3.11-slim" for s in stages)
    final = stages[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 1812/udp 9812" in final
    assert 'ENTRYPOINT ["radius-proxy"]' in final
    assert 'CMD ["serve", "-c", "/etc/radius-proxy/radius-proxy.toml"]' in final
    for line in final:  # nothing compiled or installed from apt in the image that runs
        assert not re.search(r"apt-get|gcc|build-essential|pip install", line), line
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for stage in stages:
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), source
                    assert f"!{source.rstrip('/')}" in {i.rstrip("/") for i in ignore}, source


def _metric_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "gauge": ("",)}[family.type]
        names |= {family.name + s for s in suffixes}
    return names


def test_grafana_dashboard_uses_real_metrics_and_labels() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "radius-proxy.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(exprs) > 10
    known = _metric_names()
    labels = {"client", "outcome", "reason", "backend", "server", "le", "job", "instance"}
    for expr in exprs:
        for name in re.findall(r"radius_proxy_[a-z_]+", expr):
            assert name in known, f"{name} in {expr}"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels, expr
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_pam_radius_auth_conf_example() -> None:
    lines = [line.split() for line in (DEPLOY / "pam" / "pam_radius_auth.conf").read_text()
             .splitlines() if line.strip() and not line.startswith("#")]
    assert lines
    for fields in lines:
        assert len(fields) == 3
        assert int(fields[2]) == 60  # pam_radius_auth's maximum, above the push timeout
        assert int(fields[2]) > SecSignConfig().push_timeout_seconds


@contextlib.contextmanager
def _installed_stack(stack: Path, conf: Path) -> Iterator[str]:
    """A deploy/pam stack as a PAM service of its own, pointed at a test pam_radius_auth.conf."""
    if os.geteuid() != 0:
        unavailable("pamtester needs root to write /etc/pam.d")
    name = f"radius-proxy-deploy-{uuid.uuid4().hex[:8]}"
    text = stack.read_text().replace("conf=/etc/pam_radius_auth.conf", f"conf={conf}")
    assert f"conf={conf}" in text
    service = Path("/etc/pam.d") / name
    service.write_text(text)
    try:
        yield name
    finally:
        service.unlink(missing_ok=True)


@pytest.mark.parametrize("stack", ["sudo", "apache/radius-proxy-web"])
def test_pam_stacks_log_in_through_the_proxy(stack: str, start_proxy: Callable[..., RunningProxy],
                                             simulator: BackgroundSimulator,
                                             tmp_path: Path) -> None:
    """The shipped sudo and Apache stacks, run by pamtester against the real proxy."""
    require_file(PAM_MODULE)
    pamtester = require_binary("pamtester")
    proxy = start_proxy(legacy=True)
    conf = tmp_path / "pam_radius_auth.conf"
    conf.write_text(f"{proxy.address}\t{PROXY_SECRET}\t10\n")
    conf.chmod(0o600)
    with _installed_stack(DEPLOY / "pam" / stack, conf) as service:
        ok = subprocess.run([pamtester, "-v", service, "alice", "authenticate"],
                            input="alicepass\n", capture_output=True, text=True, timeout=60,
                            check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        bad = subprocess.run([pamtester, "-v", service, "alice", "authenticate"],
                             input="wrong\n", capture_output=True, text=True, timeout=60,
                             check=False)
        assert bad.returncode != 0
    events = proxy.wait_event("auth", count=2)
    client_id = "sudo" if stack == "sudo" else "apache"
    assert [(e["nas_identifier"], e["outcome"]) for e in events] == [
        (client_id, "accept"), (client_id, "reject")]
    assert session_starts(simulator) == 1


DOCS = [REPO / "docs" / n for n in ("install.md", "operations.md", "troubleshooting.md")] + \
    [DEPLOY / "vpn.md", DEPLOY / "pam" / "README.md"]
#: Written by the SSH work; linked from here, checked there.
ELSEWHERE = {"etc/pam/sshd", "docs/ssh.md"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target:
            continue
        path = (doc.parent / target).resolve()
        if str(path.relative_to(REPO)) in ELSEWHERE:
            continue
        assert path.exists(), f"{doc.name} links to a missing {target}"
