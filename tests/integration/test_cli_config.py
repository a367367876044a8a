"""The command line as an administrator uses it: check-config, hash-password, shipped files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from radius_proxy.backends.users_file import load_users
from radius_proxy.config_loader import load_config
from radius_proxy.passwords import verify_password
from tests.support import REPO


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "radius_proxy", *args], input=stdin,
                          capture_output=True, text=True, timeout=30, check=False, cwd=REPO)


SHIPPED_CONFIGS = sorted(p for p in (REPO / "etc").rglob("*.toml") if "users" not in p.name)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.clients
    if config.primary.backend == "file":
        assert load_users(config.users_file.path)


def test_check_config_accepts_the_shipped_file() -> None:
    proc = _cli("check-config", "-c", "etc/radius-proxy.toml")
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_check_config_names_a_misspelt_key_and_the_file(tmp_path: Path) -> None:
    text = (REPO / "etc/radius-proxy.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("require_message_authenticator = true   # drop",
                                "require_message_authentcator = true   # drop", 1)
                   .replace("[secsign]", "[secsign]\nresuest_timeout_seconds = 4", 1))
    proc = _cli("check-config", "-c", str(bad))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr
    assert "clients[0].require_message_authentcator: unknown key" in proc.stderr
    assert 'did you mean "require_message_authenticator"' in proc.stderr
    assert "secsign.resuest_timeout_seconds" in proc.stderr  # every problem, at once


def test_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    proc = _cli("check-config", "-c", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_serve_refuses_to_start_with_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 1812\n")
    proc = _cli("serve", "-c", str(bad))
    assert proc.returncode == 2
    assert "server.listen" in proc.stderr


def test_hash_password_round_trip() -> None:
    proc = _cli("hash-password", stdin="s3cret, with comma\n")
    assert proc.returncode == 0
    stored = proc.stdout.strip()
    assert stored.startswith("$scrypt$")
    assert verify_password(b"s3cret, with comma", stored)
    assert not verify_password(b"s3cret", stored)


def test_users_file_refuses_plain_text(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.eve]\npassword = "plaintext"\n')
    config = tmp_path / "c.toml"
    config.write_text((REPO / "etc/demo/radius-proxy.toml").read_text()
                      .replace('path = "users.toml"', f'path = "{users}"'))
    proc = _cli("check-config", "-c", str(config))
    assert proc.returncode == 2
    assert "users.eve.password" in proc.stderr
    assert "hash-password" in proc.stderr
