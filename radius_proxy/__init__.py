"""radius-proxy: SecSign ID push two-factor authentication in front of anything RADIUS."""

from __future__ import annotations

__version__ = "0.1.0"
