"""Filling `service_name` / `service_address` templates from request attributes.

Placeholders are attribute names in snake_case (`{nas_identifier}`, `{calling_station_id}`)
plus `{client}` and `{user_name}`. A missing attribute becomes an empty string: the phone
shows less, the login still works.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from radius_proxy.pipeline.ports import Attributes
from radius_proxy.protocol.dictionary import snake_case

MAX_TEXT = 200


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def fill_template(template: str, attributes: Attributes, extra: Mapping[str, str]) -> str:
    """The template with every placeholder replaced; never raises for a missing name."""
    values = _Values({snake_case(k): str(v[0]) for k, v in attributes.items() if v})
    values.update(extra)
    try:
        text = string.Formatter().vformat(template, (), values)
    except (IndexError, KeyError, ValueError, AttributeError):
        text = template  # config validation keeps these out; never fail a login over text
    return text[:MAX_TEXT]
