"""The project's exception tree.

Two families: `PeerError` (someone else misbehaved: a malformed packet, a server that
answers nonsense) and `ConfigError` (we are misconfigured). Expected outcomes, such as a
wrong password or a denied push, are values in the pipeline and never exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass


class RadiusProxyError(Exception):
    """Base of every exception the project raises on purpose."""


class PeerError(RadiusProxyError):
    """A peer sent something we cannot accept."""


class MalformedPacket(PeerError):
    """A RADIUS packet failed the length or attribute sanity checks (RFC 2865 section 3)."""


class BackendError(PeerError):
    """A backend server could not be reached or answered nonsense."""


class StateUnavailable(BackendError):
    """The shared state store (Redis) could not be reached, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem: where it is, what is wrong, and how to fix it."""

    file: str
    key: str
    why: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.why} (fix: {self.fix})"


class ConfigError(RadiusProxyError):
    """The configuration is unusable; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
