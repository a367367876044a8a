"""Reading and validating the TOML configuration.

The loader walks the dataclasses of `config.py`: every key must be a field, every value must
have the field's type and lie in its range or choices, and `X_file` stands for a secret `X`
read from a file. Problems are collected, not raised one by one, so an administrator fixes a
broken file in one pass; then the cross-field rules run (a secret per client, a push that
ends before the NAS gives up, a backend section for the chosen backend).
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import ipaddress
import math
import os
import string
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from radius_proxy.config import DEFAULT_CONFIG_PATH, Config, Secret
from radius_proxy.errors import ConfigError, Problem

MIN_SECRET_LENGTH = 16
MAX_REPLY_MESSAGE = 253


class _Collector:
    """Gathers problems for one file."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base
        self.problems: list[Problem] = []

    def add(self, key: str, why: str, fix: str) -> None:
        self.problems.append(Problem(self.file, key, why, fix))

    def path(self, value: str) -> str:
        """A file name from the config, relative to the config file's folder."""
        if not value:
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else self.base / p)


def default_config_path() -> str:
    return os.environ.get("RADIUS_PROXY_CONFIG", DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and return the configuration, or raise ConfigError with every problem."""
    file = str(path)
    col = _Collector(file, Path(file).resolve().parent)
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([Problem(file, "-", "the file does not exist",
                                   "pass the right file with -c, or create it from "
                                   "etc/radius-proxy.toml")]) from None
    except OSError as exc:
        raise ConfigError([Problem(file, "-", f"cannot read the file: {exc.strerror}",
                                   "check the path and its permissions")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, "-", "not UTF-8 text",
                                   "save the file as UTF-8")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(file, "-", f"not valid TOML: {exc}",
                                   "correct the syntax at the position shown")]) from None
    return config_from_mapping(data, col)


def config_from_mapping(data: Mapping[str, Any], col: _Collector | None = None) -> Config:
    """Build a Config from already-parsed TOML (tests and the embedded demo use this)."""
    col = col or _Collector("<memory>", Path.cwd())
    built = _build(Config, data, "", col)
    if built is not None and not col.problems:
        config: Config = dataclasses.replace(built, source=col.file)
        _check_rules(config, col)
        if not col.problems:
            return config
    raise ConfigError(col.problems)


# --- the generic walk over the dataclasses -------------------------------------------------

def _build(cls: type[Any], table: Any, prefix: str, col: _Collector) -> Any:
    if not isinstance(table, Mapping):
        col.add(prefix.rstrip(".") or "-", "must be a table", f"write it as [{prefix.rstrip('.')}]")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    before = len(col.problems)
    for key, raw in table.items():
        name, from_file = _field_name(key, fields, hints)
        where = prefix + key
        if name is None:
            _unknown_key(where, key, fields, hints, col)
            continue
        if name in values:
            col.add(where, f"{name} is given twice", f"keep either {name} or {name}_file")
            continue
        value = _convert(hints[name], raw, where, col, fields[name].metadata, from_file)
        if value is not None:
            values[name] = value
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in values and not any(
            p.key == prefix + name or p.key.startswith(prefix + name + ".")
            or p.key == prefix + name + "_file" for p in col.problems[before:]
        ):
            secret = hints[name] is Secret
            col.add(prefix + name, "is required",
                    f"add {name}_file = \"/path/to/file\"" if secret else f"add {name} = ...")
    if len(col.problems) > before:
        return None
    return cls(**values)


def _field_name(key: str, fields: Mapping[str, Any], hints: Mapping[str, Any]) -> tuple[str | None,
                                                                                       bool]:
    if key in fields:
        return key, False
    if key.endswith("_file") and hints.get(key[:-5]) is Secret:
        return key[:-5], True
    return None, False


def _unknown_key(where: str, key: str, fields: Mapping[str, Any], hints: Mapping[str, Any],
                 col: _Collector) -> None:
    known = list(fields) + [f"{n}_file" for n in fields if hints[n] is Secret]
    close = difflib.get_close_matches(key, known, n=1)
    fix = f'did you mean "{close[0]}"?' if close else f"remove it; known keys: {', '.join(known)}"
    col.add(where, "unknown key", fix)


def _convert(hint: Any, raw: Any, where: str, col: _Collector, meta: Mapping[str, Any],
             from_file: bool) -> Any:
    if hint is Secret:
        return _secret(raw, where, col, from_file)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), raw, where + ".", col)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _sequence(typing.get_args(hint)[0], raw, where, col, meta)
    value = _scalar(hint, raw, where, col)
    if value is not None:
        _check_range(value, where, col, meta)
        if meta.get("path"):
            value = col.path(value)
    return value


def _scalar(hint: Any, raw: Any, where: str, col: _Collector) -> Any:
    kinds: dict[Any, tuple[tuple[type, ...], str]] = {
        str: ((str,), "a string in quotes"),
        bool: ((bool,), "true or false"),
        int: ((int,), "a whole number"),
        float: ((int, float), "a number"),
    }
    allowed, name = kinds[hint]
    if (isinstance(raw, bool) and hint is not bool) or not isinstance(raw, allowed):
        col.add(where, f"must be {name}, not {_describe(raw)}", f"write {where.rsplit('.', 1)[-1]}"
                f" as {name}")
        return None
    if hint is float and math.isnan(typing.cast(float, raw)):
        col.add(where, "nan is not a number", "write an ordinary number")
        return None
    return float(typing.cast(float, raw)) if hint is float else raw


def _sequence(item: Any, raw: Any, where: str, col: _Collector, meta: Mapping[str, Any]) -> Any:
    if dataclasses.is_dataclass(item):
        if not isinstance(raw, list):
            col.add(where, "must be an array of tables", f"write each entry as [[{where}]]")
            return None
        built = [_build(typing.cast(type[Any], item), t, f"{where}[{i}].", col)
                 for i, t in enumerate(raw)]
        return None if any(b is None for b in built) else tuple(built)
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        col.add(where, f"must be a list of strings, not {_describe(raw)}",
                f'write it as {where.rsplit(".", 1)[-1]} = ["..."]')
        return None
    for v in raw:
        _check_range(v, where, col, meta)
    return tuple(col.path(v) for v in raw) if meta.get("path") else tuple(raw)


def _secret(raw: Any, where: str, col: _Collector, from_file: bool) -> Secret | None:
    if not isinstance(raw, str):
        col.add(where, f"must be a string, not {_describe(raw)}", "quote the value")
        return None
    if not from_file:
        return Secret(raw)
    path = col.path(raw)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        col.add(where, f"cannot read {path}: {reason}",
                "create the file with the secret on one line, readable by the proxy's user")
        return None
    value = text.rstrip("\r\n")
    if not value:
        col.add(where, f"{path} is empty", "write the secret into the file")
        return None
    return Secret(value)


def _check_range(value: Any, where: str, col: _Collector, meta: Mapping[str, Any]) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("min"), meta.get("max")
    if choices is not None and value not in choices:
        col.add(where, f'"{value}" is not one of {", ".join(choices)}', f"use one of {choices}")
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        col.add(where, f"{value} is out of range", f"use a value from {lo} to {hi}")


def _describe(raw: Any) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(raw), type(raw).__name__)


# --- cross-field rules -----------------------------------------------------------------------

def _check_rules(c: Config, col: _Collector) -> None:
    _check_listen(c, col)
    _check_clients(c, col)
    _check_backends(c, col)
    _check_policy(c, col)
    if c.logging.destination == "file" and not c.logging.file:
        col.add("logging.file", 'destination "file" needs a file',
                'add file = "/var/log/radius-proxy/radius-proxy.log"')
    if c.state.backend == "redis":
        _check_redis(c, col)
    if c.server.workers > 1:
        _check_workers(c, col)


def _check_workers(c: Config, col: _Collector) -> None:
    """Several worker processes are several instances on one host: the same rules apply.

    A challenge answered on another worker, one push per user, the push limit and
    remembered logins all live in the state store, so per-process memory would quietly
    break them; and port 0 would give each worker a port of its own.
    """
    if c.state.backend != "redis":
        col.add("server.workers", f"{c.server.workers} workers need shared state, but "
                f'[state] backend is "{c.state.backend}"',
                'set [state] backend = "redis" (and redis_url), or workers = 1')
    for addr in c.server.listen:
        if addr.endswith(":0"):
            col.add("server.listen", f'"{addr}": port 0 would give each worker its own port',
                    'name the port, e.g. "127.0.0.1:1812", or set workers = 1')


def _check_redis(c: Config, col: _Collector) -> None:
    import importlib.util

    s = c.state
    if importlib.util.find_spec("redis") is None:
        col.add("state.backend", "the redis package is not installed",
                "pip install 'radius-proxy[redis]', or use backend = \"memory\"")
    try:
        url = urllib.parse.urlsplit(s.redis_url)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        col.add("state.redis_url", f"is not a valid URL: {exc}", 'write "redis://10.0.0.7:6379/0"')
        return
    if url.scheme not in ("redis", "rediss", "unix"):
        col.add("state.redis_url", f'"{url.scheme}" is not redis, rediss or unix',
                'write "redis://host:6379/0", or "rediss://" for TLS')
    if url.password is not None and s.redis_password:
        col.add("state.redis_password", "a password is also in redis_url",
                "keep only redis_password_file and remove the password from the URL")
    if s.ca_file:
        _need_file(s.ca_file, "state.ca_file", col)
        if url.scheme != "rediss":
            col.add("state.ca_file", "is used only with TLS", 'write redis_url = "rediss://..."')
    for text in s.sentinels:
        try:
            parse_hostport(text, 26379)
        except ValueError as exc:
            col.add("state.sentinels", str(exc), 'write "10.0.0.7:26379"')
    if s.sentinels and not s.sentinel_service:
        col.add("state.sentinel_service", "is empty", 'write sentinel_service = "mymaster"')
    if not s.key_prefix:
        col.add("state.key_prefix", "is empty", 'write key_prefix = "radius-proxy:"')


def parse_hostport(text: str, default_port: int | None = None,
                   allow_zero: bool = False) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raises ValueError with a readable message.

    Port 0 (a free port, for tests) is allowed only where we listen.
    """
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        sep = ":" if port else ""
    elif not sep or ":" in host:
        host, port = text, ""
    if not host:
        raise ValueError(f'"{text}" has no host')
    if not port:
        if default_port is None:
            raise ValueError(f'"{text}" has no port')
        return host, default_port
    if not port.isdigit() or not (0 if allow_zero else 1) <= int(port) < 65536:
        raise ValueError(f'"{text}" has an invalid port')
    return host, int(port)


def _check_listen(c: Config, col: _Collector) -> None:
    if not c.server.listen:
        col.add("server.listen", "is empty", 'add an address, e.g. ["127.0.0.1:1812"]')
    for addr in c.server.listen:
        try:
            host, _ = parse_hostport(addr, allow_zero=True)
            ipaddress.ip_address(host)
        except ValueError as exc:
            col.add("server.listen", f"{exc}: need an IP address and a port",
                    'write "127.0.0.1:1812" or "[::1]:1812"')
    if c.http.listen:
        try:
            host, _ = parse_hostport(c.http.listen, allow_zero=True)
            ipaddress.ip_address(host)
        except ValueError as exc:
            col.add("http.listen", str(exc), 'write "127.0.0.1:9812", or "" to disable')


def _check_clients(c: Config, col: _Collector) -> None:
    if not c.clients:
        col.add("clients", "no client is configured, so every request would be dropped",
                "add a [[clients]] table with name, networks and secret_file")
    seen_names: set[str] = set()
    seen_nets: dict[Any, str] = {}
    for i, cl in enumerate(c.clients):
        key = f"clients[{i}]"
        if cl.name in seen_names:
            col.add(f"{key}.name", f'"{cl.name}" is used twice', "give every client its own name")
        seen_names.add(cl.name)
        if len(cl.secret.value) < MIN_SECRET_LENGTH:
            col.add(f"{key}.secret", f"is shorter than {MIN_SECRET_LENGTH} characters",
                    "generate one: openssl rand -base64 24")
        if not cl.networks:
            col.add(f"{key}.networks", "is empty", 'add a network, e.g. ["10.0.0.0/8"]')
        for net_text in cl.networks:
            try:
                net = ipaddress.ip_network(net_text, strict=False)
            except ValueError:
                col.add(f"{key}.networks", f'"{net_text}" is not a network',
                        'write "10.1.0.0/16", "192.0.2.7" or "::1/128"')
                continue
            if net in seen_nets:
                col.add(f"{key}.networks", f"{net} is also in client {seen_nets[net]}",
                        "list every network in one client only")
            seen_nets[net] = cl.name
        for fld in ("service_name", "service_address"):
            _check_template(getattr(cl, fld), f"{key}.{fld}", col)
        budget = c.secsign.push_timeout_seconds
        if budget >= cl.nas_timeout_seconds:
            col.add("secsign.push_timeout_seconds",
                    f"{budget:g} s is not below the NAS timeout of client {cl.name} "
                    f"({cl.nas_timeout_seconds:g} s): the NAS would give up first",
                    "lower push_timeout_seconds or raise the client's nas_timeout_seconds")


def _check_template(template: str, key: str, col: _Collector) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        col.add(key, f"is not a valid template: {exc}", "use {name} placeholders, {{ for a brace")
        return
    for name in names:
        if not name.isidentifier():
            col.add(key, f'"{{{name}}}" is not a placeholder name',
                    "use attribute names in snake_case, e.g. {nas_identifier}")
            return
    try:
        string.Formatter().vformat(template, (), collections.defaultdict(str))
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        col.add(key, f"cannot be filled: {exc}", "use plain {name} placeholders")


def _check_backends(c: Config, col: _Collector) -> None:
    backend = c.primary.backend
    if backend == "ldap" or "ldap" in c.identity.sources:
        _need(c.ldap.urls, "ldap.urls", "add the directory's URLs, e.g. [\"ldaps://dc1\"]", col)
        _need(c.ldap.base_dn, "ldap.base_dn", 'add base_dn = "DC=example,DC=com"', col)
        if "{username}" not in c.ldap.user_filter:
            col.add("ldap.user_filter", "has no {username} placeholder",
                    'write e.g. "(&(objectClass=user)(sAMAccountName={username}))"')
        for url in c.ldap.urls:
            if not url.startswith(("ldap://", "ldaps://")):
                col.add("ldap.urls", f'"{url}" is not an ldap:// or ldaps:// URL',
                        'write "ldaps://dc1.example.com"')
        if c.ldap.bind_dn and not c.ldap.bind_password:
            col.add("ldap.bind_password", "the service account has no password",
                    'add bind_password_file = "/etc/radius-proxy/secrets/ldap"')
    if backend == "radius":
        _need(c.radius_upstream.servers, "radius_upstream.servers",
              'add servers = ["10.0.0.5:1812"]', col)
        _need(c.radius_upstream.secret, "radius_upstream.secret",
              'add secret_file = "/etc/radius-proxy/secrets/upstream"', col)
        for s in c.radius_upstream.servers:
            try:
                parse_hostport(s, 1812)
            except ValueError as exc:
                col.add("radius_upstream.servers", str(exc), 'write "10.0.0.5:1812"')
    if backend == "file" or ("file" in c.identity.sources and c.users_file.path):
        _need(c.users_file.path, "users_file.path",
              'add path = "/etc/radius-proxy/users.toml"', col)
        _need_file(c.users_file.path, "users_file.path", col)
    if "file" in c.identity.sources and c.identity.mapping_file:
        _need_file(c.identity.mapping_file, "identity.mapping_file", col)
    for key, path in (("ldap.ca_file", c.ldap.ca_file), ("secsign.ca_file", c.secsign.ca_file)):
        if path:
            _need_file(path, key, col)
    for path in c.server.dictionaries:
        _need_file(path, "server.dictionaries", col)
    _check_secsign(c, col)


def _check_secsign(c: Config, col: _Collector) -> None:
    _need(c.secsign.servers, "secsign.servers", 'add servers = ["https://httpapi.secsign.com"]',
          col)
    for url in c.secsign.servers:
        if not url.startswith(("https://", "http://")):
            col.add("secsign.servers", f'"{url}" is not an http(s) URL',
                    'write "https://httpapi.secsign.com"')
    if c.secsign.api == "rest" and not c.secsign.pin_account:
        col.add("secsign.pin_account", "the REST API needs a PIN account",
                'add pin_account = "..." and pin_password_file, or use api = "legacy"')
    if c.secsign.api == "rest" and c.secsign.pin_account and not c.secsign.pin_password:
        col.add("secsign.pin_password", "the PIN account has no password",
                'add pin_password_file = "/etc/radius-proxy/secrets/secsign"')
    for url in c.secsign.servers:
        try:
            host = urllib.parse.urlsplit(url).hostname or ""
        except ValueError:
            col.add("secsign.servers", f'"{url}" is not a valid URL',
                    'write "https://httpapi.secsign.com"')
            continue
        if url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
            col.add("secsign.servers", f'"{url}" is plain HTTP to a remote host',
                    "use https:// (plain http is allowed only on loopback, for the simulator)")
    if c.secsign.poll_interval_seconds >= c.secsign.push_timeout_seconds:
        col.add("secsign.poll_interval_seconds", "is not below push_timeout_seconds",
                "poll more often than the push lasts")


def _check_policy(c: Config, col: _Collector) -> None:
    for name in ("start", "waiting"):
        text: str = getattr(c.policy.messages, name)
        if len(text.encode("utf-8")) > MAX_REPLY_MESSAGE - 80 * c.policy.show_secsign_id:
            col.add(f"policy.messages.{name}", "is too long for one Reply-Message",
                    f"keep it under {MAX_REPLY_MESSAGE} bytes (minus 80 with show_secsign_id)")
    overlap = {g.casefold() for g in c.policy.require_2fa_groups} & \
        {g.casefold() for g in c.policy.bypass_2fa_groups}
    if overlap:
        col.add("policy.bypass_2fa_groups", f"{sorted(overlap)} also require 2FA",
                "list a group in require_2fa_groups or bypass_2fa_groups, not both")
    groups_known = c.primary.backend in ("ldap", "file") or "ldap" in c.identity.sources
    if (c.policy.allow_groups or c.policy.require_2fa_groups or c.policy.bypass_2fa_groups) and \
            not groups_known:
        col.add("policy.allow_groups", "group policies need a source of groups",
                'use primary.backend "ldap" or "file", or identity source "ldap"')


def _need(value: object, key: str, fix: str, col: _Collector) -> None:
    if not value:
        col.add(key, "is required by the chosen backend", fix)


def _need_file(path: str, key: str, col: _Collector) -> None:
    if path and not os.access(path, os.R_OK):
        col.add(key, f"cannot read {path}", "check the path and its permissions")

