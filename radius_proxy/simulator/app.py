"""Routing: the wire protocols, the control API under ``/simulator/api/`` and the phone page.

Control API (JSON; see the package docstring for the full list). Every ``POST`` must carry
``Content-Type: application/json``: that forces a CORS preflight in browsers, which this
server never grants, so a web page on another origin cannot approve pushes or rewrite the
rules of a simulator running on a developer's machine.
"""

from __future__ import annotations

import json
import re

from radius_proxy.simulator.httpserver import Request, Response
from radius_proxy.simulator.page import PAGE_HTML
from radius_proxy.simulator.protocol import (
    handle_legacy,
    handle_rest,
    json_response,
    parse_session_id,
    refusal_response,
)
from radius_proxy.simulator.rules import Refusal, normalize_secsignid, parse_rules
from radius_proxy.simulator.sessions import Simulator

API = "/simulator/api"
_DECIDE_PATH = re.compile(rf"{API}/sessions/([^/]+)/(approve|deny)")
_TOTP_PATH = re.compile(rf"{API}/totp/([^/]+)")


class SimulatorApp:
    """Request to response for one ``Simulator``; plain and synchronous (state is in memory)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def __call__(self, request: Request) -> Response:
        path = request.path
        if path == "/":
            if request.method == "POST":
                return handle_legacy(self.sim, request)
            if request.method in ("GET", "HEAD"):
                return _redirect("/simulator/")
            return Response(405, b"POST only\n", headers=(("Allow", "POST"),))
        if path.startswith("/rest/"):
            return handle_rest(self.sim, request)
        if path == "/simulator":
            return _redirect("/simulator/")
        if path == "/simulator/":
            if request.method not in ("GET", "HEAD"):
                return _error(405, "GET only")
            return Response(200, PAGE_HTML.encode("utf-8"), "text/html; charset=utf-8")
        if path.startswith(API + "/"):
            return self._control(request)
        return Response(404, b"not found\n")

    def _control(self, request: Request) -> Response:
        if request.method == "POST":
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return _error(415, "POST with Content-Type: application/json")
            return self._control_post(request)
        if request.method != "GET":
            return _error(405, "GET or POST only")
        path = request.path
        if path == f"{API}/sessions":
            return json_response(200, [info.to_json() for info in self.sim.sessions()])
        if path == f"{API}/log":
            return json_response(200, [entry.to_json() for entry in self.sim.log()])
        if path == f"{API}/rules":
            return json_response(200, {"rules": [str(rule) for rule in self.sim.rules]})
        if match := _TOTP_PATH.fullmatch(path):
            return self._totp(match.group(1))
        return _error(404, "no such control endpoint")

    def _control_post(self, request: Request) -> Response:
        path = request.path
        if match := _DECIDE_PATH.fullmatch(path):
            return self._decide(match.group(1), match.group(2) == "approve")
        if path == f"{API}/reset":
            self.sim.reset()
            return json_response(200, {"ok": True})
        if path == f"{API}/rules":
            return self._set_rules(request.body)
        return _error(404, "no such control endpoint")

    def _decide(self, text: str, approve: bool) -> Response:
        session_id = parse_session_id(text)
        info = None if session_id is None else self.sim.decide(session_id, approve)
        if info is None:
            return _error(404, "no such session")
        wanted = 3 if approve else 4
        if info.state != wanted:
            return _error(409, f"session is no longer pending (state {int(info.state)})")
        return json_response(200, info.to_json())

    def _set_rules(self, body: bytes) -> Response:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'body must be JSON: {"rules": ["PATTERN=ACTION[:SECONDS]", ...]}')
        texts = payload.get("rules") if isinstance(payload, dict) else None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, 'body must be JSON: {"rules": ["PATTERN=ACTION[:SECONDS]", ...]}')
        try:
            rules = parse_rules(texts)
        except ValueError as error:
            return _error(400, str(error))
        self.sim.set_rules(rules)
        return json_response(200, {"rules": [str(rule) for rule in rules]})

    def _totp(self, text: str) -> Response:
        secsignid = normalize_secsignid(text)
        if secsignid is None:
            return _error(404, "not a SecSign ID")
        code = self.sim.totp_code(secsignid)
        if isinstance(code, Refusal):
            return refusal_response(code)
        return json_response(200, {"code": code})


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _redirect(location: str) -> Response:
    return Response(302, b"", headers=(("Location", location),))
