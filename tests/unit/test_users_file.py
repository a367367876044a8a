"""The users file (primary backend "file") and its scrypt password hashes.

`load_users` reports every problem with file, user and fix and refuses plain-text
passwords; `UsersFile.authenticate` is async (scrypt runs in a thread), so it is driven with
`asyncio.run`. Hashes use ln=10, the cheapest cost `is_hash` accepts, to stay fast.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from radius_proxy.backends.users_file import NoPassword, UserRecord, UsersFile, load_users
from radius_proxy.errors import ConfigError
from radius_proxy.passwords import hash_password, is_hash, verify_password
from radius_proxy.pipeline.ports import AuthRequest, DirectoryEntry, PrimaryOutcome


@functools.cache
def cheap_hash(password: str) -> str:
    return hash_password(password, ln=10)


def users_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "users.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(path: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_users(path)
    for p in info.value.problems:
        assert p.file == path
        assert p.fix
    return [(p.key, p.why) for p in info.value.problems]


def auth(username: str, password: bytes) -> AuthRequest:
    return AuthRequest(request_id="r1", client="ssh", client_ip="10.1.0.5", username=username,
                       password=password)


# -- hashes -----------------------------------------------------------------------------------
def test_hash_round_trip_and_salting() -> None:
    h1, h2 = hash_password("pässword", ln=10), hash_password("pässword", ln=10)
    assert h1 != h2  # salted
    assert h1.startswith("$scrypt$ln=10,r=8,p=1$")
    assert is_hash(h1)
    assert verify_password("pässword".encode(), h1)
    assert verify_password("pässword".encode(), h2)
    assert not verify_password(b"password", h1)
    assert not verify_password(b"", h1)


def test_hash_of_bytes_that_are_not_utf8() -> None:
    h = hash_password(b"\xff\xfe raw", ln=10)
    assert verify_password(b"\xff\xfe raw", h)


@pytest.mark.parametrize(
    "text",
    ["alicepass", "", "$scrypt$", "$scrypt$ln=9,r=8,p=1$AAAA$AAAA",
     "$scrypt$ln=21,r=8,p=1$AAAA$AAAA", "$2b$12$abcdefghijklmnopqrstuu",
     "{SSHA}abcdefgh", "$scrypt$ln=10,r=8,p=1$AA==$AAAA", " $scrypt$ln=10,r=8,p=1$AAAA$AAAA"],
)
def test_is_hash_refuses_what_is_not_a_checkable_hash(text: str) -> None:
    assert not is_hash(text)
    assert not verify_password(b"alicepass", text)


def test_verify_refuses_out_of_range_costs() -> None:
    good = cheap_hash("pw")
    assert not verify_password(b"pw", good.replace("r=8", "r=0"))
    assert not verify_password(b"pw", good.replace("r=8", "r=33"))
    assert not verify_password(b"pw", good.replace("p=1", "p=17"))
    assert not verify_password(b"pw", good.replace("ln=10", "ln=9"))


UNCHECKABLE = [
    # a cost that exceeds scrypt's memory limit: hashlib raises ValueError
    "$scrypt$ln=20,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    # Base64 of a length that cannot be decoded: binascii.Error
    "$scrypt$ln=10,r=8,p=1$abcde$abcde",
]


@pytest.mark.parametrize("stored", UNCHECKABLE, ids=["memory-limit", "bad-base64"])
def test_verify_password_is_false_for_a_hash_it_cannot_check(stored: str) -> None:
    assert verify_password(b"anything", stored) is False


@pytest.mark.parametrize(
    "stored",
    [*UNCHECKABLE, "$scrypt$ln=10,r=40,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAA"],
    ids=["memory-limit", "bad-base64", "r-out-of-range"],
)
def test_load_users_refuses_a_hash_that_can_never_verify(tmp_path: Path, stored: str) -> None:
    path = users_toml(tmp_path, f'[users.alice]\npassword = "{stored}"\n')
    assert problems_of(path) == [("users.alice.password", "is missing or not a password hash "
                                  "(plain text is refused)")]


# -- load_users -------------------------------------------------------------------------------
def test_load_users_valid(tmp_path: Path) -> None:
    path = users_toml(tmp_path, f"""
[users.alice]
password = "{cheap_hash('alicepass')}"
secsign_id = "alice.example"
groups = ["vpn-users", "Admins"]

[users.carol]
password = "{cheap_hash('carolpass')}"

[users."DOMAIN\\\\dave"]
password = "{cheap_hash('x')}"
groups = []
""")
    users = load_users(path)
    assert set(users) == {"alice", "carol", "DOMAIN\\dave"}
    assert users["alice"] == UserRecord(cheap_hash("alicepass"), "alice.example",
                                        frozenset({"vpn-users", "Admins"}))
    assert users["carol"].secsign_id is None
    assert users["carol"].groups == frozenset()


def test_empty_users_file_has_no_users(tmp_path: Path) -> None:
    assert load_users(users_toml(tmp_path, "")) == {}
    assert load_users(users_toml(tmp_path, "[users]\n")) == {}


def test_plain_text_password_is_refused(tmp_path: Path) -> None:
    path = users_toml(tmp_path, '[users.alice]\npassword = "alicepass"\n')
    (key, why), = problems_of(path)
    assert key == "users.alice.password"
    assert "plain text is refused" in why


@pytest.mark.parametrize(
    ("entry", "key", "why"),
    [
        ("", "users.alice.password", "is missing"),
        ("password = 12345", "users.alice.password", "not a password hash"),
        ("password = 'HASH'\nsecsign_id = ''", "users.alice.secsign_id", "non-empty string"),
        ("password = 'HASH'\nsecsign_id = 7", "users.alice.secsign_id", "non-empty string"),
        ("password = 'HASH'\ngroups = 'vpn'", "users.alice.groups", "list of strings"),
        ("password = 'HASH'\ngroups = ['vpn', 3]", "users.alice.groups", "list of strings"),
        ("password = 'HASH'\npasswd = 'x'", "users.alice.passwd", "unknown key"),
    ],
)
def test_user_entry_problems(tmp_path: Path, entry: str, key: str, why: str) -> None:
    path = users_toml(tmp_path, "[users.alice]\n" + entry.replace("HASH", cheap_hash("a")))
    found = problems_of(path)
    assert [k for k, _ in found] == [key]
    assert why in found[0][1]


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('[user.alice]\npassword = "x"\n', "user", "unknown key"),
        ('users = "alice"\n', "users", "must be a table"),
        ('[users]\nalice = "pw"\n', "users.alice", "must be a table"),
    ],
)
def test_file_shape_problems(tmp_path: Path, text: str, key: str, why: str) -> None:
    found = problems_of(users_toml(tmp_path, text))
    assert (key, why) in found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = users_toml(tmp_path, f"""
extra = 1
[users.alice]
password = "alicepass"
[users.bob]
password = "{cheap_hash('b')}"
groups = "admins"
colour = "blue"
[users.carol]
password = "{cheap_hash('c')}"
""")
    keys = sorted(k for k, _ in problems_of(path))
    assert keys == ["extra", "users.alice.password", "users.bob.colour", "users.bob.groups"]


@pytest.mark.parametrize(
    "make",
    [lambda d: str(d / "missing.toml"), lambda d: str(d),
     lambda d: users_toml(d, "[users.alice\n"),
     lambda d: (d / "l1.toml").write_bytes(b'[users."caf\xe9"]\n') and str(d / "l1.toml")],
    ids=["missing", "directory", "bad-toml", "not-utf8"],
)
def test_unreadable_users_file(tmp_path: Path, make: object) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    found = problems_of(path)
    assert len(found) == 1
    assert found[0][0] == "-"
    assert "cannot read the users file" in found[0][1]


# -- UsersFile.authenticate -----------------------------------------------------------------
@pytest.fixture
def users_file(tmp_path: Path) -> str:
    return users_toml(tmp_path, f"""
[users.alice]
password = "{cheap_hash('alicepass')}"
secsign_id = "alice.example"
groups = ["vpn-users"]

[users.bob]
password = "{cheap_hash('bob,pass')}"
""")


async def _authenticate(path: str, username: str, password: bytes) -> tuple[object, ...]:
    backend = UsersFile(path)
    try:
        result = await backend.authenticate(auth(username, password))
    finally:
        await backend.close()
    return result.outcome, result.reason, result.entry


@pytest.mark.parametrize(
    ("username", "password", "outcome", "reason"),
    [
        ("alice", b"alicepass", PrimaryOutcome.ACCEPT, ""),
        ("bob", b"bob,pass", PrimaryOutcome.ACCEPT, ""),
        ("alice", b"wrong", PrimaryOutcome.REJECT, "bad_password"),
        ("alice", b"", PrimaryOutcome.REJECT, "bad_password"),
        ("alice", b"alicepass ", PrimaryOutcome.REJECT, "bad_password"),
        ("Alice", b"alicepass", PrimaryOutcome.REJECT, "unknown_user"),
        ("mallory", b"alicepass", PrimaryOutcome.REJECT, "unknown_user"),
    ],
)
def test_authenticate(users_file: str, username: str, password: bytes,
                      outcome: PrimaryOutcome, reason: str) -> None:
    got_outcome, got_reason, entry = asyncio.run(_authenticate(users_file, username, password))
    assert (got_outcome, got_reason) == (outcome, reason)
    if outcome is PrimaryOutcome.ACCEPT:
        assert isinstance(entry, DirectoryEntry)
        assert entry.source == "file"
    else:
        assert entry is None


def test_accept_carries_the_directory_entry(users_file: str) -> None:
    _, _, entry = asyncio.run(_authenticate(users_file, "alice", b"alicepass"))
    assert entry == DirectoryEntry("file", "alice.example", frozenset({"vpn-users"}))


def test_entry_lookup_without_password(users_file: str) -> None:
    backend = UsersFile(users_file)
    try:
        assert backend.entry("bob") == DirectoryEntry("file", None, frozenset())
        assert backend.entry("nobody") is None
    finally:
        asyncio.run(backend.close())


def test_users_file_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        UsersFile(users_toml(tmp_path, '[users.a]\npassword = "plain"\n'))


def test_no_password_backend_accepts_anything() -> None:
    result = asyncio.run(NoPassword().authenticate(auth("anyone", b"")))
    assert result.outcome is PrimaryOutcome.ACCEPT
    asyncio.run(NoPassword().close())
