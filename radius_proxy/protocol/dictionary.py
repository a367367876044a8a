"""The RADIUS dictionary the proxy loads: our own file, plus any the site adds.

pyrad cannot parse Debian's full FreeRADIUS dictionary tree, so the project ships its own
(`dictionaries/dictionary`, packaged as `radius_proxy/dictionaries/dictionary`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from pyrad.dictionary import Dictionary

_PACKAGED = Path(__file__).resolve().parent.parent / "dictionaries" / "dictionary"
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "dictionaries" / "dictionary"


def default_dictionary_path() -> Path:
    """The shipped dictionary: inside the wheel, or at the top of a source checkout."""
    return _PACKAGED if _PACKAGED.exists() else _SOURCE_TREE


@functools.lru_cache(maxsize=8)
def load_dictionary(extra: Sequence[str] = ()) -> Dictionary:
    """Our dictionary plus the site's extra files; read-only after loading, so shared."""
    return Dictionary(str(default_dictionary_path()), *[str(p) for p in extra])


@functools.lru_cache(maxsize=1024)
def snake_case(attribute_name: str) -> str:
    """"NAS-Identifier" -> "nas_identifier", the form used in templates and logs.

    Remembered: the names come from the dictionary, and every push asks for them again.
    """
    return attribute_name.lower().replace("-", "_")
