"""Real RADIUS clients for the tests: FreeRADIUS's radclient, and pam_radius_auth via pamtester.

Both are the programs administrators point at the proxy, so a test that passes through them
shows the proxy working with what sites really run.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import require_binary, require_file, unavailable

PAM_MODULE = "/lib/x86_64-linux-gnu/security/pam_radius_auth.so"


@dataclass
class RadclientResult:
    """What radclient printed: the reply code name ("Access-Accept"), attributes, raw output."""

    returncode: int
    code: str | None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    output: str = ""

    @property
    def no_reply(self) -> bool:
        return self.code is None


_RECEIVED = re.compile(r"Received (\S+) Id \d+ from")
_ATTR = re.compile(r"^\s+([A-Za-z0-9-]+) = (.*)$")


def radclient(address: str, secret: str, attributes: Sequence[str] | str, *,
              command: str = "auth", message_authenticator: bool = True, retries: int = 1,
              timeout: float = 2.0, extra_args: Sequence[str] = ()) -> RadclientResult:
    """Send one request with radclient and parse its verbose output.

    `attributes` are radclient input lines ("User-Name = alice"); with
    `message_authenticator`, `Message-Authenticator = 0x00` is added, which is how radclient
    3.2.1 is told to sign the request.
    """
    binary = require_binary("radclient")
    lines = [attributes] if isinstance(attributes, str) else list(attributes)
    if message_authenticator:
        lines.append("Message-Authenticator = 0x00")
    proc = subprocess.run(
        [binary, "-x", "-r", str(retries), "-t", str(timeout), *extra_args, address, command,
         secret],
        input="\n".join(lines) + "\n", capture_output=True, text=True,
        timeout=(retries + 1) * timeout + 10, check=False,
    )
    return parse_radclient(proc.returncode, proc.stdout + proc.stderr)


def parse_radclient(returncode: int, output: str) -> RadclientResult:
    result = RadclientResult(returncode, None, output=output)
    in_reply = False
    for line in output.splitlines():
        m = _RECEIVED.search(line)
        if m:
            result.code, in_reply = m.group(1), True
            result.attributes = {}
            continue
        if line.startswith("Sent "):
            in_reply = False
        a = _ATTR.match(line)
        if in_reply and a:
            result.attributes.setdefault(a.group(1), []).append(a.group(2).strip().strip('"'))
    return result


@dataclass
class PamService:
    """A PAM service file under /etc/pam.d that runs pam_radius_auth against given servers."""

    name: str
    conf: Path

    def authenticate(self, user: str, answers: Sequence[str], *, rhost: str = "198.51.100.7",
                     timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """Run pamtester; each answer is typed at one prompt (password, then challenges)."""
        binary = require_binary("pamtester")
        return subprocess.run(
            [binary, "-v", "-I", f"rhost={rhost}", self.name, user, "authenticate"],
            input="".join(a + "\n" for a in answers), capture_output=True, text=True,
            timeout=timeout, check=False,
        )


@contextlib.contextmanager
def pam_service(workdir: Path, servers: Sequence[tuple[str, str, int]],
                options: str = "") -> Iterator[PamService]:
    """Create /etc/pam.d/<random name> for pam_radius_auth and remove it afterwards.

    `servers` are (host:port, secret, timeout seconds) lines of pam_radius_auth.conf;
    `options` are added to the module line (e.g. "prompt_attribute retry=2").
    """
    require_file(PAM_MODULE)
    require_binary("pamtester")
    if os.geteuid() != 0:

        unavailable("pamtester needs root to write /etc/pam.d")
    name = f"radius-proxy-test-{uuid.uuid4().hex[:8]}"
    conf = workdir / f"{name}.conf"
    conf.write_text("".join(f"{a}\t{s}\t{t}\n" for a, s, t in servers))
    conf.chmod(0o600)
    service = Path("/etc/pam.d") / name
    service.write_text(
        f"auth required pam_radius_auth.so conf={conf} {options}\n"
        "account required pam_permit.so\n"
    )
    try:
        yield PamService(name, conf)
    finally:
        service.unlink(missing_ok=True)


def build_request(secret: str, user: str, password: str, *, message_authenticator: bool = True,
                  proxy_states: Sequence[bytes] = (), identifier: int = 7,
                  extra: Sequence[tuple[str, object]] = ()) -> tuple[bytes, Any]:
    """Raw Access-Request bytes built with pyrad (and the packet, to verify the reply)."""
    from pyrad import packet as rp

    from radius_proxy.protocol.dictionary import load_dictionary
    from radius_proxy.protocol.packet import hide_password

    pkt = rp.AuthPacket(id=identifier, secret=secret.encode(), dict=load_dictionary(()),
                        authenticator=rp.Packet.CreateAuthenticator())
    if message_authenticator:
        pkt.add_message_authenticator()
    pkt["User-Name"] = user
    pkt[2] = [hide_password(password.encode(), secret.encode(), pkt.authenticator)]
    pkt["NAS-Identifier"] = "pytest-nas"
    for name, value in extra:
        pkt.AddAttribute(name, value)
    if proxy_states:
        pkt[33] = list(proxy_states)
    return pkt.RequestPacket(), pkt


def udp_exchange(address: tuple[str, int], data: bytes, timeout: float = 2.0,
                 source: str | None = None, sock: socket.socket | None = None) -> bytes | None:
    """Send one datagram and return the first datagram back, or None after timeout."""
    own = sock is None
    if sock is None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if source:
            sock.bind((source, 0))
    try:
        sock.settimeout(timeout)
        sock.sendto(data, address)
        try:
            return sock.recvfrom(8192)[0]
        except TimeoutError:
            return None
    finally:
        if own:
            sock.close()
