"""The ID server's two wire protocols: the legacy form API on ``POST /`` and REST ``/rest/v2``.

Formats follow secsign-id-api.md exactly, because a client that passes against the simulator
must also work against the real server:

* legacy (sections 1-3): form-encoded request dispatched on ``request``; the answer is always
  HTTP 200 with a ``k=v&k=v`` body whose values are *not* URL-encoded (the Base64 icon keeps
  its ``+ / =``; a raw space stays a space). Errors travel in the body as ``error=...``.
* REST (section 7): Basic auth on every call, JSON bodies, 409 for a frozen ID.

Every protocol request is logged (type start|state|cancel|totp|release) before it is checked,
so a test can see exactly what a client sent, including the malformed ones.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import secrets
from collections.abc import Iterable, Mapping

from radius_proxy.simulator.httpserver import Request, Response, parse_form
from radius_proxy.simulator.icon import ACCESS_ICON_PNG_BASE64
from radius_proxy.simulator.rules import FROZEN_ID, UNKNOWN_ID, Refusal, normalize_secsignid
from radius_proxy.simulator.sessions import AuthSessionState, SessionInfo, Simulator

LEGACY_KINDS = {
    "ReqRequestAuthSession": "start",
    "ReqGetAuthSessionState": "state",
    "ReqCancelAuthSession": "cancel",
    "ReqReleaseAuthSession": "release",
}
_LEGACY_REQUIRED = {
    "start": ("apimethod", "secsignid", "servicename", "serviceaddress"),
    "state": ("apimethod", "secsignid", "authsessionid", "requestid"),
    "cancel": ("apimethod", "secsignid", "authsessionid", "requestid"),
    "release": ("apimethod", "secsignid", "authsessionid", "requestid"),
}
_SESSION_PATH = re.compile(r"/rest/v2/AuthSession/(-?\d{1,19})")
_TOTP_PATH = re.compile(r"/rest/v2/TOTP/Verify/([^/]*)")
_INVALID_SESSION = "The auth session is invalid, unknown or was canceled."
#: The REST state answer for each state, made once: the proxy asks for it on every poll.
_STATE_RESPONSES = {
    state: Response(200, json.dumps({"authsessionstate": int(state)}).encode("utf-8"),
                    "application/json")
    for state in AuthSessionState
}


def parse_session_id(text: str) -> int | None:
    """A signed 64-bit decimal, or None."""
    if not re.fullmatch(r"-?\d{1,19}", text.strip()):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _log_id(raw: str | None) -> str | None:
    """The SecSign ID as the log shows it: as sent, trimmed and lower-cased."""
    return None if raw is None else raw.strip().lower()


def start_session(sim: Simulator, api: str, fields: Mapping[str, str]) -> SessionInfo | Refusal:
    """Both APIs' start, once the three fields are known present; logged with the new id."""
    secsignid = normalize_secsignid(fields["secsignid"])
    result = UNKNOWN_ID if secsignid is None else sim.start(
        secsignid, fields["servicename"].strip(), fields["serviceaddress"].strip())
    new_id = result.id if isinstance(result, SessionInfo) else None
    sim.record("start", api, _log_id(fields["secsignid"]), new_id)
    return result


# -- legacy form API -----------------------------------------------------------------------
def legacy_body(pairs: Iterable[tuple[str, object]]) -> Response:
    """``k=v&k=v`` unescaped as the server writes it; only ``&`` is escaped to keep framing."""
    body = "&".join(f"{key}={str(value).replace('&', '%26')}" for key, value in pairs)
    return Response(200, body.encode("utf-8"), "text/plain; charset=utf-8")


def legacy_error(error: int, message: str, errorcode: int | None = None) -> Response:
    pairs: list[tuple[str, object]] = [("error", error), ("errormsg", message)]
    if errorcode is not None:
        pairs.append(("errorcode", errorcode))
    return legacy_body(pairs)


def handle_legacy(sim: Simulator, request: Request) -> Response:
    """``POST /``: one of the four request types of section 2."""
    form = parse_form(request.body.decode("utf-8", "replace"))
    kind = LEGACY_KINDS.get(form.get("request", "").strip())
    if kind is None:
        return legacy_error(500, "Unknown or missing request type.")
    missing = [name for name in _LEGACY_REQUIRED[kind] if not form.get(name, "").strip()]
    if kind == "start":
        return _legacy_start(sim, form, missing)
    session_id = parse_session_id(form.get("authsessionid", ""))
    sim.record(kind, "legacy", _log_id(form.get("secsignid")), session_id)
    if missing:
        return legacy_error(500, f"Missing parameter {missing[0]}.")
    if kind == "release":
        return legacy_error(500, "ReqReleaseAuthSession is not supported any longer.")
    info = _legacy_session(sim, form, session_id)
    if info is None:
        return legacy_error(400, _INVALID_SESSION)
    if kind == "cancel":
        info = sim.cancel(info.id)
        if info is None:
            return legacy_error(400, _INVALID_SESSION)
        return legacy_body([("authsessionid", info.id), ("authsessionstate", int(info.state))])
    return legacy_body([("authsessionid", info.id), ("secsignid", info.secsignid),
                        ("authsessionstate", int(info.state))])


def _legacy_start(sim: Simulator, form: dict[str, str], missing: list[str]) -> Response:
    if missing:
        sim.record("start", "legacy", _log_id(form.get("secsignid")))
        return legacy_error(500, f"Missing parameter {missing[0]}.")
    result = start_session(sim, "legacy", form)
    if isinstance(result, Refusal):
        return legacy_error(500, result.message, result.errorcode)
    return legacy_body([
        ("authsessionid", result.id),
        ("servicename", result.servicename),
        ("secsignid", result.secsignid),
        ("authsessionstate", int(result.state)),
        ("serviceaddress", result.serviceaddress),
        ("requestid", result.request_id),
        ("authsessionicondata", ACCESS_ICON_PNG_BASE64),
    ])


def _legacy_session(
    sim: Simulator, form: dict[str, str], session_id: int | None
) -> SessionInfo | None:
    """The session only if id, SecSign ID and request id all match (section 8)."""
    info = None if session_id is None else sim.poll(session_id)
    if info is None or info.secsignid != form["secsignid"].strip().lower():
        return None
    if not secrets.compare_digest(info.request_id.encode(), form["requestid"].strip().encode()):
        return None
    return info


# -- REST API ------------------------------------------------------------------------------
def json_response(
    status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    body = json.dumps(payload).encode("utf-8")
    return Response(status, body, "application/json", headers)


def rest_error(status: int, message: str, errorcode: int | None = None) -> Response:
    payload: dict[str, object] = {"error": status, "errormsg": message}
    if errorcode is not None:
        payload["errorcode"] = errorcode
    return json_response(status, payload)


def refusal_response(refusal: Refusal) -> Response:
    """Frozen is 409 (section 7); an unknown ID is 404, a client error, never a 5xx that a
    proxy could mistake for "ID server unreachable" and fail open on."""
    status = 409 if refusal.errorcode == FROZEN_ID.errorcode else 404
    return rest_error(status, refusal.message, refusal.errorcode)


def handle_rest(sim: Simulator, request: Request) -> Response:
    """``/rest/v2/...``: auth sessions and TOTP verification, Basic auth on every call."""
    if not _authorized(sim, request.headers.get("authorization", "")):
        return json_response(401, {"error": 401, "errormsg": "Unauthorized REST-Call."},
                             (("WWW-Authenticate", 'Basic realm="SecSign ID"'),))
    if request.path == "/rest/v2/AuthSession":
        return _rest_start(sim, request) if request.method == "GET" else _not_allowed("GET")
    if match := _SESSION_PATH.fullmatch(request.path):
        session_id = int(match.group(1))
        if request.method == "GET":
            return _rest_state(sim, session_id)
        if request.method == "DELETE":
            return _rest_cancel(sim, session_id)
        return _not_allowed("GET, DELETE")
    if match := _TOTP_PATH.fullmatch(request.path):
        if request.method != "GET":
            return _not_allowed("GET")
        return _rest_totp(sim, request, match.group(1))
    return rest_error(404, "REST-Call not found.")


def _authorized(sim: Simulator, header: str) -> bool:
    credentials = _basic_credentials(header)
    return credentials is not None and sim.credentials_ok(*credentials)


@functools.lru_cache(maxsize=64)
def _basic_credentials(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic`` to (user, password); cached, since a client sends the same
    header on every poll and decoding it was a visible share of a state request's cost."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def _not_allowed(allow: str) -> Response:
    response = rest_error(405, "Method not allowed.")
    return Response(405, response.body, response.content_type, (("Allow", allow),))


def _rest_start(sim: Simulator, request: Request) -> Response:
    query = request.query
    for name in ("secsignid", "servicename", "serviceaddress"):
        if not query.get(name, "").strip():
            sim.record("start", "rest", _log_id(query.get("secsignid")))
            return rest_error(400, f"Missing parameter {name}.")
    result = start_session(sim, "rest", query)
    if isinstance(result, Refusal):
        return refusal_response(result)
    payload: dict[str, object] = {"authsessionid": result.id, "secsignid": result.secsignid}
    no_icon = query.get("showaccesspassicons", "").lower() == "false" or (
        query.get("transactiontitle") and query.get("transactiondescr"))
    if not no_icon:
        payload["authsessionicondata"] = ACCESS_ICON_PNG_BASE64
    return json_response(200, payload)


def _rest_state(sim: Simulator, session_id: int) -> Response:
    info = sim.poll(session_id)
    sim.record("state", "rest", None if info is None else info.secsignid, session_id)
    if info is None:
        return rest_error(404, _INVALID_SESSION)
    return _STATE_RESPONSES[info.state]


def _rest_cancel(sim: Simulator, session_id: int) -> Response:
    info = sim.cancel(session_id)
    sim.record("cancel", "rest", None if info is None else info.secsignid, session_id)
    if info is None:
        return rest_error(404, _INVALID_SESSION)
    return json_response(200, {"authsessionid": info.id, "authsessionstate": int(info.state)})


def _rest_totp(sim: Simulator, request: Request, code: str) -> Response:
    raw_id = request.query.get("secsignid", "")
    sim.record("totp", "rest", _log_id(raw_id) or None)
    if not raw_id.strip():
        return rest_error(400, "Missing parameter secsignid.")
    secsignid = normalize_secsignid(raw_id)
    result = UNKNOWN_ID if secsignid is None else sim.verify_totp(secsignid, code)
    if isinstance(result, Refusal):
        return refusal_response(result)
    return json_response(200, {"valid": result})
