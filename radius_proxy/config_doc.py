"""Generate docs/configuration.md from the configuration model in `config.py`.

The reference is written by walking the same frozen dataclasses and field metadata the
loader validates against (key, type, default, range or choices, doc line), so it cannot
drift from the code: `tests/unit/test_config_doc.py` fails when the committed file differs
from this module's output. Regenerate with

    python -m radius_proxy.config_doc > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Iterator
from typing import Any

from radius_proxy.config import Config, Secret

HEADER = """\
# Configuration reference

<!-- Generated from radius_proxy/config.py by `python -m radius_proxy.config_doc >
docs/configuration.md`. Do not edit by hand: change the field's metadata and regenerate. -->

radius-proxy reads one TOML file: `/etc/radius-proxy/radius-proxy.toml`, another one named
with `-c FILE`, or `$RADIUS_PROXY_CONFIG`. `radius-proxy check-config -c FILE` validates it
and lists every problem at once, each with its file, key and fix. `etc/radius-proxy.toml`
in the source tree is a commented example with every key.

Rules that hold for every key:

- **Unknown keys are an error.** A misspelt security setting would otherwise be silently
  ignored; the error names the closest known key.
- **Secrets** (type *secret* below) can be given inline as `X = "value"` or, better, as
  `X_file = "/path"`: the file's content without its final line break. Keep such files
  readable by the proxy's user only (mode 0600 or 0640). A secret never reaches a log line.
- **Paths** (type *path*) are relative to the folder of the configuration file.
- **Durations** carry their unit in the key (`_seconds`, `_minutes`); fractions are allowed.
- **Reload:** SIGHUP applies `[[clients]]` (networks, secrets, templates, timeouts) and
  `[policy]`; the other sections take a restart, and the `reloaded` log line names them.

Rules across keys (checked at start and by `check-config`):

- `secsign.push_timeout_seconds` must be below every client's `nas_timeout_seconds`, and
  `secsign.poll_interval_seconds` below `push_timeout_seconds`.
- Every client has a secret of at least 16 characters, a unique name, at least one network,
  and a network belongs to one client only.
- `primary.backend = "ldap"` or identity source `"ldap"` needs `ldap.urls` and
  `ldap.base_dn` (and `ldap.bind_password` when `ldap.bind_dn` is set);
  `"radius"` needs `radius_upstream.servers` and `radius_upstream.secret`; `"file"` needs a
  readable `users_file.path`.
- `secsign.api = "rest"` needs `secsign.pin_account` and `secsign.pin_password`; plain
  `http://` ID servers are accepted on loopback only (the simulator).
- Group policies (`allow_groups`, `require_2fa_groups`, `bypass_2fa_groups`) need a source
  of groups: primary backend `ldap` or `file`, or identity source `ldap`; a group cannot be
  both in `require_2fa_groups` and `bypass_2fa_groups`.
- `logging.destination = "file"` needs `logging.file`.
"""

_SCALARS = {str: "string", bool: "boolean", int: "integer", float: "number"}

#: A few words per table beyond its one-line doc: what uses it, and how it fits together.
NOTES = {
    "server": "Replies leave from the socket a request came to; on a host with several "
              "addresses, list them rather than `0.0.0.0`.",
    "clients": "The longest matching network wins; a request from an address in no "
               "network is dropped silently (and counted). Example:\n\n"
               "```toml\n[[clients]]\nname = \"vpn\"\nnetworks = [\"10.20.0.0/24\"]\n"
               "secret_file = \"/etc/radius-proxy/secrets/vpn\"\n"
               "nas_timeout_seconds = 60\n```",
    "primary": "`ldap`: search the user, then bind as the user; `radius`: ask an upstream "
               "RADIUS server (NPS, FreeRADIUS); `file`: the users file; `none`: the push "
               "alone decides (second step only).",
    "ldap": "Used by primary backend `ldap` and by identity source `ldap`.",
    "radius_upstream": "Used by primary backend `radius`.",
    "users_file": "Used by primary backend `file`. Each user is a `[users.NAME]` table with "
                  "`password` (the output of `radius-proxy hash-password`; plain text is "
                  "refused), and optionally `secsign_id` and `groups`.",
    "identity": "Sources are asked in order; the first SecSign ID found wins, groups from "
                "every entry found count.",
    "secsign": "The SecSign ID server: the cloud servers, or an on-premise one.",
    "policy": "Checked in this order: `allow_groups`, `bypass_2fa_groups`, "
              "`require_2fa_groups`, `no_secsign_id`; then a remembered login, the push "
              "limit, and the push or passcode.",
    "state": "Where challenges, remembered logins and push counts are kept.",
    "logging": "`stdout` suits systemd's journal and containers.",
    "http": "`GET /metrics`, `/healthz`, `/readyz` (docs/operations.md). There is no "
            "authentication: keep it on loopback or a management network.",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    """One documented key: where it lives, and the columns of its table row."""

    section: str
    name: str
    type: str
    default: str
    allowed: str
    doc: str


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    """A TOML table (`[name]`) or array of tables (`[[name]]`) and its keys."""

    name: str
    array: bool
    doc: str
    keys: tuple[Key, ...]


def sections(root: type[Any] = Config) -> list[Section]:
    """Every table of the configuration, in the order of the model."""
    found: list[Section] = []
    hints = typing.get_type_hints(root)
    for f in dataclasses.fields(root):
        if f.name == "source":
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            found.extend(_walk(item, f.name, True, f.metadata.get("doc", "")))
        else:
            found.extend(_walk(hint, f.name, False, f.metadata.get("doc", "")))
    return found


def _walk(cls: type[Any], name: str, array: bool, doc: str) -> Iterator[Section]:
    hints = typing.get_type_hints(cls)
    keys: list[Key] = []
    nested: list[tuple[type[Any], str, str]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) and hint is not Secret:
            nested.append((typing.cast(type[Any], hint), f"{name}.{f.name}",
                           f.metadata.get("doc", "")))
            continue
        keys.append(_key(name, f, hint))
    yield Section(name, array, doc, tuple(keys))
    for cls_, sub, sub_doc in nested:
        yield from _walk(cls_, sub, False, sub_doc)


def _key(section: str, f: dataclasses.Field[Any], hint: Any) -> Key:
    meta = f.metadata
    doc = str(meta.get("doc", ""))
    if hint is Secret:
        return Key(section, f"{f.name}` or `{f.name}_file", "secret", _default(f), "",
                   doc)
    path = bool(meta.get("path"))
    if typing.get_origin(hint) is tuple:
        kind = "list of paths" if path else f"list of {_SCALARS[typing.get_args(hint)[0]]}s"
    else:
        kind = "path" if path else _SCALARS[hint]
    return Key(section, f.name, kind, _default(f), _allowed(meta, hint), doc)


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    return f"`{toml_value(value)}`" if not isinstance(value, Secret) or value else "not set"


def toml_value(value: Any) -> str:
    """A default as it would be written in the file."""
    if isinstance(value, Secret):
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def number(value: float) -> str:
    """30.0 -> "30", 0.05 -> "0.05", 1e6 -> "1000000": as an administrator writes it."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _allowed(meta: typing.Mapping[str, Any], hint: Any) -> str:
    choices = meta.get("choices")
    if choices:
        listed = " \\| ".join(f"`{c}`" for c in choices)
        return f"each one of {listed}" if typing.get_origin(hint) is tuple else listed
    lo: float | None = meta.get("min")
    hi: float | None = meta.get("max")
    if lo is not None and hi is not None:
        return f"{number(lo)} to {number(hi)}"
    if lo is not None:
        return f">= {number(lo)}"
    if hi is not None:
        return f"<= {number(hi)}"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole reference, as Markdown."""
    out = [HEADER]
    for section in sections():
        title = f"[[{section.name}]]" if section.array else f"[{section.name}]"
        out.append(f"\n## `{title}`\n")
        if section.doc:
            out.append(f"{section.doc[0].upper()}{section.doc[1:]}."
                       + (" One table per entry." if section.array else "") + "\n")
        if section.name in NOTES:
            out.append(NOTES[section.name] + "\n")
        out.append("| key | type | default | allowed | description |")
        out.append("|---|---|---|---|---|")
        for key in section.keys:
            out.append(f"| `{key.name}` | {key.type} | {_cell(key.default)} | "
                       f"{key.allowed} | {_cell(key.doc)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
