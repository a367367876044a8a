"""The simulator over real HTTP on 127.0.0.1: the wire formats of secsign-id-api.md, the
control API, the log, and what happens to malformed input.

The server runs on its own event-loop thread (``BackgroundSimulator``), so these are plain
synchronous tests driven by ``requests`` and raw sockets.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import requests

from radius_proxy.simulator import BackgroundSimulator, Simulator
from radius_proxy.simulator.icon import ACCESS_ICON_PNG_BASE64

REPO = Path(__file__).resolve().parents[2]
AUTH = ("radius-proxy", "pin-account-password")
JSON = {"Content-Type": "application/json"}
FROZEN_MSG = ("This SecSign ID is frozen due to concurrent login requests. The user needs to "
              "reactivate his account first. This can be done by tapping on the right SecSign "
              "ID at the smartphone.")


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundSimulator]:
    with BackgroundSimulator(Simulator()) as background:
        yield background


@pytest.fixture
def url(server: BackgroundSimulator) -> str:
    server.simulator.reset()
    server.simulator.set_rules(())
    return server.url


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def parse_legacy(body: str) -> dict[str, str]:
    """Parse as every SecSign client does: split on '&', then on the first '=', no decoding."""
    return dict(pair.split("=", 1) for pair in body.split("&"))


def legacy(http: requests.Session, url: str, **fields: str) -> str:
    response = http.post(url + "/", data={"apimethod": "SecSignIDApi_PHP", **fields}, timeout=5)
    assert response.status_code == 200
    return response.text


def legacy_start(http: requests.Session, url: str, secsignid: str = "alice") -> dict[str, str]:
    return parse_legacy(legacy(http, url, request="ReqRequestAuthSession", secsignid=secsignid,
                               servicename="VPN Login", serviceaddress="vpn.example.com"))


def ids(session: dict[str, str]) -> dict[str, str]:
    return {k: session[k] for k in ("secsignid", "authsessionid", "requestid")}


def set_rules(http: requests.Session, url: str, *rules: str) -> None:
    response = http.post(f"{url}/simulator/api/rules", json={"rules": list(rules)}, timeout=5)
    assert response.status_code == 200, response.text


def log_types(http: requests.Session, url: str) -> list[tuple[str, str, str | None]]:
    entries = http.get(f"{url}/simulator/api/log", timeout=5).json()
    return [(e["type"], e["api"], e["secsignid"]) for e in entries]


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One HTTP response from a raw socket: status line, headers, Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return status, headers, body


def read_responses(stream: BinaryIO, count: int, head_only: int = -1
                   ) -> list[tuple[str, dict[str, str], bytes]]:
    """``count`` responses from a buffered stream, so pipelined ones are kept apart; the
    one numbered ``head_only`` answers a HEAD (no body whatever its Content-Length)."""
    answers = []
    for index in range(count):
        status = stream.readline().decode("latin-1").rstrip("\r\n")
        headers = {}
        while (line := stream.readline().decode("latin-1").rstrip("\r\n")):
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        length = 0 if index == head_only else int(headers["content-length"])
        answers.append((status, headers, stream.read(length)))
    return answers


def raw(port: int, data: bytes) -> tuple[str, dict[str, str], bytes, bool]:
    """Send bytes, read one response; the flag says whether the server then closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        status, headers, body = read_response(sock)
        try:
            closed = sock.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
        return status, headers, body, closed


# -- legacy form API -----------------------------------------------------------------------
def test_hand_written_legacy_request_is_answered_in_the_reference_format(
    server: BackgroundSimulator, url: str
) -> None:
    body = (b"request=ReqRequestAuthSession&secsignid=Zoidberg&servicename=VPN+Login"
            b"&serviceaddress=vpn.example.com&pluginname=MyRadiusProxy&apimethod=SecSignIDApi_PHP")
    request = (b"POST / HTTP/1.1\r\nHost: httpapi.secsign.com\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nReferer: SecSignIDApi_PHP\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    status, headers, payload, closed = raw(server.server.port, request)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain")
    assert closed
    match = re.fullmatch(
        r"authsessionid=(-?\d+)&servicename=VPN Login&secsignid=zoidberg&authsessionstate=1"
        r"&serviceaddress=vpn\.example\.com&requestid=([0-9A-F]{64})&authsessionicondata=(.+)",
        payload.decode())
    assert match, payload
    assert -(2**63) <= int(match.group(1)) < 2**63
    assert match.group(3) == ACCESS_ICON_PNG_BASE64
    assert base64.b64decode(parse_legacy(payload.decode())["authsessionicondata"])[:4] == b"\x89PNG"


def test_legacy_approve_rule_polls_through_fetched_to_authenticated(
    http: requests.Session, url: str
) -> None:
    set_rules(http, url, "alice=approve:0.3")
    session = legacy_start(http, url)
    seen: list[str] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        text = legacy(http, url, request="ReqGetAuthSessionState", **ids(session))
        answer = parse_legacy(text)
        assert list(answer) == ["authsessionid", "secsignid", "authsessionstate"]
        assert answer["authsessionid"] == session["authsessionid"]
        seen.append(answer["authsessionstate"])
        if answer["authsessionstate"] == "3":
            break
        time.sleep(0.05)
    assert seen[-1] == "3"
    assert set(seen) <= {"1", "7", "3"}
    assert seen == sorted(seen, key=["1", "7", "3"].index)


def test_legacy_cancel_then_state_is_an_error(http: requests.Session, url: str) -> None:
    session = legacy_start(http, url)
    cancelled = legacy(http, url, request="ReqCancelAuthSession", **ids(session))
    assert cancelled == f"authsessionid={session['authsessionid']}&authsessionstate=6"
    after = parse_legacy(legacy(http, url, request="ReqGetAuthSessionState", **ids(session)))
    assert after["error"] == "400"
    sessions = http.get(f"{url}/simulator/api/sessions", timeout=5).json()
    assert [s["state"] for s in sessions] == [6]


def test_legacy_release_is_refused_and_logged(http: requests.Session, url: str) -> None:
    session = legacy_start(http, url)
    answer = parse_legacy(legacy(http, url, request="ReqReleaseAuthSession", **ids(session)))
    assert answer["error"] == "500"
    assert "errormsg" in answer
    assert log_types(http, url)[-1] == ("release", "legacy", "alice")


def test_legacy_unknown_and_frozen_ids(http: requests.Session, url: str) -> None:
    set_rules(http, url, "ghost=unknown", "ice*=frozen")
    start = {"request": "ReqRequestAuthSession", "servicename": "s", "serviceaddress": "a"}
    assert legacy(http, url, secsignid="ghost", **start) == (
        "error=500&errormsg=A SecSign ID does not exist with that name.&errorcode=20000")
    assert legacy(http, url, secsignid="iceman", **start) == (
        f"error=500&errormsg={FROZEN_MSG}&errorcode=20006")
    assert log_types(http, url) == [("start", "legacy", "ghost"), ("start", "legacy", "iceman")]


def test_legacy_second_start_suspends_the_first(http: requests.Session, url: str) -> None:
    first = legacy_start(http, url)
    legacy_start(http, url)
    state = parse_legacy(legacy(http, url, request="ReqGetAuthSessionState", **ids(first)))
    assert state["authsessionstate"] == "5"


def test_legacy_request_with_missing_or_wrong_fields(http: requests.Session, url: str) -> None:
    response = http.post(url + "/", data={"request": "ReqRequestAuthSession", "secsignid": "a",
                                          "servicename": "s", "serviceaddress": "x"}, timeout=5)
    assert response.text == "error=500&errormsg=Missing parameter apimethod."
    no_address = legacy(http, url, request="ReqRequestAuthSession", secsignid="a", servicename="s")
    assert no_address == "error=500&errormsg=Missing parameter serviceaddress."
    assert parse_legacy(legacy(http, url, request="ReqNothing"))["error"] == "500"
    assert parse_legacy(http.post(url + "/", data=b"", timeout=5).text)["error"] == "500"
    session = legacy_start(http, url)
    for field, value in (("requestid", "0" * 64), ("secsignid", "bob"),
                         ("authsessionid", "12"), ("authsessionid", "x")):
        wrong = {**ids(session), field: value}
        assert parse_legacy(legacy(http, url, request="ReqGetAuthSessionState", **wrong)) == {
            "error": "400", "errormsg": "The auth session is invalid, unknown or was canceled."}


def test_legacy_accepts_js_style_bodies_and_echoes_values_unescaped(
    http: requests.Session, url: str
) -> None:
    body = ("request=ReqRequestAuthSession&secsignid=alice&servicename=SSH%20login%20to%20h1"
            "&serviceaddress=10.0.0.1&apimethod=SecSignIDApi_JS&")
    response = http.post(url + "/", data=body, timeout=5,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    answer = parse_legacy(response.text)
    assert answer["servicename"] == "SSH login to h1"
    assert answer["serviceaddress"] == "10.0.0.1"


# -- REST ----------------------------------------------------------------------------------
def test_rest_requires_basic_credentials(http: requests.Session, url: str) -> None:
    start = f"{url}/rest/v2/AuthSession?secsignid=alice&servicename=s&serviceaddress=a"
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic !!!"},
                    {"Authorization": "Basic " + base64.b64encode(b":").decode()}):
        response = http.get(start, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert http.get(start, auth=("any", "thing"), timeout=5).status_code == 200
    assert http.get(start, auth=("user", ""), timeout=5).status_code == 200


def test_rest_with_a_configured_account_takes_only_that_one(http: requests.Session) -> None:
    with BackgroundSimulator(Simulator(account="proxy:secret")) as locked:
        start = f"{locked.url}/rest/v2/AuthSession?secsignid=a&servicename=s&serviceaddress=x"
        assert http.get(start, auth=("proxy", "wrong"), timeout=5).status_code == 401
        assert http.get(start, auth=("other", "secret"), timeout=5).status_code == 401
        assert http.get(start, auth=("proxy", "secret"), timeout=5).status_code == 200


def test_rest_start_state_cancel(http: requests.Session, url: str) -> None:
    params = {"secsignid": "Alice", "servicename": "VPN Login", "serviceaddress": "vpn"}
    started = http.get(f"{url}/rest/v2/AuthSession", params=params, auth=AUTH, timeout=5)
    assert started.status_code == 200
    assert started.headers["Content-Type"] == "application/json"
    body = started.json()
    assert set(body) == {"authsessionid", "authsessionicondata", "secsignid"}
    assert isinstance(body["authsessionid"], int)
    assert body["secsignid"] == "alice"
    assert body["authsessionicondata"] == ACCESS_ICON_PNG_BASE64
    session = f"{url}/rest/v2/AuthSession/{body['authsessionid']}"
    assert http.get(session, auth=AUTH, timeout=5).json() == {"authsessionstate": 1}
    approve = f"{url}/simulator/api/sessions/{body['authsessionid']}/approve"
    assert http.post(approve, headers=JSON, timeout=5).status_code == 200
    assert http.get(session, auth=AUTH, timeout=5).json() == {"authsessionstate": 3}
    assert http.delete(session, auth=AUTH, timeout=5).status_code == 200
    assert http.get(session, auth=AUTH, timeout=5).status_code == 404
    assert http.delete(session, auth=AUTH, timeout=5).status_code == 404
    assert [t for t, _, _ in log_types(http, url)] == [
        "start", "state", "state", "cancel", "state", "cancel"]


def test_rest_frozen_is_409_and_unknown_is_a_4xx_with_errorcode_20000(
    http: requests.Session, url: str
) -> None:
    set_rules(http, url, "ice=frozen", "ghost=unknown")
    start = f"{url}/rest/v2/AuthSession?servicename=s&serviceaddress=a&secsignid="
    frozen = http.get(start + "ice", auth=AUTH, timeout=5)
    assert frozen.status_code == 409
    assert frozen.json()["errorcode"] == 20006
    for secsignid in ("ghost", "not%20an%20id"):
        unknown = http.get(start + secsignid, auth=AUTH, timeout=5)
        assert 400 <= unknown.status_code < 500
        assert unknown.json()["errorcode"] == 20000
        assert "errormsg" in unknown.json()


def test_rest_edges(http: requests.Session, url: str) -> None:
    base = f"{url}/rest/v2/AuthSession"
    no_icon = http.get(base, params={"secsignid": "a", "servicename": "s", "serviceaddress": "x",
                                     "showaccesspassicons": "false"}, auth=AUTH, timeout=5)
    assert set(no_icon.json()) == {"authsessionid", "secsignid"}
    missing = http.get(base, params={"secsignid": "a", "servicename": "s"}, auth=AUTH, timeout=5)
    assert missing.status_code == 400
    assert http.get(f"{url}/rest/v2/Nothing", auth=AUTH, timeout=5).status_code == 404
    assert http.post(base, auth=AUTH, timeout=5).status_code == 405
    assert http.put(f"{base}/5", auth=AUTH, timeout=5).status_code == 405
    assert http.get(f"{base}/99999999999999999999", auth=AUTH, timeout=5).status_code == 404


def test_rest_totp_verify(http: requests.Session, url: str) -> None:
    code = http.get(f"{url}/simulator/api/totp/alice", timeout=5).json()["code"]
    assert re.fullmatch(r"\d{6}", code)
    verify = f"{url}/rest/v2/TOTP/Verify/{{}}?secsignid=alice"
    assert http.get(verify.format(code), auth=AUTH, timeout=5).json() == {"valid": True}
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert http.get(verify.format(wrong), auth=AUTH, timeout=5).json() == {"valid": False}
    assert http.get(verify.format("abc"), auth=AUTH, timeout=5).json() == {"valid": False}
    assert http.get(verify.format(code), timeout=5).status_code == 401
    no_id = http.get(f"{url}/rest/v2/TOTP/Verify/{code}", auth=AUTH, timeout=5)
    assert no_id.status_code == 400
    assert [t for t, _, _ in log_types(http, url)] == ["totp", "totp", "totp", "totp"]


# -- control API, log, page ----------------------------------------------------------------
def test_control_sessions_approve_deny(http: requests.Session, url: str) -> None:
    first, second = legacy_start(http, url, "alice"), legacy_start(http, url, "bob")
    listed = http.get(f"{url}/simulator/api/sessions", timeout=5).json()
    assert [s["id"] for s in listed] == [first["authsessionid"], second["authsessionid"]]
    assert set(listed[0]) == {"id", "secsignid", "servicename", "serviceaddress", "state",
                              "created"}
    assert listed[0]["servicename"] == "VPN Login"
    api = f"{url}/simulator/api/sessions"
    denied = http.post(f"{api}/{second['authsessionid']}/deny", headers=JSON, timeout=5)
    assert denied.json()["state"] == 4
    late = http.post(f"{api}/{second['authsessionid']}/approve", headers=JSON, timeout=5)
    assert late.status_code == 409
    assert http.post(f"{api}/123/approve", headers=JSON, timeout=5).status_code == 404
    assert http.post(f"{api}/junk/approve", headers=JSON, timeout=5).status_code == 404
    cross_site = http.post(f"{api}/{first['authsessionid']}/approve", data="{}", timeout=5,
                           headers={"Content-Type": "text/plain"})
    assert cross_site.status_code == 415
    state = parse_legacy(legacy(http, url, request="ReqGetAuthSessionState", **ids(first)))
    assert state["authsessionstate"] == "1"


def test_control_rules_reset_and_totp(http: requests.Session, url: str) -> None:
    set_rules(http, url, "a*=approve:0.5", "ghost=unknown")
    assert http.get(f"{url}/simulator/api/rules", timeout=5).json() == {
        "rules": ["a*=approve:0.5", "ghost=unknown"]}
    bad = http.post(f"{url}/simulator/api/rules", json={"rules": ["a=maybe"]}, timeout=5)
    assert bad.status_code == 400
    assert "unknown ACTION" in bad.json()["error"]
    for junk in (b"nope", b"[]", b'{"rules": "a=approve"}', b'{"rules": [1]}'):
        assert http.post(f"{url}/simulator/api/rules", data=junk, headers=JSON,
                         timeout=5).status_code == 400
    assert http.get(f"{url}/simulator/api/totp/ghost", timeout=5).status_code == 404
    assert http.get(f"{url}/simulator/api/totp/a%20b", timeout=5).status_code == 404
    legacy_start(http, url)
    assert http.post(f"{url}/simulator/api/reset", headers=JSON, timeout=5).json() == {"ok": True}
    assert http.get(f"{url}/simulator/api/sessions", timeout=5).json() == []
    assert http.get(f"{url}/simulator/api/log", timeout=5).json() == []
    assert http.get(f"{url}/simulator/api/nothing", timeout=5).status_code == 404


def test_log_lists_every_protocol_request_in_order(http: requests.Session, url: str) -> None:
    session = legacy_start(http, url, "Alice")
    legacy(http, url, request="ReqGetAuthSessionState", **ids(session))
    rest = http.get(f"{url}/rest/v2/AuthSession", auth=AUTH, timeout=5,
                    params={"secsignid": "bob", "servicename": "s", "serviceaddress": "a"}).json()
    http.delete(f"{url}/rest/v2/AuthSession/{rest['authsessionid']}", auth=AUTH, timeout=5)
    legacy(http, url, request="ReqCancelAuthSession", **ids(session))
    entries = http.get(f"{url}/simulator/api/log", timeout=5).json()
    assert [(e["type"], e["api"], e["secsignid"]) for e in entries] == [
        ("start", "legacy", "alice"), ("state", "legacy", "alice"), ("start", "rest", "bob"),
        ("cancel", "rest", "bob"), ("cancel", "legacy", "alice")]
    assert entries[2]["authsessionid"] == str(rest["authsessionid"])
    times = [e["time"] for e in entries]
    assert times == sorted(times)
    assert abs(times[0] - time.time()) < 60


def test_phone_page(http: requests.Session, url: str) -> None:
    page = http.get(f"{url}/simulator/", timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    for hook in ("dataset.action", "dataset.session", "api/sessions",
                 "setInterval(refresh, 1000)", 'id="totp-show"'):
        assert hook in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")
    redirect = http.get(f"{url}/", allow_redirects=False, timeout=5)
    assert (redirect.status_code, redirect.headers["Location"]) == (302, "/simulator/")


# -- malformed input and connection handling ----------------------------------------------
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", "400"),
        (b"GET /\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"),
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "411"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n", "413"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "400"),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "431"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", "431"),
    ],
)
def test_malformed_requests_get_a_clean_error_and_the_connection_closes(
    server: BackgroundSimulator, url: str, data: bytes, status: str
) -> None:
    status_line, headers, _, closed = raw(server.server.port, data)
    assert status_line.split(" ")[1] == status
    assert headers["connection"] == "close"
    assert closed
    assert requests.get(f"{url}/simulator/api/log", timeout=5).status_code == 200


def test_non_utf8_and_binary_bodies_are_handled(http: requests.Session, url: str) -> None:
    response = http.post(url + "/", data=b"\xff\xfe\x00request=\x80&%zz", timeout=5)
    assert (response.status_code, parse_legacy(response.text)["error"]) == (200, "500")
    response = http.post(f"{url}/simulator/api/rules", data=b"\xff", headers=JSON, timeout=5)
    assert response.status_code == 400


def test_keep_alive_serves_several_requests_on_one_connection(
    server: BackgroundSimulator, url: str
) -> None:
    request = b"GET /simulator/api/sessions HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=3) as sock:
        for _ in range(3):
            sock.sendall(request)
            status, headers, body = read_response(sock)
            assert (status, headers["connection"], body) == ("HTTP/1.1 200 OK", "keep-alive", b"[]")
        sock.sendall(b"GET /simulator/api/log HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_pipelined_requests_are_answered_in_order(server: BackgroundSimulator, url: str) -> None:
    body = b"request=ReqNothing&apimethod=x"
    pipelined = (
        b"GET /simulator/api/rules HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        b"\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"  # a blank line first is allowed
        b"HEAD /simulator/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=3) as sock:
        for start, end in ((0, 40), (40, 100), (100, len(pipelined))):  # mid-head, mid-body
            sock.sendall(pipelined[start:end])
            time.sleep(0.05)
        with sock.makefile("rb") as stream:
            answers = read_responses(stream, 4, head_only=3)
            assert stream.read() == b""  # then closed, as the last request asked
    assert [status for status, _, _ in answers] == [
        "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK"]
    assert answers[0][2] == b'{"rules": []}'
    assert parse_legacy(answers[1][2].decode())["error"] == "500"
    assert answers[3][1]["content-type"].startswith("text/html")
    assert [a[1]["connection"] for a in answers] == ["keep-alive"] * 3 + ["close"]


def test_garbage_after_a_good_request_is_a_400_and_the_connection_closes(
    server: BackgroundSimulator, url: str
) -> None:
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=3) as sock:
        sock.sendall(b"GET /simulator/api/rules HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01junk\r\n\r\n")
        with sock.makefile("rb") as stream:
            good, bad = read_responses(stream, 2)
            assert stream.read() == b""
    assert good[0] == "HTTP/1.1 200 OK"
    assert (bad[0], bad[1]["connection"], bad[2]) == (
        "HTTP/1.1 400 Bad Request", "close", b"malformed request line\n")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /simulator/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 6000 + b"\r\n", "200"),
        (b"GET /simulator/ HTTP/1.1\r\nHost: x\r\n" + (b"X-Big: " + b"b" * 6000 + b"\r\n") * 3,
         "431"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n", "200"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999\r\n", "413"),
    ],
)
def test_heads_and_bodies_are_bounded(
    server: BackgroundSimulator, url: str, data: bytes, status: str
) -> None:
    """16 KiB of head and 64 KiB of body at most, whatever the number of fields."""
    body = b"x" * 65536 if b"65536" in data else b""
    sent = data + b"Connection: close\r\n\r\n" + body
    status_line, _, _, closed = raw(server.server.port, sent)
    assert (status_line.split(" ")[1], closed) == (status, True)


def test_expect_100_continue_gets_an_interim_answer(server: BackgroundSimulator, url: str) -> None:
    body = b"request=ReqNothing"
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=3) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, answer = read_response(sock)
    assert (status, parse_legacy(answer.decode())["error"]) == ("HTTP/1.1 200 OK", "500")


def test_a_client_that_pipelines_without_reading_is_throttled_not_buffered(
    server: BackgroundSimulator, url: str
) -> None:
    """Reading pauses while our answers are not collected; they all arrive once they are,
    and other clients are served meanwhile."""
    count = 3000  # 12 MB of requests for 16 MB of answers: more than the socket buffers hold
    request = b"GET /simulator/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4000 + b"\r\n\r\n"
    data = request * count
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.server.port))
        sock.setblocking(False)
        sent, stalled_since = 0, time.monotonic()
        while sent < len(data) and time.monotonic() - stalled_since < 0.5:
            try:
                sent += sock.send(data[sent:])
                stalled_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < len(data)  # the server stopped reading: our sending stalled
        assert requests.get(f"{url}/simulator/api/log", timeout=5).status_code == 200
        sock.settimeout(10)
        sender = threading.Thread(target=sock.sendall, args=(data[sent:],), daemon=True)
        sender.start()
        with sock.makefile("rb") as stream:
            answers = read_responses(stream, count)
        sender.join(10)
    assert {status for status, _, _ in answers} == {"HTTP/1.1 200 OK"}


def test_stopping_the_server_closes_open_connections() -> None:
    with BackgroundSimulator(Simulator()) as background:
        sock = socket.create_connection(("127.0.0.1", background.server.port), timeout=3)
        sock.sendall(b"GET /simulator/api/log HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"[]"
    with sock:
        assert sock.recv(1) == b""


def test_idle_and_half_sent_connections_are_closed_after_the_timeout() -> None:
    with BackgroundSimulator(Simulator(), idle_timeout=0.3) as quick:
        port = quick.server.port
        with socket.create_connection(("127.0.0.1", port), timeout=3) as idle, \
                socket.create_connection(("127.0.0.1", port), timeout=3) as slow:
            slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            started = time.monotonic()
            assert idle.recv(1) == b""
            assert slow.recv(1) == b""
            assert time.monotonic() - started < 2
        with socket.create_connection(("127.0.0.1", port), timeout=3) as gone:
            gone.sendall(b"GET / HTTP/1.1\r\nHo")
        assert requests.get(f"{quick.url}/simulator/api/log", timeout=5).json() == []


# -- the command ---------------------------------------------------------------------------
def test_run_simulator_starts_fast_prints_the_page_and_stops_on_sigterm() -> None:
    code = ("import sys; from radius_proxy.simulator import run_simulator; "
            "sys.exit(run_simulator('127.0.0.1:0', sys.argv[1:], None))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-c", code, "*=approve:0.1"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        elapsed = time.monotonic() - started
        page = re.search(r"(http://127\.0\.0\.1:\d+)/simulator/", first)
        assert page, first
        assert requests.get(page.group(0), timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
    assert elapsed < 2.0


def test_run_simulator_rejects_bad_arguments_with_exit_code_2() -> None:
    code = ("import sys; from radius_proxy.simulator import run_simulator; "
            "sys.exit(run_simulator(sys.argv[1], sys.argv[2:], None))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["127.0.0.1:0", "alice=sometimes"], ["nonsense", "*=manual"]):
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, text=True,
                              capture_output=True, timeout=10, check=False)
        assert done.returncode == 2
        assert "radius-proxy simulator:" in done.stderr
        assert done.stdout == ""
