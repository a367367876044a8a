"""`radius-proxy test-user` as an administrator runs it: against the users file and slapd,
with the SecSign ID simulator as the ID server. Exit 0 the user could log in, 1 not, 2 a
backend failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from radius_proxy.simulator import BackgroundSimulator, parse_rules
from tests.conftest import PROXY_SECRET, base_config, session_starts, simulator_log
from tests.integration.ops.helpers import ldap_sections
from tests.servers.slapd import Slapd
from tests.support import REPO, free_port
from tests.tomlwriter import dumps


@pytest.fixture
def write_config(tmp_path: Path, users_file: Path, simulator: BackgroundSimulator) -> Any:
    """A config file: the tests' base (users file, simulator) updated section by section."""
    secret = tmp_path / "client-secret"
    secret.write_text(PROXY_SECRET + "\n")

    def write(**sections: Any) -> Path:
        config = base_config(1812, secret, users_file, simulator.url)
        for name, section in sections.items():
            config[name] = {**config.get(name, {}), **section}
        path = tmp_path / "radius-proxy.toml"
        path.write_text(dumps(config))
        return path

    return write


def run_test_user(config: Path, *args: str,
                  stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radius_proxy", "test-user", *args, "-c", str(config)],
        input=stdin, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)


def lines(proc: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """The report's lines by label (a label can repeat): 12 columns of label, then text."""
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        out.setdefault(line[:12].strip(), []).append(line[13:])
    return out


def test_users_file_user_with_a_secsign_id(write_config: Any, users_file: Path,
                                           simulator: BackgroundSimulator) -> None:
    proc = run_test_user(write_config(), "alice")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = lines(proc)
    assert got["directory"] == [f"users file {users_file}: entry [users.alice]"]
    assert got["password"][0].startswith("not checked")
    assert got["identity"] == ["file: alice.test (users file)"]
    assert got["secsign id"] == ["alice.test (from file)"]
    assert got["groups"] == ["vpn-users"]
    assert got["policy"] == ["second factor for alice.test (mode push, failmode secure)"]
    assert got["id server"] == ["reachable (give --push to send a real push)"]
    assert got["result"] == ["alice can log in (with the right password)"]
    assert session_starts(simulator) == 0, "no push without --push"


def test_push_is_sent_and_its_outcome_decides(write_config: Any,
                                              simulator: BackgroundSimulator) -> None:
    config = write_config()
    proc = run_test_user(config, "alice", "--push")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "push         approved" in proc.stdout
    starts = [e for e in simulator_log(simulator) if e["type"] == "start"]
    assert [e["secsignid"] for e in starts] == ["alice.test"]
    session = simulator.simulator.sessions()[0]
    assert session.servicename.startswith("radius-proxy test-user on ")

    simulator.simulator.set_rules(parse_rules(["*=deny:0.2"]))
    denied = run_test_user(config, "alice", "--push")
    assert denied.returncode == 1, denied.stdout
    assert "push         denied" in denied.stdout
    assert "alice cannot log in: the push ended denied (push_denied)" in denied.stdout


def test_password_is_checked_only_when_given(write_config: Any) -> None:
    config = write_config()
    good = run_test_user(config, "bob", "--password", stdin="bob,pass\n")
    assert good.returncode == 0, good.stdout + good.stderr
    assert 'password     accepted by the primary backend "file"' in good.stdout
    assert "(with the right password)" not in good.stdout
    bad = run_test_user(config, "bob", "--password", stdin="bobpass\n")
    assert bad.returncode == 1
    assert "password     rejected (bad_password)" in bad.stdout
    assert "push         not sent" in bad.stdout
    assert "bob,pass" not in good.stdout + good.stderr


@pytest.mark.parametrize(("user", "sections", "why"), [
    ("carol", {}, "the policy rejects the user (no_secsign_id)"),
    ("nobody", {}, "the file backend does not know the user"),
    ("alice", {"policy": {"allow_groups": ["admins"]}},
     "the policy rejects the user (not_in_allowed_group)"),
])
def test_users_who_cannot_log_in(write_config: Any, user: str, sections: dict[str, Any],
                                 why: str) -> None:
    proc = run_test_user(write_config(**sections), user)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{user} cannot log in: {why}" in proc.stdout


def test_unreachable_id_server_is_an_error(write_config: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run_test_user(write_config(secsign={"servers": [dead]}), "alice")
    assert proc.returncode == 2, proc.stdout
    assert "failmode secure rejects every login that needs a push" in proc.stdout
    safe = run_test_user(write_config(secsign={"servers": [dead]}, policy={"failmode": "safe"}),
                     "alice")
    assert safe.returncode == 0, safe.stdout


def test_ldap_user(write_config: Any, slapd: Slapd, simulator: BackgroundSimulator) -> None:
    config = write_config(**ldap_sections(slapd))
    proc = run_test_user(config, "alice", "--password", "alicepass", "--push")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = lines(proc)
    assert got["directory"] == ["ldap: uid=alice,ou=people,dc=example,dc=com"]
    assert got["password"] == ['accepted by the primary backend "ldap"']
    assert got["identity"] == ["ldap: alice.secsign (attribute secsignId)"]
    assert got["secsign id"] == ["alice.secsign (from ldap)"]
    assert got["groups"] == ["g1, g2, g3, vpn-users"]
    assert [e["secsignid"] for e in simulator_log(simulator) if e["type"] == "start"] == \
        ["alice.secsign"]


def test_ldap_user_without_a_secsign_id(write_config: Any, slapd: Slapd) -> None:
    proc = run_test_user(write_config(**ldap_sections(slapd)), "dave")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "identity     ldap: no secsignId attribute" in proc.stdout
    assert "policy       reject (no_secsign_id)" in proc.stdout


def test_directory_down_is_an_error(write_config: Any, slapd: Slapd) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    proc = run_test_user(write_config(**ldap_sections(slapd, urls=[dead])), "alice")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "alice cannot log in: a backend failed" in proc.stdout
    assert "ldap_server_down" in proc.stderr
