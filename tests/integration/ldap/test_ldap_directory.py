"""The LDAP backend against real directories, and the file and username identity sources.

slapd (AD-like schema) covers the transports (ldap://, ldaps://, StartTLS), the filter
escaping, account states, the memberOf walk, failover and outages; Samba AD covers the same
code against a real Active Directory protocol implementation, with nested groups resolved
by LDAP_MATCHING_RULE_IN_CHAIN.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from radius_proxy.backends.identity import MappingFileSource, UsernameSource
from radius_proxy.backends.ldap_directory import (
    LdapDirectory,
    bind_failure_reason,
    escape_filter_value,
)
from radius_proxy.config import LdapConfig, Secret
from radius_proxy.errors import BackendError, ConfigError
from radius_proxy.pipeline.ports import DirectoryEntry, PrimaryOutcome, PrimaryResult
from tests.integration.ldap.helpers import authenticate, request, samba_config, slapd_config
from tests.servers import slapd as slapd_server
from tests.servers.samba import SambaDC
from tests.servers.slapd import Slapd, make_pki
from tests.support import free_port, wait_for

ACCEPT, REJECT, UNAVAILABLE = (PrimaryOutcome.ACCEPT, PrimaryOutcome.REJECT,
                               PrimaryOutcome.UNAVAILABLE)
GROUPS = slapd_server.GROUPS
MakeDirectory = Callable[[LdapConfig], LdapDirectory]


# -- little TCP peers for failover and timeouts ------------------------------------------

class Refuser:
    """Accepts TCP connections and closes them at once, counting them: a broken server."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"ldap://127.0.0.1:{self.sock.getsockname()[1]}"
        self.count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(2)


@pytest.fixture
def refuser() -> Iterator[Refuser]:
    peer = Refuser()
    yield peer
    peer.close()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port whose TCP handshake completes (the kernel's backlog) but that never answers."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"ldap://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def closed_url() -> str:
    return f"ldap://127.0.0.1:{free_port(socket.SOCK_STREAM)}"


# -- slapd: passwords and transports -------------------------------------------------------

@pytest.mark.parametrize("transport", ["ldap", "ldaps", "starttls"])
def test_right_password_accepts_over_every_transport(slapd: Slapd, make_directory: MakeDirectory,
                                                      transport: str) -> None:
    url = slapd.ldaps_url if transport == "ldaps" else slapd.ldap_url
    directory = make_directory(slapd_config(slapd, urls=(url,),
                                            start_tls=transport == "starttls"))
    result = authenticate(directory, "alice", "alicepass")
    assert result.outcome is ACCEPT
    assert result.entry is not None
    assert result.entry.source == "ldap"
    assert result.entry.secsign_id == "alice.secsign"
    assert result.entry.dn == f"uid=alice,{slapd_server.PEOPLE}"


@pytest.mark.parametrize("start_tls", [False, True])
def test_certificate_from_another_ca_is_refused(slapd: Slapd, make_directory: MakeDirectory,
                                                tmp_path: Path, start_tls: bool) -> None:
    other = make_pki(tmp_path / "other", name="some other CA")
    url = slapd.ldap_url if start_tls else slapd.ldaps_url
    directory = make_directory(slapd_config(slapd, urls=(url,), start_tls=start_tls,
                                            ca_file=str(other.ca_file)))
    result = authenticate(directory, "alice", "alicepass")
    assert (result.outcome, result.reason) == (UNAVAILABLE, "directory_unavailable")
    assert asyncio.run(directory.probe()) is False


def test_wrong_password_is_rejected(slapd: Slapd, make_directory: MakeDirectory) -> None:
    directory = make_directory(slapd_config(slapd))
    result = authenticate(directory, "alice", "not-alicepass")
    assert (result.outcome, result.reason) == (REJECT, "bad_password")
    assert result.entry is None


def test_empty_password_is_rejected_without_touching_the_directory(
        make_directory: MakeDirectory, slapd: Slapd) -> None:
    # the only URL is a closed port: a bind attempt would make this UNAVAILABLE
    directory = make_directory(slapd_config(slapd, urls=(closed_url(),)))
    result = authenticate(directory, "alice", b"")
    assert (result.outcome, result.reason) == (REJECT, "empty_password")


def test_unknown_user_is_rejected(slapd: Slapd, make_directory: MakeDirectory) -> None:
    result = authenticate(make_directory(slapd_config(slapd)), "nobody", "whatever")
    assert (result.outcome, result.reason) == (REJECT, "unknown_user")


def test_two_entries_for_one_name_are_ambiguous(slapd: Slapd,
                                                make_directory: MakeDirectory) -> None:
    with capture_logs() as logs:
        result = authenticate(make_directory(slapd_config(slapd)), "twin", "twinpass")
    assert (result.outcome, result.reason) == (REJECT, "ambiguous_user")
    assert any(e["event"] == "ldap_ambiguous_user" for e in logs)


@pytest.mark.parametrize("username", [
    "*",
    "a*",
    ")(sAMAccountName=*",
    "*)(|(sAMAccountName=*",
    "alice)(|(objectClass=*",
    "\\00",
    "\x00",
    "alice\x00",
    "\\2a",
    "x" * 300,
])
def test_user_names_cannot_inject_into_the_filter(slapd: Slapd, make_directory: MakeDirectory,
                                                  username: str) -> None:
    directory = make_directory(slapd_config(slapd, strip_domain=False))
    result = authenticate(directory, username, "alicepass")
    assert (result.outcome, result.reason) == (REJECT, "unknown_user")


def test_filter_escaping_follows_rfc_4515() -> None:
    assert escape_filter_value("a*b(c)d\\e\x00") == "a\\2ab\\28c\\29d\\5ce\\00"
    assert escape_filter_value("j\u00fcrgen") == "j\\c3\\bcrgen"


@pytest.mark.parametrize(("code", "message", "reason"), [
    (49, "", "bad_password"),
    (49, "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, "
         "data 52e, v4563", "bad_password"),
    (49, "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, "
         "data 533, v4563", "account_disabled"),
    (49, "... data 775, v4563", "account_disabled"),
    (49, "... data 701, v4563", "account_disabled"),
    (49, "... data 532, v4563", "password_expired"),
    (49, "... data 773, v4563", "password_expired"),
    (53, "unwilling", "bad_password"),
])
def test_active_directory_bind_diagnostics(code: int, message: str, reason: str) -> None:
    assert bind_failure_reason(code, message, "CN=x") == reason


def test_non_ascii_user_name_is_found(slapd: Slapd, make_directory: MakeDirectory) -> None:
    result = authenticate(make_directory(slapd_config(slapd)), "j\u00fcrgen", "juergenpass")
    assert result.outcome is ACCEPT
    assert result.entry is not None
    assert result.entry.secsign_id == "juergen.secsign"


@pytest.mark.parametrize("username", ["EXAMPLE\\alice", "alice@example.com",
                                      "EXAMPLE\\alice@example.com"])
def test_domain_forms_are_reduced_to_the_user_name(slapd: Slapd, make_directory: MakeDirectory,
                                                   username: str) -> None:
    assert authenticate(make_directory(slapd_config(slapd)), username,
                        "alicepass").outcome is ACCEPT
    kept = make_directory(slapd_config(slapd, strip_domain=False))
    assert authenticate(kept, username, "alicepass").reason == "unknown_user"


@pytest.mark.parametrize(("username", "password"), [
    ("erin", "erinpass"),     # userAccountControl 514: ACCOUNTDISABLE
    ("erin", "wrong"),        # refused before any bind, whatever the password
    ("frank", "frankpass"),   # lockoutTime > 0
    ("gina", "ginapass"),     # ppolicy pwdAccountLockedTime
])
def test_disabled_and_locked_accounts_are_rejected(slapd: Slapd, make_directory: MakeDirectory,
                                                   username: str, password: str) -> None:
    result = authenticate(make_directory(slapd_config(slapd)), username, password)
    assert (result.outcome, result.reason) == (REJECT, "account_disabled")


def test_user_without_the_attribute_has_no_secsign_id(slapd: Slapd,
                                                      make_directory: MakeDirectory) -> None:
    result = authenticate(make_directory(slapd_config(slapd)), "dave", "davepass")
    assert result.outcome is ACCEPT
    assert result.entry is not None
    assert result.entry.secsign_id is None


def test_passwords_never_reach_the_log(slapd: Slapd, make_directory: MakeDirectory) -> None:
    with capture_logs() as logs:
        directory = make_directory(slapd_config(slapd, urls=(closed_url(), slapd.ldap_url)))
        authenticate(directory, "alice", "alicepass")
        authenticate(directory, "alice", "alice-wrong-pass")
        authenticate(directory, "erin", "erinpass")
    text = repr(logs)
    assert logs
    for secret in ("alicepass", "alice-wrong-pass", "erinpass", slapd_server.SERVICE_PASSWORD):
        assert secret not in text


# -- slapd: groups ----------------------------------------------------------------------

def test_nested_groups_are_walked_three_levels_deep(slapd: Slapd,
                                                    make_directory: MakeDirectory) -> None:
    with capture_logs() as logs:
        result = authenticate(make_directory(slapd_config(slapd)), "alice", "alicepass")
    assert result.entry is not None
    expected = {f"cn={g},{GROUPS}" for g in ("g1", "g2", "g3", "vpn-users")}
    expected |= {"g1", "g2", "g3", "vpn-users"}
    assert result.entry.groups == frozenset(expected)
    assert [e["method"] for e in logs if e["event"] == "ldap_groups"] == ["walk"]


def test_group_loops_end_the_walk(slapd: Slapd, make_directory: MakeDirectory) -> None:
    result = authenticate(make_directory(slapd_config(slapd)), "bob", "bobpass")
    assert result.entry is not None
    assert result.entry.groups == frozenset({f"cn=loop-a,{GROUPS}", f"cn=loop-b,{GROUPS}",
                                             "loop-a", "loop-b"})


def test_without_nested_groups_only_direct_ones_count(slapd: Slapd,
                                                      make_directory: MakeDirectory) -> None:
    directory = make_directory(slapd_config(slapd, nested_groups=False))
    result = authenticate(directory, "alice", "alicepass")
    assert result.entry is not None
    assert result.entry.groups == frozenset({f"cn=g1,{GROUPS}", f"cn=vpn-users,{GROUPS}",
                                             "g1", "vpn-users"})


# -- slapd: identity lookups ------------------------------------------------------------

def test_lookup_reuses_the_entry_of_an_ldap_primary(slapd: Slapd,
                                                    make_directory: MakeDirectory) -> None:
    directory = make_directory(slapd_config(slapd, urls=(closed_url(),)))
    entry = DirectoryEntry(source="ldap", secsign_id="from.primary")
    primary = PrimaryResult(ACCEPT, entry=entry)
    assert asyncio.run(directory.lookup("alice", primary)) is entry


def test_lookup_for_another_primary_searches_with_the_service_account(
        slapd: Slapd, make_directory: MakeDirectory) -> None:
    directory = make_directory(slapd_config(slapd))
    from_radius = PrimaryResult(ACCEPT)
    entry = asyncio.run(directory.lookup("EXAMPLE\\alice", from_radius))
    assert entry is not None
    assert (entry.source, entry.secsign_id) == ("ldap", "alice.secsign")
    assert {"g1", "g3", "vpn-users"} <= entry.groups
    dave = asyncio.run(directory.lookup("dave", from_radius))
    assert dave is not None
    assert dave.secsign_id is None
    assert asyncio.run(directory.lookup("nobody", from_radius)) is None
    assert asyncio.run(directory.lookup("twin", from_radius)) is None


def test_probe_tells_whether_the_service_account_can_bind(slapd: Slapd,
                                                          make_directory: MakeDirectory) -> None:
    assert asyncio.run(make_directory(slapd_config(slapd)).probe()) is True
    wrong = make_directory(slapd_config(slapd, bind_password=Secret("wrong")))
    assert asyncio.run(wrong.probe()) is False
    result = authenticate(wrong, "alice", "alicepass")
    assert (result.outcome, result.reason) == (UNAVAILABLE, "directory_unavailable")


# -- slapd: failover, outages, timeouts ---------------------------------------------------

def test_first_url_down_the_second_is_used(slapd: Slapd, make_directory: MakeDirectory) -> None:
    directory = make_directory(slapd_config(slapd, urls=(closed_url(), slapd.ldap_url)))
    assert authenticate(directory, "alice", "alicepass").outcome is ACCEPT
    assert authenticate(directory, "alice", "wrong").reason == "bad_password"


def test_dead_url_is_skipped_for_dead_server_seconds(slapd: Slapd, make_directory: MakeDirectory,
                                                     refuser: Refuser) -> None:
    directory = make_directory(slapd_config(slapd, urls=(refuser.url, slapd.ldap_url),
                                            dead_server_seconds=1.0))
    assert authenticate(directory, "alice", "alicepass").outcome is ACCEPT
    assert refuser.count == 1
    for _ in range(3):
        assert authenticate(directory, "alice", "alicepass").outcome is ACCEPT
    assert refuser.count == 1  # remembered as dead: not tried again
    time.sleep(1.1)
    assert authenticate(directory, "alice", "alicepass").outcome is ACCEPT
    wait_for(lambda: refuser.count == 2, timeout=2, what="the dead URL to be retried")


def test_directory_stopped_mid_run_is_unavailable_then_recovers(
        tmp_path: Path, make_directory: MakeDirectory) -> None:
    own = Slapd(tmp_path / "slapd")
    try:
        directory = make_directory(slapd_config(own, timeout_seconds=1.0))
        assert authenticate(directory, "alice", "alicepass").outcome is ACCEPT
        own.stop()
        started = time.monotonic()
        result = authenticate(directory, "alice", "alicepass")
        assert (result.outcome, result.reason) == (UNAVAILABLE, "directory_unavailable")
        assert time.monotonic() - started < 2.0
        with pytest.raises(BackendError):
            asyncio.run(directory.lookup("alice", PrimaryResult(ACCEPT)))
        assert asyncio.run(directory.probe()) is False
        own.start()
        assert authenticate(directory, "alice", "alicepass").outcome is ACCEPT
        assert asyncio.run(directory.probe()) is True
    finally:
        own.stop()


def test_silent_server_times_out_without_blocking_the_loop(
        slapd: Slapd, make_directory: MakeDirectory, blackhole: str) -> None:
    directory = make_directory(slapd_config(slapd, urls=(blackhole,), timeout_seconds=0.5))

    async def scenario() -> tuple[PrimaryResult, int, float]:
        ticks = 0
        started = time.monotonic()
        task = asyncio.create_task(directory.authenticate(request("alice", "alicepass")))
        while not task.done():
            await asyncio.sleep(0.02)
            ticks += 1
        return task.result(), ticks, time.monotonic() - started

    result, ticks, elapsed = asyncio.run(scenario())
    assert (result.outcome, result.reason) == (UNAVAILABLE, "directory_unavailable")
    assert 0.4 < elapsed < 1.5  # one receive timeout; the overall budget is 1.0 s
    assert ticks >= 10          # the loop kept running while the worker waited


def test_concurrent_logins_share_the_pool(slapd: Slapd, make_directory: MakeDirectory) -> None:
    directory = make_directory(slapd_config(slapd, pool_size=3))
    users = [("alice", "alicepass"), ("bob", "bobpass"), ("carol", "carolpass"),
             ("alice", "wrong")] * 5

    async def all_at_once() -> list[PrimaryResult]:
        return await asyncio.gather(*(directory.authenticate(request(u, p)) for u, p in users))

    results = asyncio.run(all_at_once())
    assert [r.outcome for r in results] == [ACCEPT, ACCEPT, ACCEPT, REJECT] * 5


def test_configuration_mistakes_are_refused(slapd: Slapd, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ldap\.urls"):
        LdapDirectory(slapd_config(slapd, urls=()))
    with pytest.raises(ConfigError, match=r"ldap\.urls"):
        LdapDirectory(slapd_config(slapd, urls=("http://127.0.0.1:1",)))
    with pytest.raises(ConfigError, match="user_filter"):
        LdapDirectory(slapd_config(slapd, user_filter="(uid=alice)"))
    with pytest.raises(ConfigError, match="not a filter"):
        LdapDirectory(slapd_config(slapd, user_filter="(&(uid={username})"))
    with pytest.raises(ConfigError, match="bind_password"):
        LdapDirectory(slapd_config(slapd, bind_password=Secret("")))
    with pytest.raises(ConfigError, match="ca_file"):
        LdapDirectory(slapd_config(slapd, ca_file=str(tmp_path / "missing.pem")))


# -- Samba AD ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("transport", ["ldap", "ldaps", "starttls"])
def test_samba_right_password_and_nested_groups_in_chain(
        samba: SambaDC, make_directory: MakeDirectory, transport: str) -> None:
    url = samba.ldaps_url if transport == "ldaps" else samba.ldap_url
    directory = make_directory(samba_config(samba, urls=(url,),
                                            start_tls=transport == "starttls"))
    with capture_logs() as logs:
        result = authenticate(directory, "alice", "AlicePass!1")
    assert result.outcome is ACCEPT, result
    assert result.entry is not None
    assert result.entry.secsign_id == "alice.secsign"
    assert result.entry.dn == "CN=alice,CN=Users,DC=example,DC=test"
    for group in ("g1", "g2", "g3", "vpn-users"):
        assert group in result.entry.groups
        assert f"CN={group},CN=Users,DC=example,DC=test" in result.entry.groups
    assert [e["method"] for e in logs if e["event"] == "ldap_groups"] == ["in_chain"]


@pytest.mark.slow
@pytest.mark.parametrize(("username", "password", "reason"), [
    ("alice", "WrongPass!1", "bad_password"),
    ("alice", "", "empty_password"),
    ("nobody", "Whatever!1", "unknown_user"),
    ("erin", "ErinPass!1", "account_disabled"),
    ("*", "AlicePass!1", "unknown_user"),
    (")(sAMAccountName=*", "AlicePass!1", "unknown_user"),
])
def test_samba_rejects(samba: SambaDC, make_directory: MakeDirectory, username: str,
                       password: str, reason: str) -> None:
    result = authenticate(make_directory(samba_config(samba)), username, password)
    assert (result.outcome, result.reason) == (REJECT, reason)


@pytest.mark.slow
@pytest.mark.parametrize("username", ["EXAMPLE\\alice", "alice@example.test"])
def test_samba_domain_forms(samba: SambaDC, make_directory: MakeDirectory,
                            username: str) -> None:
    result = authenticate(make_directory(samba_config(samba)), username, "AlicePass!1")
    assert result.outcome is ACCEPT


@pytest.mark.slow
def test_samba_lookup_and_missing_attribute(samba: SambaDC,
                                            make_directory: MakeDirectory) -> None:
    directory = make_directory(samba_config(samba))
    dave = authenticate(directory, "dave", "DavePass!1")
    assert dave.outcome is ACCEPT
    assert dave.entry is not None
    assert dave.entry.secsign_id is None
    entry = asyncio.run(directory.lookup("alice", PrimaryResult(ACCEPT)))
    assert entry is not None
    assert entry.secsign_id == "alice.secsign"
    assert "g3" in entry.groups
    assert asyncio.run(directory.probe()) is True


# -- identity sources "file" and "username" ----------------------------------------------

MAPPING = """\
# SecSign IDs of the staff
alice = alice.id@example.com

Bob=bob.id   # trailing comment
EXAMPLE\\carol = carol.special
this line is broken
 = no-user
"""


def test_mapping_file_source(tmp_path: Path) -> None:
    path = tmp_path / "secsignid.map"
    path.write_text(MAPPING)
    source = MappingFileSource(str(path))
    assert source.name == "file"
    bare = PrimaryResult(ACCEPT)

    def lookup(name: str, primary: PrimaryResult = bare) -> DirectoryEntry | None:
        return asyncio.run(source.lookup(name, primary))

    assert lookup("alice") == DirectoryEntry(source="file", secsign_id="alice.id@example.com")
    for name in ("ALICE", "EXAMPLE\\alice", "alice@example.com"):
        found = lookup(name)
        assert found is not None
        assert found.secsign_id == "alice.id@example.com"
    bob = lookup("bob")
    assert bob is not None
    assert bob.secsign_id == "bob.id"
    carol = lookup("EXAMPLE\\carol")
    assert carol is not None
    assert carol.secsign_id == "carol.special"
    assert lookup("nobody") is None
    assert lookup("this line is broken") is None


def test_mapping_file_source_uses_the_users_file_entry_and_keeps_groups(tmp_path: Path) -> None:
    path = tmp_path / "secsignid.map"
    path.write_text("alice = alice.mapped\n")
    source = MappingFileSource(str(path))
    from_users_file = DirectoryEntry(source="file", secsign_id="alice.users-file")
    assert asyncio.run(source.lookup("alice", PrimaryResult(ACCEPT, entry=from_users_file))) \
        is from_users_file
    from_ldap = DirectoryEntry(source="ldap", secsign_id=None, groups=frozenset({"vpn"}),
                               dn="uid=alice")
    found = asyncio.run(source.lookup("alice", PrimaryResult(ACCEPT, entry=from_ldap)))
    assert found == DirectoryEntry(source="file", secsign_id="alice.mapped",
                                   groups=frozenset({"vpn"}), dn="uid=alice")


def test_mapping_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "secsignid.map"
    path.write_text("alice = first\n")
    source = MappingFileSource(str(path))
    first = asyncio.run(source.lookup("alice", PrimaryResult(ACCEPT)))
    assert first is not None
    assert first.secsign_id == "first"
    path.write_text("alice = second-value\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = asyncio.run(source.lookup("alice", PrimaryResult(ACCEPT)))
    assert second is not None
    assert second.secsign_id == "second-value"


def test_mapping_file_missing_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping_file"):
        MappingFileSource(str(tmp_path / "missing.map"))


def test_username_source() -> None:
    source = UsernameSource("@corp.example")
    assert source.name == "username"
    groups = DirectoryEntry(source="file", groups=frozenset({"vpn"}))

    def lookup(name: str, primary: PrimaryResult) -> DirectoryEntry | None:
        return asyncio.run(source.lookup(name, primary))

    assert lookup("alice", PrimaryResult(ACCEPT)) == DirectoryEntry(
        source="username", secsign_id="alice@corp.example")
    found = lookup("EXAMPLE\\alice", PrimaryResult(ACCEPT, entry=groups))
    assert found is not None
    assert (found.secsign_id, found.groups) == ("alice@corp.example", frozenset({"vpn"}))
    assert lookup("", PrimaryResult(ACCEPT)) is None
    assert asyncio.run(UsernameSource("").lookup("bob", PrimaryResult(ACCEPT))) == \
        DirectoryEntry(source="username", secsign_id="bob")
