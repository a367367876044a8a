"""REST v2: `/rest/v2/AuthSession` start/state/cancel and TOTP verify, JSON, Basic auth
with the PIN account on every call (section 7).

The status code carries the meaning here: 409 is a frozen SecSign ID, other 4xx are
definitive refusals, 5xx from something that is not the ID server's application means "ask
the next server". An error body naming an unknown or frozen ID is honoured on any status:
a 5xx saying "this ID does not exist" must never be read as "unreachable", because
`failmode = "safe"` lets a user in on UNREACHABLE.

Rules of this module: no I/O; requests out, replies in.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from radius_proxy.backends.secsign.replies import (
    FROZEN_CODE,
    AuthSession,
    Done,
    Garbage,
    Refused,
    Reply,
    Started,
    StateReply,
    Unavailable,
    Verdict,
    clip,
    parse_int,
    parse_state,
    refusal,
)
from radius_proxy.backends.secsign.transport import HttpRequest, HttpResponse
from radius_proxy.config import SecSignConfig
from radius_proxy.pipeline.ports import PushOutcome

SESSIONS = "/rest/v2/AuthSession"
TOTP_VERIFY = "/rest/v2/TOTP/Verify/"
SERVER_INFO = "/rest/v2/PluginRegistration/ServerInfo"
MAX_TEXT = 255

JsonObject = dict[str, Any]


def read_json(body: bytes) -> JsonObject | None:
    """The body as a JSON object, or None for anything else (never raises)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_payload(response: HttpResponse) -> JsonObject | Reply:
    """A 2xx answer's JSON object, or what a non-2xx answer means."""
    data = read_json(response.body)
    status = response.status
    if 200 <= status < 300:
        return data if data is not None else Garbage("not a JSON object")
    errorcode = parse_int((data or {}).get("errorcode"))
    raw_message = (data or {}).get("errormsg")
    message = raw_message if isinstance(raw_message, str) else ""
    if status == 409:
        return refusal(FROZEN_CODE, message, "")
    if status >= 500:
        refused = refusal(errorcode, message, "") if data else None
        if refused is not None and refused.outcome is not PushOutcome.FAILED:
            return refused
        return Unavailable(f"HTTP {status}")
    if status in (401, 403):
        return Refused(PushOutcome.FAILED, f"the ID server refused the PIN account (HTTP {status}):"
                                           " check secsign.pin_account and its rights")
    return refusal(errorcode, message, f"the ID server refused (HTTP {status})")


class RestApi:
    """Builds and reads the REST v2 requests; also used for TOTP and probes of a legacy setup."""

    name = "rest"

    def __init__(self, config: SecSignConfig) -> None:
        self._auth = (config.pin_account, config.pin_password.value) if config.pin_account \
            else None
        self._icons = "true" if config.access_pass else "false"

    def start(self, server: str, secsign_id: str, service_name: str,
              service_address: str) -> HttpRequest:
        params = (
            ("secsignid", secsign_id),
            ("servicename", service_name[:MAX_TEXT]),
            ("serviceaddress", service_address[:MAX_TEXT]),
            ("showaccesspassicons", self._icons),
        )
        return HttpRequest("GET", server + SESSIONS, params=params, auth=self._auth)

    def state(self, server: str, session: AuthSession) -> HttpRequest:
        return HttpRequest("GET", f"{server}{SESSIONS}/{session.session_id}", auth=self._auth)

    def cancel(self, server: str, session: AuthSession) -> HttpRequest:
        return HttpRequest("DELETE", f"{server}{SESSIONS}/{session.session_id}", auth=self._auth)

    def verify(self, server: str, secsign_id: str, code: str) -> HttpRequest:
        url = server + TOTP_VERIFY + quote(code, safe="")
        return HttpRequest("GET", url, params=(("secsignid", secsign_id),), auth=self._auth)

    def probe(self, server: str) -> HttpRequest:
        return HttpRequest("GET", server + SERVER_INFO, auth=self._auth)

    @staticmethod
    def read_start(response: HttpResponse) -> Reply:
        data = read_payload(response)
        if not isinstance(data, dict):
            return data
        session_id = parse_int(data.get("authsessionid"))
        if session_id is None:
            return Garbage("start answer without a valid authsessionid")
        reported = data.get("secsignid")
        if reported is not None and not isinstance(reported, str):
            return Garbage("start answer with a secsignid that is not text")
        return Started(session_id, "", reported)

    @staticmethod
    def read_state(response: HttpResponse, session: AuthSession) -> Reply:
        data = read_payload(response)
        if not isinstance(data, dict):
            return data
        state = parse_state(data.get("authsessionstate"))
        if state is None:
            return Garbage("state answer without a valid authsessionstate")
        if "authsessionid" in data and parse_int(data["authsessionid"]) != \
                session.session_id:
            return Garbage("state answer for another authsessionid")
        reported = data.get("secsignid")
        return StateReply(state, reported if isinstance(reported, str) else None)

    @staticmethod
    def read_cancel(response: HttpResponse) -> Reply:
        data = read_payload(response)
        return Done() if isinstance(data, dict) else data

    @staticmethod
    def read_verify(response: HttpResponse) -> Reply:
        data = read_payload(response)
        if not isinstance(data, dict):
            return data
        valid = data.get("valid")
        if not isinstance(valid, bool):
            return Garbage(f"TOTP answer without a boolean 'valid': {clip(repr(valid), 40)}")
        return Verdict(valid)

    @staticmethod
    def read_probe(response: HttpResponse) -> Reply:
        """Any HTTP answer below 500 shows a live server, even 401 or 404."""
        return Unavailable(f"HTTP {response.status}") if response.status >= 500 else Done()
