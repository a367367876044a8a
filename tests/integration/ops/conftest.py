"""The session's slapd, shared with the LDAP tests' fixture definition (started on use)."""

from __future__ import annotations

from tests.integration.ldap.conftest import slapd

__all__ = ["slapd"]
