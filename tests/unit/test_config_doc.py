"""docs/configuration.md is generated from the config model and cannot drift from it."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from typing import Any

import pytest

from radius_proxy import config_doc
from radius_proxy.config import Config, Secret
from tests.support import REPO

DOC = REPO / "docs" / "configuration.md"


def _leaf_keys(cls: type[Any], prefix: str) -> list[tuple[str, str, bool]]:
    """(table, key, is_secret) for every key of the model, walked independently of the
    generator so a key it skipped would show."""
    out: list[tuple[str, str, bool]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            out.extend(_leaf_keys(typing.get_args(hint)[0], f.name))
        elif dataclasses.is_dataclass(hint) and hint is not Secret:
            out.extend(_leaf_keys(typing.cast(type[Any], hint),
                                  f"{prefix}.{f.name}" if prefix else f.name))
        else:
            out.append((prefix, f.name, hint is Secret))
    return out


def _tables(text: str) -> dict[str, str]:
    """Each `## [table]` heading -> the text up to the next heading."""
    parts = re.split(r"^## `\[\[?([a-z_.]+)\]\]?`$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == config_doc.render(), (
        "docs/configuration.md is stale: run "
        "`python -m radius_proxy.config_doc > docs/configuration.md`")


def test_every_config_key_is_documented() -> None:
    tables = _tables(config_doc.render())
    keys = _leaf_keys(Config, "")
    assert len(keys) > 60
    for table, key, secret in keys:
        assert table in tables, f"[{table}] has no section"
        row = f"| `{key}` or `{key}_file` |" if secret else f"| `{key}` |"
        assert row in tables[table], f"{table}.{key} is not documented"
    documented = sum(len(re.findall(r"^\| `", body, re.MULTILINE)) for body in tables.values())
    assert documented == len(keys), "the reference lists a key the model does not have"


def test_every_key_has_a_description() -> None:
    for section in config_doc.sections():
        for key in section.keys:
            assert key.doc.strip(), f"{section.name}.{key.name} has no doc line in config.py"


@pytest.mark.parametrize("value", [30.0, 0.05, 1_000_000, 1, True, "a\"b", ("x", "y"), ()])
def test_defaults_are_written_as_toml(value: Any) -> None:
    parsed = tomllib.loads(f"v = {config_doc.toml_value(value)}")["v"]
    assert parsed == (list(value) if isinstance(value, tuple) else value)


def test_every_default_is_valid_toml() -> None:
    for section in config_doc.sections():
        for key in section.keys:
            if key.default.startswith("`"):
                tomllib.loads(f"v = {key.default.strip('`')}")
