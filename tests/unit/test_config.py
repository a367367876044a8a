"""Configuration: TOML into frozen dataclasses, every problem reported with file, key and fix.

Most rows go through `config_from_mapping` (already-parsed TOML); what depends on the file
itself (its name in each problem, relative paths, syntax, encoding) goes through
`load_config` with files under `tmp_path`. A misspelt security setting is a hole, so every
error path of PRODUCT.md section 3 is a row here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from radius_proxy.config import Config, Secret
from radius_proxy.config_loader import config_from_mapping, load_config, parse_hostport
from radius_proxy.errors import ConfigError, Problem

REPO = Path(__file__).resolve().parents[2]
GOOD_SECRET = "s3cret-s3cret-s3cret-24ch"

BASE: dict[str, Any] = {
    "clients": [{"name": "ssh-hosts", "networks": ["10.1.0.0/16"], "secret": GOOD_SECRET}],
    "primary": {"backend": "none"},
    "identity": {"sources": ["username"]},
    "secsign": {"pin_account": "acct", "pin_password": "pin-password"},
}


def cfg(**sections: Any) -> dict[str, Any]:
    """BASE with sections merged in: a dict updates that section, anything else replaces it;
    a value of None removes the key."""
    data = copy.deepcopy(BASE)
    for name, value in sections.items():
        if value is None:
            data.pop(name, None)
        elif isinstance(value, dict) and isinstance(data.get(name, {}), dict):
            merged = {**data.get(name, {}), **value}
            data[name] = {k: v for k, v in merged.items() if v is not None}
        else:
            data[name] = value
    return data


def client(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "ssh-hosts", "networks": ["10.1.0.0/16"],
                             "secret": GOOD_SECRET}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


def problems(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert info.value.problems, "a ConfigError always names at least one problem"
    return info.value.problems


def one_problem(data: dict[str, Any], key: str, why: str, fix: str = "") -> Problem:
    """Exactly one problem for key, whose why (and fix) contain the given text."""
    found = [p for p in problems(data) if p.key == key]
    assert len(found) == 1, f"expected one problem at {key}, got {problems(data)}"
    p = found[0]
    assert why in p.why, p
    assert fix in p.fix, p
    assert p.fix, "every problem says how to fix it"
    return p


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- what loads --------------------------------------------------------------------------------
def test_minimal_config_and_its_defaults() -> None:
    c = config_from_mapping(cfg())
    assert isinstance(c, Config)
    assert c.server.listen == ("127.0.0.1:1812",)
    assert c.server.max_pending == 10000
    assert c.server.reply_cache_seconds == 30.0
    (cl,) = c.clients
    assert cl.name == "ssh-hosts"
    assert cl.networks == ("10.1.0.0/16",)
    assert cl.secret == Secret(GOOD_SECRET)
    assert cl.require_message_authenticator is True
    assert cl.limit_proxy_state is True
    assert c.policy.mode == "push"
    assert c.policy.failmode == "secure"
    assert c.policy.no_secsign_id == "reject"
    assert c.policy.max_pushes_per_user == 3
    assert c.policy.passcodes is True
    assert c.secsign.push_timeout_seconds == 50.0
    assert c.state.backend == "memory"
    assert c.source == "<memory>"


def test_config_is_frozen() -> None:
    c = config_from_mapping(cfg())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.policy = c.policy  # type: ignore[misc]


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    c = config_from_mapping(cfg(server={"reply_cache_seconds": 10},
                                secsign={"push_timeout_seconds": 40}))
    assert c.server.reply_cache_seconds == 10.0
    assert isinstance(c.server.reply_cache_seconds, float)


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2-hunter2-hunter2")
    assert "hunter2" not in repr(secret)
    assert str(secret) == "***"
    c = config_from_mapping(cfg())
    assert GOOD_SECRET not in repr(c)
    assert "pin-password" not in repr(c)
    assert secret.encode() == b"hunter2-hunter2-hunter2"
    assert not Secret("")


@pytest.mark.parametrize("path", sorted((REPO / "etc").rglob("*.toml")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path: Path) -> None:
    if path.name == "users.toml":
        from radius_proxy.backends.users_file import load_users
        assert load_users(str(path))
        return
    c = load_config(path)
    assert c.source == str(path)


def test_demo_config_paths_are_relative_to_its_folder() -> None:
    c = load_config(REPO / "etc" / "demo" / "radius-proxy.toml")
    assert c.users_file.path == str(REPO / "etc" / "demo" / "users.toml")


# -- unknown keys, with a suggestion ---------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"sever": {}}, "sever", '"server"'),
        ({"server": {"listn": ["127.0.0.1:1812"]}}, "server.listn", '"listen"'),
        ({"clients": [client(secert_file="/x")]}, "clients[0].secert_file", '"secret_file"'),
        ({"clients": [client(require_message_authenticater=False)]},
         "clients[0].require_message_authenticater", '"require_message_authenticator"'),
        ({"policy": {"failmod": "safe"}}, "policy.failmod", '"failmode"'),
        ({"policy": {"messages": {"strat": "x"}}}, "policy.messages.strat", '"start"'),
        ({"secsign": {"pin_passwrd_file": "/x"}}, "secsign.pin_passwrd_file",
         '"pin_password_file"'),
        ({"ldap": {"bind_pasword": "x"}}, "ldap.bind_pasword", '"bind_password"'),
    ],
)
def test_unknown_key_is_an_error_with_a_suggestion(data: dict[str, Any], key: str,
                                                   suggestion: str) -> None:
    one_problem(cfg(**data), key, "unknown key", f"did you mean {suggestion}?")


def test_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    p = one_problem(cfg(state={"zzzzqqq": 1}), "state.zzzzqqq", "unknown key", "known keys")
    assert "backend" in p.fix
    assert "redis_url" in p.fix


def test_source_is_not_a_key_users_can_set() -> None:
    one_problem(cfg(source="/etc/other.toml"), "source", "unknown key")


def test_secret_file_suffix_only_for_secrets() -> None:
    # "name_file" is not a thing: only Secret fields take the _file form
    one_problem(cfg(clients=[client(name_file="/x")]), "clients[0].name_file", "unknown key")


# -- types --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "key", "why"),
    [
        ({"server": {"max_pending": "10"}}, "server.max_pending", "must be a whole number"),
        ({"server": {"max_pending": True}}, "server.max_pending",
         "must be a whole number, not true/false"),
        ({"server": {"max_pending": 1.5}}, "server.max_pending", "must be a whole number"),
        ({"server": {"reply_cache_seconds": "30"}}, "server.reply_cache_seconds",
         "must be a number, not a string"),
        ({"server": {"reply_cache_seconds": False}}, "server.reply_cache_seconds",
         "must be a number"),
        ({"server": {"listen": "127.0.0.1:1812"}}, "server.listen", "must be a list of strings"),
        ({"server": {"listen": [1812]}}, "server.listen", "must be a list of strings"),
        ({"policy": {"passcodes": "yes"}}, "policy.passcodes", "must be true or false"),
        ({"policy": {"passcodes": 1}}, "policy.passcodes", "must be true or false"),
        ({"policy": {"mode": 1}}, "policy.mode", "must be a string in quotes"),
        ({"policy": {"allow_groups": "admins"}}, "policy.allow_groups",
         "must be a list of strings"),
        ({"policy": {"messages": "hello"}}, "policy.messages", "must be a table"),
        ({"server": 3}, "server", "must be a table"),
        ({"clients": {"name": "x"}}, "clients", "must be an array of tables"),
        ({"clients": ["x"]}, "clients[0]", "must be a table"),
        ({"clients": [client(secret=1234567890123456789)]}, "clients[0].secret",
         "must be a string"),
        ({"clients": [client(secret=None, secret_file=["/a"])]}, "clients[0].secret_file",
         "must be a string, not a list"),
        ({"logging": {"level": 1}}, "logging.level", "must be a string"),
    ],
)
def test_wrong_type(data: dict[str, Any], key: str, why: str) -> None:
    one_problem(cfg(**data), key, why)


# -- ranges and choices -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "max_pending", 0),
        ("server", "max_pending", 1_000_001),
        ("server", "workers", 0),
        ("server", "workers", 65),
        ("server", "reply_cache_seconds", 0.5),
        ("server", "reply_cache_seconds", 301),
        ("secsign", "push_timeout_seconds", 0),
        ("secsign", "push_timeout_seconds", 601),
        ("secsign", "poll_interval_seconds", 0.01),
        ("secsign", "request_timeout_seconds", 121),
        ("policy", "max_pushes_per_user", 0),
        ("policy", "push_window_minutes", 0),
        ("policy", "remember_minutes", -1),
        ("policy", "challenge_timeout_seconds", 4),
        ("ldap", "pool_size", 0),
        ("radius_upstream", "retries", 11),
        ("server", "reply_cache_seconds", math.inf),
        ("server", "reply_cache_seconds", -math.inf),
    ],
)
def test_out_of_range(section: str, key: str, value: float) -> None:
    one_problem(cfg(**{section: {key: value}}), f"{section}.{key}", "out of range", "use a value")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("server", "max_pending", 1), ("server", "max_pending", 1_000_000),
     ("server", "reply_cache_seconds", 1), ("server", "reply_cache_seconds", 300),
     ("policy", "remember_minutes", 0), ("policy", "remember_minutes", 10080)],
)
def test_range_bounds_are_inclusive(section: str, key: str, value: float) -> None:
    c = config_from_mapping(cfg(**{section: {key: value}}))
    assert getattr(getattr(c, section), key) == value


@pytest.mark.parametrize(
    ("section", "key"),
    [("secsign", "push_timeout_seconds"), ("server", "reply_cache_seconds"),
     ("policy", "push_window_minutes")],
)
def test_nan_is_refused(section: str, key: str) -> None:
    # regression: every comparison with NaN is false, so it slipped through the range checks
    one_problem(cfg(**{section: {key: math.nan}}), f"{section}.{key}", "nan")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("primary", "backend", "kerberos"),
        ("policy", "mode", "pushy"),
        ("policy", "failmode", "open"),
        ("policy", "no_secsign_id", "allow"),
        ("secsign", "api", "soap"),
        ("state", "backend", "etcd"),
        ("logging", "format", "xml"),
        ("logging", "level", "INFO"),
        ("identity", "sources", ["username", "nis"]),
    ],
)
def test_value_not_among_choices(section: str, key: str, value: Any) -> None:
    one_problem(cfg(**{section: {key: value}}), f"{section}.{key}", "is not one of", "use one of")


# -- secrets from files -----------------------------------------------------------------------
def test_secret_file_is_read_and_its_line_end_stripped(tmp_path: Path) -> None:
    write(tmp_path / "secret", GOOD_SECRET + "\r\n")
    c = config_from_mapping(cfg(clients=[client(secret=None,
                                                secret_file=str(tmp_path / "secret"))]))
    assert c.clients[0].secret.value == GOOD_SECRET


def test_secret_file_keeps_inner_spaces(tmp_path: Path) -> None:
    write(tmp_path / "secret", "  spaced secret with words  \n")
    c = config_from_mapping(cfg(clients=[client(secret=None,
                                                secret_file=str(tmp_path / "secret"))]))
    assert c.clients[0].secret.value == "  spaced secret with words  "


UNUSABLE_FILES = [
    (lambda d: d / "missing", "cannot read"),
    (lambda d: d, "cannot read"),  # a directory
    (lambda d: (d / "latin1").write_bytes(b"caf\xe9-secret-secret") and d / "latin1",
     "not UTF-8"),
    (lambda d: write(d / "empty", ""), "is empty"),
    (lambda d: write(d / "newline", "\n"), "is empty"),
]


@pytest.mark.parametrize(("make", "why"), UNUSABLE_FILES,
                         ids=["missing", "directory", "not-utf8", "empty", "only-newline"])
def test_unusable_secret_file(tmp_path: Path, make: Any, why: str) -> None:
    path = make(tmp_path)
    found = problems(cfg(clients=[client(secret=None, secret_file=str(path))]))
    # regression: the key once read "secret_file_file", plus a spurious "secret is required"
    (problem,) = found
    assert problem.key == "clients[0].secret_file"
    assert why in problem.why
    assert str(path) in problem.why
    assert "create the file" in problem.fix or "write the secret" in problem.fix


@pytest.mark.parametrize(
    ("section", "field"),
    [("ldap", "bind_password"), ("secsign", "pin_password"), ("radius_upstream", "secret")],
)
def test_every_secret_takes_the_file_form(tmp_path: Path, section: str, field: str) -> None:
    write(tmp_path / "s", "from-a-file\n")
    c = config_from_mapping(cfg(**{section: {field: None, f"{field}_file": str(tmp_path / "s")}}))
    assert getattr(getattr(c, section), field).value == "from-a-file"


def test_secret_given_twice(tmp_path: Path) -> None:
    write(tmp_path / "s", GOOD_SECRET)
    data = cfg(clients=[client(secret=GOOD_SECRET, secret_file=str(tmp_path / "s"))])
    one_problem(data, "clients[0].secret_file", "given twice", "keep either secret or secret_file")


def test_secret_file_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    write(tmp_path / "secrets" / "nas", GOOD_SECRET + "\n")
    path = write(tmp_path / "proxy.toml", """
[[clients]]
name = "nas"
networks = ["10.0.0.0/8"]
secret_file = "secrets/nas"

[primary]
backend = "none"

[secsign]
pin_account = "a"
pin_password = "b"
""")
    c = load_config(path)
    assert c.clients[0].secret.value == GOOD_SECRET


# -- required keys ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("missing", "fix"),
    [("name", "add name = ..."), ("networks", "add networks = ..."),
     ("secret", 'add secret_file = "/path/to/file"')],
)
def test_client_key_is_required(missing: str, fix: str) -> None:
    one_problem(cfg(clients=[client(**{missing: None})]), f"clients[0].{missing}",
                "is required", fix)


def test_a_client_with_nothing_reports_every_missing_key() -> None:
    keys = sorted(p.key for p in problems(cfg(clients=[{}])))
    assert keys == ["clients[0].name", "clients[0].networks", "clients[0].secret"]


# -- cross-field rules: clients ---------------------------------------------------------------
def test_no_client() -> None:
    one_problem(cfg(clients=None), "clients", "no client is configured", "[[clients]]")


@pytest.mark.parametrize(("length", "ok"), [(1, False), (15, False), (16, True), (64, True)])
def test_short_client_secret(length: int, ok: bool) -> None:
    data = cfg(clients=[client(secret="x" * length)])
    if ok:
        config_from_mapping(data)
    else:
        one_problem(data, "clients[0].secret", "shorter than 16", "openssl rand")


def test_short_secret_from_a_file(tmp_path: Path) -> None:
    write(tmp_path / "s", "short\n")
    one_problem(cfg(clients=[client(secret=None, secret_file=str(tmp_path / "s"))]),
                "clients[0].secret", "shorter than 16")


def test_duplicate_client_names() -> None:
    data = cfg(clients=[client(), client(networks=["10.2.0.0/16"])])
    one_problem(data, "clients[1].name", '"ssh-hosts" is used twice', "own name")


@pytest.mark.parametrize(
    ("first", "second"),
    [("10.1.0.0/16", "10.1.0.0/16"), ("10.1.0.0/16", "10.1.2.3/16"),
     ("192.0.2.7", "192.0.2.7/32"), ("::1", "::1/128"), ("2001:db8::/32", "2001:DB8::/32")],
)
def test_network_listed_in_two_clients(first: str, second: str) -> None:
    data = cfg(clients=[client(networks=[first]), client(name="b", networks=[second])])
    one_problem(data, "clients[1].networks", "is also in client ssh-hosts", "one client only")


def test_overlapping_but_different_networks_are_fine() -> None:
    c = config_from_mapping(cfg(clients=[client(networks=["10.0.0.0/8"]),
                                         client(name="b", networks=["10.1.0.0/16"])]))
    assert len(c.clients) == 2


@pytest.mark.parametrize("network", ["10.1.0.0/33", "bogus", "10.1.0.0/16/8", "", "::1/129"])
def test_invalid_network(network: str) -> None:
    one_problem(cfg(clients=[client(networks=[network])]), "clients[0].networks",
                "is not a network")


def test_empty_network_list() -> None:
    one_problem(cfg(clients=[client(networks=[])]), "clients[0].networks", "is empty")


@pytest.mark.parametrize(
    "template",
    ["{", "}", "Login {nas_identifier", "{0}", "{}", "{user_name.__class__}", "{client[0]}",
     "{nas identifier}", "{nas-identifier}"],
)
@pytest.mark.parametrize("field", ["service_name", "service_address"])
def test_bad_template(field: str, template: str) -> None:
    found = problems(cfg(clients=[client(**{field: template})]))
    assert [p.key for p in found] == [f"clients[0].{field}"]
    assert "template" in found[0].why or "placeholder" in found[0].why


@pytest.mark.parametrize(
    "template",
    ["SSH login to {nas_identifier}", "{calling_station_id}", "{client}/{user_name}",
     "{{literal braces}}", "", "no placeholders at all", "{nas_identifier:>20}"],
)
def test_good_template(template: str) -> None:
    config_from_mapping(cfg(clients=[client(service_name=template)]))


@pytest.mark.parametrize("template", ["{nas_identifier!z}", "{nas_identifier:{x}"])
def test_template_that_cannot_be_filled_is_refused(template: str) -> None:
    # regression: passed the name check, then always failed in fill_templates at run time
    one_problem(cfg(clients=[client(service_name=template)]), "clients[0].service_name", "")


@pytest.mark.parametrize(
    ("push", "nas", "ok"),
    [(50, 60, True), (59.9, 60, True), (60, 60, False), (61, 60, False), (30, 25, False)],
)
def test_push_timeout_must_stay_below_the_nas_timeout(push: float, nas: float, ok: bool) -> None:
    data = cfg(secsign={"push_timeout_seconds": push},
               clients=[client(nas_timeout_seconds=nas)])
    if ok:
        config_from_mapping(data)
    else:
        p = one_problem(data, "secsign.push_timeout_seconds", "not below the NAS timeout",
                        "nas_timeout_seconds")
        assert "ssh-hosts" in p.why


def test_push_timeout_checked_against_every_client() -> None:
    data = cfg(clients=[client(), client(name="vpn", networks=["192.0.2.0/24"],
                                         nas_timeout_seconds=30)])
    p = one_problem(data, "secsign.push_timeout_seconds", "NAS timeout of client vpn")
    assert "30 s" in p.why


# -- cross-field rules: listen addresses ------------------------------------------------------
@pytest.mark.parametrize(
    ("listen", "ok"),
    [(["127.0.0.1:1812"], True), (["[::1]:1812"], True), (["0.0.0.0:1812"], True),
     (["127.0.0.1:1812", "[::1]:1812"], True), (["127.0.0.1"], False),
     (["localhost:1812"], False), (["127.0.0.1:70000"], False), (["127.0.0.1:x"], False),
     ([":1812"], False), (["::1:1812"], False), ([], False)],
)
def test_listen_addresses(listen: list[str], ok: bool) -> None:
    data = cfg(server={"listen": listen})
    if ok:
        assert config_from_mapping(data).server.listen == tuple(listen)
    else:
        one_problem(data, "server.listen", "")


def test_port_zero_only_where_we_listen() -> None:
    # regression: port 0 (a free port, for serve() in tests) was refused for listen addresses
    c = config_from_mapping(cfg(server={"listen": ["127.0.0.1:0"]},
                                http={"listen": "127.0.0.1:0"}))
    assert c.server.listen == ("127.0.0.1:0",)
    assert parse_hostport("[::1]:0", allow_zero=True) == ("::1", 0)
    with pytest.raises(ValueError, match="invalid port"):
        parse_hostport("10.0.0.5:0")
    one_problem(cfg(primary={"backend": "radius"},
                    radius_upstream={"servers": ["10.0.0.5:0"], "secret": GOOD_SECRET}),
                "radius_upstream.servers", "invalid port")


@pytest.mark.parametrize(("listen", "ok"), [("", True), ("127.0.0.1:9812", True),
                                            ("[::1]:9812", True), ("localhost:9812", False),
                                            ("127.0.0.1", False)])
def test_http_listen(listen: str, ok: bool) -> None:
    data = cfg(http={"listen": listen})
    if ok:
        config_from_mapping(data)
    else:
        one_problem(data, "http.listen", "")


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [("127.0.0.1:1812", None, ("127.0.0.1", 1812)), ("[::1]:1812", None, ("::1", 1812)),
     ("radius.example.com:1645", None, ("radius.example.com", 1645)),
     ("10.0.0.5", 1812, ("10.0.0.5", 1812)), ("[2001:db8::1]", 1812, ("2001:db8::1", 1812)),
     ("::1", 1812, ("::1", 1812))],
)
def test_parse_hostport(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize("text", ["10.0.0.5", ":1812", "[::1]", "h:0", "h:65536", "h:-1", "h:",
                                  "h:1x", ""])
def test_parse_hostport_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"has no|invalid port"):
        parse_hostport(text)


# -- cross-field rules: backends ---------------------------------------------------------------
def test_ldap_backend_needs_its_section() -> None:
    found = problems(cfg(primary={"backend": "ldap"}))
    assert {p.key for p in found} == {"ldap.urls", "ldap.base_dn"}
    assert all("required by the chosen backend" in p.why for p in found)


def test_identity_source_ldap_needs_the_ldap_section_too() -> None:
    found = problems(cfg(identity={"sources": ["ldap"]}))
    assert {p.key for p in found} == {"ldap.urls", "ldap.base_dn"}


LDAP_OK = {"urls": ["ldaps://dc1.example.com"], "base_dn": "DC=example,DC=com"}


@pytest.mark.parametrize(
    ("ldap", "key", "why"),
    [
        ({"urls": ["https://dc1"]}, "ldap.urls", "not an ldap:// or ldaps:// URL"),
        ({"urls": ["dc1.example.com"]}, "ldap.urls", "not an ldap:// or ldaps:// URL"),
        ({"user_filter": "(uid=*)"}, "ldap.user_filter", "no {username} placeholder"),
        ({"bind_dn": "CN=svc,DC=example,DC=com"}, "ldap.bind_password", "has no password"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ldap.ca_file", "cannot read"),
    ],
)
def test_ldap_section_rules(ldap: dict[str, Any], key: str, why: str) -> None:
    one_problem(cfg(primary={"backend": "ldap"}, ldap={**LDAP_OK, **ldap}), key, why)


def test_ldap_section_complete() -> None:
    c = config_from_mapping(cfg(primary={"backend": "ldap"},
                                ldap={**LDAP_OK, "bind_dn": "CN=svc", "bind_password": "pw"}))
    assert c.ldap.urls == ("ldaps://dc1.example.com",)


def test_radius_backend_needs_servers_and_secret() -> None:
    found = problems(cfg(primary={"backend": "radius"}))
    assert {p.key for p in found} == {"radius_upstream.servers", "radius_upstream.secret"}


@pytest.mark.parametrize(("server", "ok"), [("10.0.0.5:1812", True), ("10.0.0.5", True),
                                            ("[2001:db8::5]:1812", True),
                                            ("10.0.0.5:99999", False), (":1812", False)])
def test_radius_upstream_servers(server: str, ok: bool) -> None:
    data = cfg(primary={"backend": "radius"},
               radius_upstream={"servers": [server], "secret": GOOD_SECRET})
    if ok:
        config_from_mapping(data)
    else:
        one_problem(data, "radius_upstream.servers", "")


def test_file_backend_needs_a_readable_users_file(tmp_path: Path) -> None:
    one_problem(cfg(primary={"backend": "file"}), "users_file.path", "required by the chosen")
    one_problem(cfg(primary={"backend": "file"},
                    users_file={"path": str(tmp_path / "missing.toml")}),
                "users_file.path", "cannot read")
    write(tmp_path / "users.toml", "")
    config_from_mapping(cfg(primary={"backend": "file"},
                            users_file={"path": str(tmp_path / "users.toml")}))


def test_unreadable_mapping_file_dictionary_and_ca(tmp_path: Path) -> None:
    found = problems(cfg(identity={"sources": ["file"], "mapping_file": str(tmp_path / "m")},
                         server={"dictionaries": [str(tmp_path / "dict")]},
                         secsign={"ca_file": str(tmp_path / "ca.pem")}))
    assert {p.key for p in found} == {"identity.mapping_file", "server.dictionaries",
                                      "secsign.ca_file"}


# -- cross-field rules: the ID server ----------------------------------------------------------
@pytest.mark.parametrize(
    ("servers", "ok"),
    [
        (["https://httpapi.secsign.com"], True),
        (["http://127.0.0.1:8480"], True),
        (["http://localhost:8480"], True),
        (["http://[::1]:8480"], True),
        (["http://idserver.example.com"], False),
        (["http://10.0.0.9:8480"], False),
        (["https://a.example.com", "http://b.example.com"], False),
        (["http://127.0.0.1.example.com"], False),
    ],
)
def test_plain_http_only_on_loopback(servers: list[str], ok: bool) -> None:
    data = cfg(secsign={"servers": servers})
    if ok:
        config_from_mapping(data)
    else:
        one_problem(data, "secsign.servers", "plain HTTP to a remote host", "https://")


@pytest.mark.parametrize("url", ["ftp://idserver", "httpapi.secsign.com", "HTTPS//x"])
def test_id_server_must_be_an_http_url(url: str) -> None:
    one_problem(cfg(secsign={"servers": [url]}), "secsign.servers", "is not an http(s) URL")


def test_id_server_list_must_not_be_empty() -> None:
    one_problem(cfg(secsign={"servers": []}), "secsign.servers", "required")


@pytest.mark.parametrize("url", ["http://[::1", "https://[not-an-ip]/"])
def test_malformed_id_server_url_is_a_problem_not_a_crash(url: str) -> None:
    # regression: urlsplit's ValueError escaped the loader as a traceback
    one_problem(cfg(secsign={"servers": [url]}), "secsign.servers", "not a valid URL")


def test_rest_api_needs_a_pin_account() -> None:
    one_problem(cfg(secsign={"pin_account": None, "pin_password": None}),
                "secsign.pin_account", "needs a PIN account", 'api = "legacy"')


def test_rest_pin_account_needs_a_password() -> None:
    one_problem(cfg(secsign={"pin_password": None}), "secsign.pin_password", "no password")


def test_legacy_api_needs_no_pin_account() -> None:
    c = config_from_mapping(cfg(secsign={"api": "legacy", "pin_account": None,
                                         "pin_password": None}))
    assert c.secsign.api == "legacy"


@pytest.mark.parametrize(("poll", "push", "ok"), [(2, 50, True), (9.9, 10, True),
                                                  (10, 10, False), (20, 5, False)])
def test_poll_interval_below_push_timeout(poll: float, push: float, ok: bool) -> None:
    data = cfg(secsign={"poll_interval_seconds": poll, "push_timeout_seconds": push})
    if ok:
        config_from_mapping(data)
    else:
        one_problem(data, "secsign.poll_interval_seconds", "not below push_timeout_seconds")


def test_redis_state_is_accepted_with_its_settings(tmp_path: Path) -> None:
    ca = tmp_path / "redis-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    state = config_from_mapping(cfg(state={
        "backend": "redis", "redis_url": "rediss://10.0.0.7:6380/2", "ca_file": str(ca),
        "redis_password": "pw", "sentinels": ["10.0.0.8:26379", "[2001:db8::9]"],
        "timeout_seconds": 0.5, "unavailable": "drop"})).state
    assert (state.backend, state.unavailable, state.timeout_seconds) == ("redis", "drop", 0.5)
    assert state.sentinels == ("10.0.0.8:26379", "[2001:db8::9]")
    assert "pw" not in repr(state)


@pytest.mark.parametrize(("state", "key", "why"), [
    ({"redis_url": "http://10.0.0.7/0"}, "state.redis_url", "is not redis, rediss or unix"),
    ({"redis_url": "redis://h:port/0"}, "state.redis_url", "not a valid URL"),
    ({"redis_url": "redis://:a@h/0", "redis_password": "b"}, "state.redis_password",
     "also in redis_url"),
    ({"ca_file": "/nonexistent/ca.pem", "redis_url": "rediss://h/0"}, "state.ca_file",
     "/nonexistent/ca.pem"),
    ({"sentinels": ["10.0.0.8:x"]}, "state.sentinels", "invalid port"),
    ({"sentinels": ["10.0.0.8"], "sentinel_service": ""}, "state.sentinel_service", "empty"),
    ({"unavailable": "open"}, "state.unavailable", "not one of"),
    ({"timeout_seconds": 0}, "state.timeout_seconds", "out of range"),
])
def test_redis_state_settings_are_checked(state: dict[str, Any], key: str, why: str) -> None:
    one_problem(cfg(state={"backend": "redis", **state}), key, why)


# -- cross-field rules: workers ----------------------------------------------------------------
REDIS_STATE = {"backend": "redis", "redis_url": "redis://10.0.0.7:6379/0"}


def test_workers_take_redis_state() -> None:
    c = config_from_mapping(cfg(server={"workers": 64, "listen": ["10.0.0.1:1812"]},
                                state=REDIS_STATE))
    assert c.server.workers == 64
    assert config_from_mapping(cfg()).server.workers == 1


@pytest.mark.parametrize("state", [None, {"backend": "memory"}])
def test_workers_refuse_memory_state(state: dict[str, Any] | None) -> None:
    p = one_problem(cfg(server={"workers": 2}, state=state), "server.workers",
                    '2 workers need shared state, but [state] backend is "memory"',
                    'backend = "redis"')
    assert "workers = 1" in p.fix


def test_workers_refuse_port_zero() -> None:
    data = cfg(server={"workers": 2, "listen": ["127.0.0.1:1812", "127.0.0.1:0"]},
               state=REDIS_STATE)
    one_problem(data, "server.listen", '"127.0.0.1:0": port 0 would give each worker its own',
                "name the port")
    config_from_mapping(cfg(server={"listen": ["127.0.0.1:0"]}))  # one process: a free port


# -- cross-field rules: policy -----------------------------------------------------------------
def test_group_in_require_and_bypass() -> None:
    data = cfg(primary={"backend": "ldap"}, ldap=LDAP_OK,
               policy={"require_2fa_groups": ["admins", "ops"],
                       "bypass_2fa_groups": ["ops", "service"]})
    one_problem(data, "policy.bypass_2fa_groups", "['ops'] also require 2FA", "not both")


def test_group_overlap_is_case_insensitive_like_membership() -> None:
    # regression: membership compares case-insensitively, the overlap check once did not
    data = cfg(primary={"backend": "ldap"}, ldap=LDAP_OK,
               policy={"require_2fa_groups": ["Admins"], "bypass_2fa_groups": ["admins"]})
    one_problem(data, "policy.bypass_2fa_groups", "also require 2FA")


@pytest.mark.parametrize("groups", ["allow_groups", "require_2fa_groups", "bypass_2fa_groups"])
def test_group_policies_need_a_source_of_groups(groups: str) -> None:
    data = cfg(primary={"backend": "radius"},
               radius_upstream={"servers": ["10.0.0.5"], "secret": GOOD_SECRET},
               policy={groups: ["vpn-users"]})
    one_problem(data, "policy.allow_groups", "need a source of groups")


@pytest.mark.parametrize(
    ("text", "show", "ok"),
    [("x" * 253, False, True), ("x" * 254, False, False), ("é" * 126, False, True),
     ("é" * 127, False, False), ("€" * 84, False, True), ("€" * 85, False, False),
     ("x" * 173, True, True), ("x" * 174, True, False)],
    ids=["253", "254", "252-bytes-utf8", "254-bytes-utf8", "252-bytes-euro", "255-bytes-euro",
         "173-with-id", "174-with-id"],
)
@pytest.mark.parametrize("name", ["start", "waiting"])
def test_challenge_messages_fit_one_reply_message(name: str, text: str, show: bool,
                                                  ok: bool) -> None:
    data = cfg(policy={"show_secsign_id": show, "messages": {name: text}})
    if ok:
        config_from_mapping(data)
    else:
        one_problem(data, f"policy.messages.{name}", "too long for one Reply-Message", "253")


# -- every problem at once, with file, key and fix ---------------------------------------------
def test_every_structural_problem_is_reported_at_once() -> None:
    data = cfg(server={"listn": [], "max_pending": 0},
               policy={"mode": "pushy", "passcodes": "yes", "messages": {"strat": "x"}},
               clients=[client(name=None), "x"],
               logging={"level": "loud"})
    keys = {p.key for p in problems(data)}
    assert keys == {"server.listn", "server.max_pending", "policy.mode", "policy.passcodes",
                    "policy.messages.strat", "clients[0].name", "clients[1]", "logging.level"}


def test_every_cross_field_problem_is_reported_at_once() -> None:
    data = cfg(clients=[client(secret="short"), client(networks=["10.1.0.0/16"])],
               secsign={"servers": ["http://id.example.com"], "push_timeout_seconds": 70},
               policy={"messages": {"start": "x" * 300}},
               state={"backend": "redis", "redis_url": "http://h/0"})
    keys = [p.key for p in problems(data)]
    for key in ("clients[0].secret", "clients[1].name", "clients[1].networks",
                "secsign.push_timeout_seconds", "secsign.servers", "policy.messages.start",
                "state.redis_url"):
        assert key in keys


def test_problems_name_file_key_why_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", """
[server]
max_pending = "many"

[[clients]]
name = "nas"
networks = ["10.0.0.0/8"]
secret = "short"
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems  # cross-field rules wait for the types to be right
    assert problem == Problem(str(path), "server.max_pending",
                              "must be a whole number, not a string",
                              "write max_pending as a whole number")
    assert str(problem) == (f"{path}: server.max_pending: must be a whole number, not a string "
                            "(fix: write max_pending as a whole number)")
    assert str(problem) in str(info.value)


def test_every_message_of_a_multi_problem_error_is_in_its_text() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(cfg(policy={"mode": "x", "failmode": "y"}))
    text = str(info.value)
    assert "policy.mode" in text
    assert "policy.failmode" in text
    assert len(text.splitlines()) == 2


# -- load_config: the file itself ---------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    (p,) = info.value.problems
    assert (p.file, p.key) == (str(tmp_path / "nope.toml"), "-")
    assert "does not exist" in p.why


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (p,) = info.value.problems
    assert "not valid TOML" in p.why
    assert "line 1" in p.why


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[clients]]\nname = "caf\xe9"\n')
    # regression: tomllib raises UnicodeDecodeError here, which once escaped load_config
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("users.toml", "map", "ca.pem", "extra.dict"):
        write(conf / name, "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "home-ca.pem", "")
    path = write(conf / "proxy.toml", f"""
[server]
dictionaries = ["extra.dict", "{conf / 'extra.dict'}"]

[[clients]]
name = "nas"
networks = ["10.0.0.0/8"]
secret = "{GOOD_SECRET}"

[primary]
backend = "file"

[users_file]
path = "users.toml"

[identity]
sources = ["file"]
mapping_file = "./map"

[secsign]
pin_account = "a"
pin_password = "b"
ca_file = "~/home-ca.pem"

[ldap]
ca_file = "ca.pem"
""")
    c = load_config(path)
    assert c.users_file.path == str(conf / "users.toml")
    assert Path(c.identity.mapping_file) == conf / "map"
    assert c.ldap.ca_file == str(conf / "ca.pem")
    assert c.secsign.ca_file == str(tmp_path / "home-ca.pem")
    assert c.server.dictionaries == (str(conf / "extra.dict"), str(conf / "extra.dict"))


def test_relative_config_path_resolves_from_where_it_is(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    write(conf / "users.toml", "")
    write(conf / "proxy.toml", f"""
[[clients]]
name = "nas"
networks = ["10.0.0.0/8"]
secret = "{GOOD_SECRET}"
[users_file]
path = "users.toml"
[secsign]
pin_account = "a"
pin_password = "b"
""")
    monkeypatch.chdir(tmp_path)
    c = load_config("conf/proxy.toml")
    assert c.users_file.path == str(conf / "users.toml")
    assert c.source == "conf/proxy.toml"
