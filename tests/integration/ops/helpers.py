"""Small drivers shared by the operations tests: HTTP to the monitor, metric samples."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.servers import slapd as slapd_server
from tests.servers.slapd import Slapd
from tests.support import free_port


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


def http_port() -> int:
    return free_port(socket.SOCK_STREAM)


def http_get(port: int, path: str, method: str = "GET") -> HttpReply:
    """One request to the monitor on loopback; an HTTP error status is a reply too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return HttpReply(response.status, response.read(),
                             response.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as error:
        return HttpReply(error.code, error.read(), error.headers.get("Content-Type", ""))


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    reply = http_get(port, "/metrics")
    assert reply.status == 200, reply
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def ldap_sections(server: Slapd, **ldap: Any) -> dict[str, Any]:
    """Config sections that make the test slapd the primary backend and identity source."""
    section: dict[str, Any] = {
        "urls": [server.ldap_url], "ca_file": str(server.pki.ca_file),
        "bind_dn": slapd_server.SERVICE_DN, "bind_password": slapd_server.SERVICE_PASSWORD,
        "base_dn": slapd_server.SUFFIX, "user_filter": slapd_server.USER_FILTER,
        "secsign_id_attribute": "secsignId", "timeout_seconds": 1,
    }
    section.update(ldap)
    return {"primary": {"backend": "ldap"}, "identity": {"sources": ["ldap"]},
            "ldap": section}
