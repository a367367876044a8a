"""Filling `service_name` / `service_address` templates from request attributes.

Placeholders are attribute names in snake_case (`{nas_identifier}`, `{calling_station_id}`)
plus `{client}` and `{user_name}`. A missing attribute becomes an empty string: the phone
shows less, the login still works.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping, Sequence

from radius_proxy.pipeline.ports import Attributes
from radius_proxy.protocol.dictionary import snake_case

MAX_TEXT = 200

#: A template split into (literal text, placeholder name or None) pairs.
_Parts = tuple[tuple[str, str | None], ...]


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def fill_templates(templates: Sequence[str], attributes: Attributes,
                   extra: Mapping[str, str]) -> tuple[str, ...]:
    """Several templates of one request (a push has two), its values gathered once."""
    values = _Values({snake_case(k): str(v[0]) for k, v in attributes.items() if v})
    values.update(extra)
    return tuple(_fill(template, values) for template in templates)


def _fill(template: str, values: _Values) -> str:
    parts = _compile(template)
    if parts is None:
        return _format(template, values)
    return "".join(literal + values[name] if name is not None else literal
                   for literal, name in parts)[:MAX_TEXT]


@functools.lru_cache(maxsize=256)
def _compile(template: str) -> _Parts | None:
    """The template parsed once (there are two per client); None when it needs the whole
    `string.Formatter` (format specs, conversions, indexing, positional fields)."""
    parts: list[tuple[str, str | None]] = []
    try:
        for literal, name, spec, conversion in string.Formatter().parse(template):
            if name is not None and (spec or conversion or not name.isidentifier()):
                return None
            parts.append((literal, name))
    except ValueError:
        return None
    return tuple(parts)


def _format(template: str, values: _Values) -> str:
    try:
        text = string.Formatter().vformat(template, (), values)
    except (IndexError, KeyError, ValueError, AttributeError):
        text = template  # config validation keeps these out; never fail a login over text
    return text[:MAX_TEXT]
