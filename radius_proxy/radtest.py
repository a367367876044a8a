"""`radius-proxy radtest`: a RADIUS client for administrators and tests.

It sends a PAP Access-Request signed with Message-Authenticator, verifies the reply's
Response Authenticator and Message-Authenticator, answers Access-Challenge prompts from the
terminal or from `--response`, and prints the result with the reply attributes. A blocking
socket is enough here: one login at a time.
"""

from __future__ import annotations

import getpass
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from pyrad import packet as rp
from pyrad.dictionary import Dictionary

from radius_proxy.config_loader import parse_hostport
from radius_proxy.protocol import packet as pk

EXIT_ACCEPT, EXIT_REJECT, EXIT_ERROR = 0, 1, 2
_NAMES = {pk.ACCESS_ACCEPT: "Access-Accept", pk.ACCESS_REJECT: "Access-Reject",
          pk.ACCESS_CHALLENGE: "Access-Challenge"}


@dataclass
class RadtestOptions:
    user: str
    password: str
    server: str
    secret: bytes
    nas_identifier: str = "radius-proxy-radtest"
    calling_station_id: str | None = None
    timeout: float = 60.0
    retries: int = 0
    responses: tuple[str, ...] = ()
    max_rounds: int = 5


class RadtestError(Exception):
    """No valid answer: timeout, a reply that fails verification, a socket error."""


def _exchange(sock: socket.socket, request: rp.AuthPacket, address: tuple[str, int],
              options: RadtestOptions, dictionary: Dictionary) -> rp.Packet:
    raw = request.RequestPacket()
    for _ in range(options.retries + 1):
        sock.sendto(raw, address)  # a retransmit: same ID and authenticator (RFC 5080)
        sock.settimeout(options.timeout)
        try:
            while True:
                data, _ = sock.recvfrom(4096)
                reply = _verified(data, request, dictionary)
                if reply is not None:
                    return reply
        except TimeoutError:
            continue
    raise RadtestError(f"no valid reply from {address[0]}:{address[1]} "
                       f"after {options.retries + 1} attempt(s) of {options.timeout:g} s")


def _verified(data: bytes, request: rp.AuthPacket, dictionary: Dictionary) -> rp.Packet | None:
    try:
        data = pk.check_structure(data)
        reply = request.CreateReply(packet=data)
    except Exception:
        return None
    if not request.VerifyReply(reply, data, enforce_ma=True):
        return None
    return reply


def _request(options: RadtestOptions, dictionary: Dictionary, answer: str,
             state: bytes | None) -> rp.AuthPacket:
    pkt = rp.AuthPacket(id=rp.AuthPacket().CreateID(), secret=options.secret, dict=dictionary,
                        authenticator=rp.Packet.CreateAuthenticator())
    pkt.add_message_authenticator()
    pkt["User-Name"] = options.user
    pkt[pk.USER_PASSWORD] = [pk.hide_password(answer.encode("utf-8"), options.secret,
                                              pkt.authenticator)]
    pkt["NAS-Identifier"] = options.nas_identifier
    pkt["NAS-IP-Address"] = "127.0.0.1"
    pkt["Service-Type"] = "Authenticate-Only"
    if options.calling_station_id:
        pkt["Calling-Station-Id"] = options.calling_station_id
    if state is not None:
        pkt["State"] = state
    return pkt


def _describe(reply: rp.Packet) -> Iterator[str]:
    for key in reply.keys():  # noqa: SIM118 - pyrad: keys() gives names, iteration codes
        if key in ("Message-Authenticator", "State", 80):
            continue
        try:
            values = reply[key]
        except Exception:
            values = ["<undecodable>"]
        for value in values:
            yield f"  {key} = {value!r}" if isinstance(value, bytes) else f"  {key} = {value}"


def run_radtest(options: RadtestOptions, dictionary: Dictionary, out: TextIO = sys.stdout,
                ask: Callable[[str], str] = input) -> int:
    """One login with its challenge rounds; returns the exit code."""
    host, port = parse_hostport(options.server, 1812)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    responses = list(options.responses)
    answer, state = options.password, None
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for _ in range(options.max_rounds):
            request = _request(options, dictionary, answer, state)
            try:
                reply = _exchange(sock, request, (host, port), options, dictionary)
            except (RadtestError, OSError) as exc:
                print(f"Error: {exc}", file=out)
                return EXIT_ERROR
            print(f"Received {_NAMES.get(reply.code, reply.code)}", file=out)
            for line in _describe(reply):
                print(line, file=out)
            if reply.code != pk.ACCESS_CHALLENGE:
                return EXIT_ACCEPT if reply.code == pk.ACCESS_ACCEPT else EXIT_REJECT
            state = _state(reply)
            prompt = _message(reply)
            answer = responses.pop(0) if responses else ask(f"{prompt} ")
    print("Error: too many challenge rounds", file=out)
    return EXIT_ERROR


def _state(reply: rp.Packet) -> bytes | None:
    values: list[Any] = reply.get(pk.STATE) or []
    return bytes(values[0]) if values else None


def _message(reply: rp.Packet) -> str:
    values: list[Any] = reply.get("Reply-Message") or []
    return " ".join(v if isinstance(v, str) else v.decode("utf-8", "replace") for v in values)


def read_password(prompt: str = "Password: ") -> str:
    return getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
