"""The legacy form API: `POST /` with `request=Req...`, answers as `k=v&k=v` (sections 1-3).

Two details decide whether a client works against the real server at all:

* the answer is split on `&` and then on the FIRST `=` only, and values are not
  URL-decoded: `authsessionicondata` is raw Base64 whose `+ / =` a form decoder would
  destroy (section 3.1);
* errors come back as HTTP 200 with `error=...&errormsg=...&errorcode=...` in the body, so
  the status code alone says nothing (section 3.2).

`ReqReleaseAuthSession` is never sent: the server dropped it in 2019 (section 2.4).

Rules of this module: no I/O; requests out, replies in.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from radius_proxy.backends.secsign.replies import (
    AuthSession,
    Done,
    Garbage,
    Refused,
    Reply,
    Started,
    StateReply,
    Unavailable,
    clip,
    parse_int,
    parse_state,
    refusal,
)
from radius_proxy.backends.secsign.transport import HttpRequest, HttpResponse
from radius_proxy.config import SecSignConfig
from radius_proxy.pipeline.ports import PushOutcome

#: The client name the ID server knows from SecSign's own Python API. Whether the server
#: checks `apimethod` is not documented (section 1.3), so we send a value it has seen;
#: our own name travels in `pluginname`.
APIMETHOD = "SecSignIDApi_Python"
#: The JS API cuts service texts to 255 characters; the server's limit is not published.
MAX_TEXT = 255

Fields = dict[str, str]


def parse_body(body: bytes) -> Fields | None:
    """`k=v&k=v` into a dict: first `=` only, values kept raw, keys and values trimmed.

    The first occurrence of a key wins; pieces without `=` are ignored. None when the body
    is not UTF-8 text at all.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields: Fields = {}
    for piece in text.split("&"):
        key, sep, value = piece.partition("=")
        key = key.strip()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    return fields


def text_value(raw: str) -> str:
    """A short text field (`secsignid`, `errormsg`) read either way: whether the server
    escapes them is not known (section 3.1), and decoding is harmless for them. Never used on
    `authsessionicondata`."""
    return unquote_plus(raw).strip()


def read_fields(response: HttpResponse) -> Fields | Reply:
    """The answer's fields, or what the answer means when it carries no usable fields."""
    fields = parse_body(response.body)
    if fields is not None and "error" in fields:
        return body_error(fields)
    if response.status >= 500:
        return Unavailable(f"HTTP {response.status}")
    if response.status != 200:
        return Refused(PushOutcome.FAILED, f"the ID server answered HTTP {response.status}")
    if not fields:
        return Garbage("not a k=v&k=v answer")
    return fields


def body_error(fields: Fields) -> Refused:
    """`error=...&errormsg=...&errorcode=...`: a definitive answer, whatever the HTTP status."""
    code_text = fields.get("errorcode", "").strip()
    errorcode = int(code_text) if code_text.isdecimal() and len(code_text) < 10 else None
    error = clip(text_value(fields["error"]), 20)
    return refusal(errorcode, text_value(fields.get("errormsg", "")),
                   f"the ID server refused (error {error})")


class LegacyApi:
    """Builds and reads the three legacy requests the client uses."""

    name = "legacy"

    def __init__(self, config: SecSignConfig) -> None:
        self._plugin_name = config.plugin_name
        self._access_pass = "true" if config.access_pass else "false"

    def start(self, server: str, secsign_id: str, service_name: str,
              service_address: str) -> HttpRequest:
        return self._post(server, (
            ("request", "ReqRequestAuthSession"),
            ("apimethod", APIMETHOD),
            ("secsignid", secsign_id),
            ("servicename", service_name[:MAX_TEXT]),
            ("serviceaddress", service_address[:MAX_TEXT]),
            ("pluginname", self._plugin_name),
            ("showaccesspass", self._access_pass),
        ))

    def state(self, server: str, session: AuthSession) -> HttpRequest:
        return self._post(server, _session_form("ReqGetAuthSessionState", session))

    def cancel(self, server: str, session: AuthSession) -> HttpRequest:
        return self._post(server, _session_form("ReqCancelAuthSession", session))

    @staticmethod
    def _post(server: str, form: tuple[tuple[str, str], ...]) -> HttpRequest:
        return HttpRequest("POST", server + "/", form=form)

    @staticmethod
    def read_start(response: HttpResponse) -> Reply:
        fields = read_fields(response)
        if not isinstance(fields, dict):
            return fields
        session_id = parse_int(fields.get("authsessionid", ""))
        request_id = fields.get("requestid", "")
        if session_id is None or not request_id:
            return Garbage("start answer without a valid authsessionid and requestid")
        state = None
        if "authsessionstate" in fields:
            state = parse_state(fields["authsessionstate"])
            if state is None:
                return Garbage("start answer with an invalid authsessionstate")
        reported = fields.get("secsignid")
        return Started(session_id, request_id,
                       None if reported is None else text_value(reported), state)

    @staticmethod
    def read_state(response: HttpResponse, session: AuthSession) -> Reply:
        fields = read_fields(response)
        if not isinstance(fields, dict):
            return fields
        state = parse_state(fields.get("authsessionstate", ""))
        if state is None:
            return Garbage("state answer without a valid authsessionstate")
        if "authsessionid" in fields and (
            parse_int(fields["authsessionid"]) != session.session_id
        ):
            return Garbage("state answer for another authsessionid")
        reported = fields.get("secsignid")
        return StateReply(state, None if reported is None else text_value(reported))

    @staticmethod
    def read_cancel(response: HttpResponse) -> Reply:
        fields = read_fields(response)
        return Done() if isinstance(fields, dict) else fields


def _session_form(request: str, session: AuthSession) -> tuple[tuple[str, str], ...]:
    """All three identifiers: every SecSign client sends them and the server checks them."""
    return (
        ("request", request),
        ("apimethod", APIMETHOD),
        ("secsignid", session.secsign_id),
        ("authsessionid", str(session.session_id)),
        ("requestid", session.request_id),
    )
