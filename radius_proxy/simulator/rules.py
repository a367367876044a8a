"""What the simulated phone does with a new session: ``PATTERN=ACTION[:SECONDS]`` rules.

Rules exist so that a test (or a demo) can script the user's answer per SecSign ID without
clicking anything: ``alice=approve:0.5`` makes every push to ``alice`` succeed half a second
later, ``*.frozen=frozen`` makes matching IDs refuse to start a session at all.

An ``unknown`` or ``frozen`` rule makes the server refuse the ID itself; those refusals
(``Refusal``, with the ``errorcode`` of secsign-id-api.md section 3.2) live here too.

Rules of this module: no I/O, no clock; text in, values out.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Actions that play out after SECONDS (default 1).
TIMED_ACTIONS = frozenset({"approve", "deny", "expire"})
#: Actions that take no SECONDS: they decide at once (unknown, frozen) or wait for a click.
UNTIMED_ACTIONS = frozenset({"manual", "unknown", "frozen"})
ACTIONS = TIMED_ACTIONS | UNTIMED_ACTIONS

DEFAULT_SECONDS = 1.0
_SECSIGNID = re.compile(r"[\w@.\-]{1,255}", re.ASCII)


@dataclass(frozen=True)
class Refusal:
    """The server refuses the SecSign ID itself; ``errorcode`` as in section 3.2."""

    errorcode: int
    message: str


UNKNOWN_ID = Refusal(20000, "A SecSign ID does not exist with that name.")
FROZEN_ID = Refusal(
    20006,
    "This SecSign ID is frozen due to concurrent login requests. The user needs to reactivate "
    "his account first. This can be done by tapping on the right SecSign ID at the smartphone.",
)


def normalize_secsignid(text: str) -> str | None:
    """Trim and lower-case as the clients do; None when it cannot be a SecSign ID at all."""
    candidate = text.strip().lower()
    return candidate if _SECSIGNID.fullmatch(candidate) else None


@dataclass(frozen=True)
class Rule:
    """One scripted behaviour; ``seconds`` is 0.0 for the untimed actions."""

    pattern: str
    action: str
    seconds: float

    def matches(self, secsignid: str) -> bool:
        """Glob match, case-insensitive because the server lower-cases every SecSign ID."""
        return fnmatch.fnmatchcase(secsignid.lower(), self.pattern.lower())

    def refusal(self) -> Refusal | None:
        """What the server answers instead of a session when this rule says the ID is bad."""
        return {"unknown": UNKNOWN_ID, "frozen": FROZEN_ID}.get(self.action)

    def __str__(self) -> str:
        if self.action in UNTIMED_ACTIONS:
            return f"{self.pattern}={self.action}"
        return f"{self.pattern}={self.action}:{self.seconds:g}"


DEFAULT_RULES: tuple[Rule, ...] = (Rule("*", "manual", 0.0),)


def parse_rule(text: str) -> Rule:
    """Parse ``PATTERN=ACTION[:SECONDS]``; raise ValueError naming what is wrong and the fix.

    The message is shown to an administrator on the command line, so it quotes the input.
    """
    pattern, sep, rest = text.strip().rpartition("=")
    if not sep:
        raise ValueError(
            f"rule {text!r}: expected PATTERN=ACTION[:SECONDS], e.g. 'alice=approve:2'"
        )
    pattern = pattern.strip()
    if not pattern:
        raise ValueError(f"rule {text!r}: the PATTERN before '=' is empty (use '*' for every ID)")
    action_text, colon, seconds_text = rest.partition(":")
    action = action_text.strip().lower()
    if action not in ACTIONS:
        known = "|".join(sorted(ACTIONS))
        raise ValueError(f"rule {text!r}: unknown ACTION {action_text.strip()!r}, expected {known}")
    if action in UNTIMED_ACTIONS:
        if colon:
            raise ValueError(f"rule {text!r}: ACTION {action!r} takes no SECONDS")
        return Rule(pattern, action, 0.0)
    if not colon:
        return Rule(pattern, action, DEFAULT_SECONDS)
    return Rule(pattern, action, _parse_seconds(text, seconds_text))


def _parse_seconds(text: str, seconds_text: str) -> float:
    try:
        seconds = float(seconds_text)
    except ValueError:
        raise ValueError(
            f"rule {text!r}: SECONDS {seconds_text!r} is not a number (fractions like 0.5 are fine)"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"rule {text!r}: SECONDS must be a finite number >= 0")
    return seconds


def parse_rules(texts: Sequence[str]) -> tuple[Rule, ...]:
    """Parse several rules, keeping their order (the first match wins)."""
    return tuple(parse_rule(text) for text in texts)


def find_rule(rules: Sequence[Rule], secsignid: str) -> Rule:
    """The first rule matching ``secsignid``; ``*=manual`` when none does."""
    for rule in rules:
        if rule.matches(secsignid):
            return rule
    return DEFAULT_RULES[0]
