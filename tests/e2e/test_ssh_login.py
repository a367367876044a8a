"""An SSH login through the proxy: OpenSSH client -> sshd (keyboard-interactive, PAM) ->
pam_radius_auth -> radius-proxy -> the SecSign ID simulator, where the test presses Approve
or Deny on the phone while ssh waits.

The proxy checks no password here (`primary.backend = "none"`, SecSign's "2SA"): the
SecSign ID is the local account name plus ".test", so any throw-away account works.
"""

from __future__ import annotations

import subprocess

import pytest

from radius_proxy.simulator import parse_rules
from tests.conftest import session_starts
from tests.e2e.conftest import audits, decide, wait_pending
from tests.support import wait_for

SSH_PROXY = {
    "primary": {"backend": "none"},
    "identity": {"sources": ["username"], "username_suffix": ".test"},
    "policy": {"remember_minutes": 0},
}


def _finish(login: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        stdout, stderr = login.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        login.kill()
        stdout, stderr = login.communicate()
        pytest.fail(f"ssh did not finish within {timeout} s: {stderr}")
    return login.returncode, stdout, stderr


@pytest.mark.parametrize(("action", "stack"), [
    ("approve", "shipped"),  # etc/pam/sshd and etc/sshd_config.d as administrators install them
    ("deny", "shipped"),
    ("approve", "minimal"),  # pam_radius_auth + pam_permit only: tells a stack problem apart
])
def test_ssh_login_waits_for_the_phone(start_proxy, simulator, sshd_login, action: str,
                                       stack: str) -> None:
    simulator.simulator.set_rules(parse_rules(["*=manual"]))
    proxy = start_proxy(legacy=True, **SSH_PROXY)
    sshd = sshd_login(proxy, stack)
    login = sshd.start_login("echo logged-in")
    try:
        session = wait_pending(simulator, sshd.secsign_id)
        assert session["servicename"] == f"Test login at {sshd.service}"  # from client_id=
        assert session["serviceaddress"] == "127.0.0.1"  # the ssh client's address
        assert login.poll() is None, "ssh must wait for the phone"
        decide(simulator, session["id"], action)
        code, stdout, stderr = _finish(login)
    finally:
        if login.poll() is None:
            login.kill()
            login.communicate()
    [event] = audits(proxy, 1)
    assert event["username"] == sshd.account
    assert event["nas_identifier"] == sshd.service  # client_id= in the PAM stack
    if action == "approve":
        assert code == 0, stderr + sshd.process.output()
        assert stdout.strip() == "logged-in"
        assert (event["outcome"], event["reason"]) == ("accept", "push_approved")
    else:
        assert code != 0
        assert "logged-in" not in stdout
        assert "Permission denied" in stderr
        assert (event["outcome"], event["reason"]) == ("reject", "push_denied")
        failed = f"Failed keyboard-interactive/pam for {sshd.account}"
        wait_for(lambda: failed in sshd.process.output(), 10, "sshd to log the failure")
        assert "Accepted" not in sshd.process.output()
    assert session_starts(simulator) == 1
