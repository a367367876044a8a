"""Session-wide directories for the LDAP tests: one slapd, one Samba AD DC (started on use).

Each server is expensive only once (Samba's provisioning takes several seconds), so each
lives for the whole session; a test that stops a directory makes its own slapd instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from radius_proxy.backends.ldap_directory import LdapDirectory
from radius_proxy.config import LdapConfig
from tests.servers.samba import SambaDC
from tests.servers.slapd import Slapd


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def samba(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    dc = SambaDC(tmp_path_factory.mktemp("samba"))
    try:
        dc.start()
        yield dc
    finally:
        dc.stop()


@pytest.fixture
def make_directory() -> Iterator[Callable[[LdapConfig], LdapDirectory]]:
    """LdapDirectory objects that are closed after the test."""
    made: list[LdapDirectory] = []

    def make(config: LdapConfig) -> LdapDirectory:
        directory = LdapDirectory(config)
        made.append(directory)
        return directory

    yield make
    for directory in made:
        asyncio.run(directory.close())
