"""Fixtures and helpers for the end-to-end journeys: the simulated phone, and a real sshd.

The phone's answers (approve, deny, the current TOTP code) go through the simulator's control
API over HTTP, as the web page does; only its rules, and the choice of a passcode it would
refuse, use the in-process object.

`sshd_login` starts a real OpenSSH server on a free loopback port behind pam_radius_auth.
OpenSSH 9.2 (Debian 12) has no `PAMServiceName`; its PAM service is the program name, so
the fixture runs sshd through a symlink named after a private service file in /etc/pam.d and
never touches /etc/pam.d/sshd. The local account the login needs is created with `useradd`
and removed with `userdel` when the test ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from radius_proxy.simulator import BackgroundSimulator
from tests.clients import PAM_MODULE
from tests.conftest import PROXY_SECRET, RunningProxy, simulator_log
from tests.support import (
    REPO,
    ManagedProcess,
    free_port,
    require_binary,
    require_file,
    tcp_open,
    unavailable,
    wait_for,
)

# --- the simulated phone ----------------------------------------------------------------

#: `authsessionstate` values of a push the phone has not answered: PENDING, FETCHED.
WAITING = (1, 7)


def log_types(sim: BackgroundSimulator) -> list[str]:
    """The kinds of protocol request the ID server received, in order (start, state...)."""
    return [entry["type"] for entry in simulator_log(sim)]


def sessions(sim: BackgroundSimulator) -> list[dict[str, Any]]:
    response = requests.get(f"{sim.url}/simulator/api/sessions", timeout=5)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def wait_pending(sim: BackgroundSimulator, secsign_id: str,
                 timeout: float = 20.0) -> dict[str, Any]:
    """The pending session for this SecSign ID, once the proxy has started it."""
    def pending() -> list[dict[str, Any]]:
        return [s for s in sessions(sim)
                if s["secsignid"] == secsign_id and s["state"] in WAITING]

    wait_for(lambda: bool(pending()), timeout, f"a pending push for {secsign_id}", 0.05)
    return pending()[0]


def decide(sim: BackgroundSimulator, session_id: str, action: str) -> None:
    """Press Approve or Deny on the phone (`action` is "approve" or "deny")."""
    response = requests.post(f"{sim.url}/simulator/api/sessions/{session_id}/{action}",
                             json={}, timeout=5)
    response.raise_for_status()


def totp_code(sim: BackgroundSimulator, secsign_id: str) -> str:
    """The code the SecSign ID app shows right now."""
    response = requests.get(f"{sim.url}/simulator/api/totp/{secsign_id}", timeout=5)
    response.raise_for_status()
    code: str = response.json()["code"]
    return code


def wrong_code(sim: BackgroundSimulator, secsign_id: str) -> str:
    """Six digits the ID server refuses now (it also takes the neighbouring time steps)."""
    base = int(totp_code(sim, secsign_id))
    for step in range(1, 100):
        candidate = f"{(base + step * 7919) % 1_000_000:06d}"
        if sim.simulator.verify_totp(secsign_id, candidate) is False:
            return candidate
    raise AssertionError("no refused code found")  # pragma: no cover


def audits(proxy: RunningProxy, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The first `count` audit events, once that many are logged."""
    return proxy.wait_event("auth", count=count, timeout=timeout)[:count]


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


# --- a real sshd behind pam_radius_auth --------------------------------------------------


#: What sshpass types at "Password:"; with primary backend "none" the proxy ignores it.
UNCHECKED_PASSWORD = "not-checked-by-the-proxy"

@dataclass
class SshServer:
    """A running sshd whose PAM service asks the proxy; `login` runs a command over ssh."""

    process: ManagedProcess
    port: int
    service: str
    account: str

    @property
    def secsign_id(self) -> str:
        return f"{self.account}.test"

    def start_login(self, command: str = "echo logged-in",
                    password: str = UNCHECKED_PASSWORD) -> subprocess.Popen[str]:
        """Start `ssh account@127.0.0.1 command` with sshpass typing the password."""
        args = [require_binary("sshpass"), "-p", password, require_binary("ssh"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "PreferredAuthentications=keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
                "-F", "/dev/null", "-p", str(self.port), f"{self.account}@127.0.0.1", command]
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


SSHD_CONFIG = """\
# The shipped drop-in comes first (for sshd the first value of an option wins): it sets
# UsePAM, KbdInteractiveAuthentication, PasswordAuthentication, AuthenticationMethods and
# LoginGraceTime, so this test runs what administrators install.
Include {dropin}
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
ChallengeResponseAuthentication yes
PubkeyAuthentication no
HostbasedAuthentication no
AuthorizedKeysFile none
PermitRootLogin no
AllowUsers {account}
MaxAuthTries 2
UseDNS no
PrintMotd no
StrictModes no
LogLevel VERBOSE
"""

MINIMAL_PAM_STACK = """\
auth     required  {module} conf={conf} client_id={client_id}
account  required  pam_permit.so
session  optional  pam_permit.so
"""
SHIPPED_PAM_STACK = REPO / "etc" / "pam" / "sshd"
SHIPPED_DROPIN = REPO / "etc" / "sshd_config.d" / "radius-proxy.conf"


def pam_stack(kind: str, conf: Path, client_id: str) -> str:
    """The PAM file for sshd: "minimal" (pam_radius_auth and pam_permit), or "shipped"
    (etc/pam/sshd as an administrator installs it, pointed at the test's conf file)."""
    if kind == "minimal":
        return MINIMAL_PAM_STACK.format(module=PAM_MODULE, conf=conf, client_id=client_id)
    text = SHIPPED_PAM_STACK.read_text()
    active = [line for line in text.splitlines() if line.startswith("auth ")]
    assert len(active) == 1, "etc/pam/sshd must have exactly one active auth line"
    return (text.replace("conf=/etc/pam_radius_auth.conf", f"conf={conf}")
            .replace("client_id=web1.example.com", f"client_id={client_id}"))


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def local_account() -> Iterator[str]:
    """A throw-away local user without home directory or password, removed afterwards."""
    if os.geteuid() != 0:
        unavailable("creating a local account needs root")
    useradd, userdel = require_binary("useradd"), require_binary("userdel")
    name = f"rpx-ssh-{uuid.uuid4().hex[:8]}"
    _run(useradd, "-M", "-s", "/bin/sh", name)
    try:
        yield name
    finally:
        subprocess.run([userdel, name], capture_output=True, check=False, timeout=30)


@pytest.fixture
def sshd_login(tmp_path: Path, local_account: str) -> Iterator[Any]:
    """`sshd_login(proxy, stack)` starts sshd asking that proxy through pam_radius_auth
    (timeout 60), with the shipped sshd drop-in and the shipped or a minimal PAM stack.

    Everything it creates (the PAM service file, sshd, the privilege-separation directory if
    it was missing) is removed when the test ends.
    """
    sshd = require_binary("sshd", "/usr/sbin")
    keygen = require_binary("ssh-keygen")
    require_binary("ssh")
    require_binary("sshpass")
    require_file(PAM_MODULE)
    servers: list[ManagedProcess] = []
    cleanup: list[Path] = []
    privsep = Path("/run/sshd")
    made_privsep = not privsep.exists()
    if made_privsep:
        privsep.mkdir(mode=0o755)

    def start(proxy: RunningProxy, stack: str = "shipped") -> SshServer:
        service = f"radius-proxy-sshd-{uuid.uuid4().hex[:8]}"
        workdir = tmp_path / service
        workdir.mkdir(mode=0o700)
        host_key = workdir / "host_ed25519"
        _run(keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        conf = workdir / "pam_radius_auth.conf"
        conf.write_text(f"{proxy.address}\t{PROXY_SECRET}\t60\n")
        conf.chmod(0o600)
        pam_file = Path("/etc/pam.d") / service
        cleanup.append(pam_file)
        pam_file.write_text(pam_stack(stack, conf, client_id=service))
        # sshd names its PAM service after argv[0]: run it through a symlink so named
        program = workdir / service
        program.symlink_to(sshd)
        port = free_port(host="127.0.0.1")
        config = workdir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, host_key=host_key, account=local_account,
                                             pid_file=workdir / "sshd.pid",
                                             dropin=SHIPPED_DROPIN))
        check = subprocess.run([str(program), "-t", "-f", str(config)], capture_output=True,
                               text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        process = ManagedProcess([str(program), "-D", "-e", "-f", str(config)],
                                 workdir / "sshd.log")
        servers.append(process)
        wait_for(lambda: tcp_open("127.0.0.1", port) or not process.alive(), 15,
                 "sshd to listen")
        assert process.alive(), process.output()
        return SshServer(process, port, service, local_account)

    try:
        yield start
    finally:
        for process in servers:
            process.stop()
        for path in cleanup:
            path.unlink(missing_ok=True)
        if made_privsep:
            with contextlib.suppress(OSError):
                privsep.rmdir()
