"""Configs and one-line drivers shared by the LDAP tests."""

from __future__ import annotations

import asyncio
from typing import Any

from radius_proxy.backends.ldap_directory import LdapDirectory
from radius_proxy.config import LdapConfig, Secret
from radius_proxy.pipeline.ports import AuthRequest, PrimaryResult
from tests.servers import samba as samba_server
from tests.servers import slapd as slapd_server
from tests.servers.samba import SambaDC
from tests.servers.slapd import Slapd


def slapd_config(server: Slapd, **overrides: Any) -> LdapConfig:
    """An LdapConfig for the test slapd over ldap://; keywords replace single fields."""
    values: dict[str, Any] = {
        "urls": (server.ldap_url,),
        "ca_file": str(server.pki.ca_file),
        "bind_dn": slapd_server.SERVICE_DN,
        "bind_password": Secret(slapd_server.SERVICE_PASSWORD),
        "base_dn": slapd_server.SUFFIX,
        "user_filter": slapd_server.USER_FILTER,
        "secsign_id_attribute": "secsignId",
        "timeout_seconds": 2.0,
        "pool_size": 4,
    }
    values.update(overrides)
    return LdapConfig(**values)


def samba_config(dc: SambaDC, **overrides: Any) -> LdapConfig:
    """An LdapConfig for the test Samba AD DC over ldap:// (default AD user filter)."""
    values: dict[str, Any] = {
        "urls": (dc.ldap_url,),
        "ca_file": str(dc.pki.ca_file),
        "bind_dn": samba_server.SERVICE_DN,
        "bind_password": Secret(samba_server.SERVICE_PASSWORD),
        "base_dn": samba_server.BASE_DN,
        "secsign_id_attribute": samba_server.SECSIGN_ATTRIBUTE,
        "timeout_seconds": 3.0,
        "pool_size": 4,
    }
    values.update(overrides)
    return LdapConfig(**values)


def request(username: str, password: str | bytes) -> AuthRequest:
    secret = password.encode() if isinstance(password, str) else password
    return AuthRequest(request_id="test", client="test", client_ip="127.0.0.1",
                       username=username, password=secret)


def authenticate(directory: LdapDirectory, username: str, password: str | bytes) -> PrimaryResult:
    """One authentication, driven by its own event loop."""
    return asyncio.run(directory.authenticate(request(username, password)))
