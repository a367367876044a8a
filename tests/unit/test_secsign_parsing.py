"""The SecSign ID client's reading of answers, and its fallback decisions, as plain data.

The readers are pure (bytes in, a reply value out), so every garbage body and error code is
a table row here. The last part drives the whole client against a fake transport (no
sockets) to check which server is asked, and what a push becomes, for each kind of failure.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radius_proxy.backends.secsign import (
    HttpRequest,
    HttpResponse,
    SecSignClient,
    TransportError,
)
from radius_proxy.backends.secsign.legacy import LegacyApi, parse_body
from radius_proxy.backends.secsign.replies import (
    AuthSession,
    Done,
    Garbage,
    Refused,
    Reply,
    Started,
    StateReply,
    Unavailable,
    Verdict,
    falls_back,
    normalize_secsign_id,
    outcome_for_state,
    parse_int,
    server_order,
)
from radius_proxy.backends.secsign.rest import RestApi
from radius_proxy.backends.secsign.transport import ErrorKind
from radius_proxy.config import Secret, SecSignConfig
from radius_proxy.pipeline.ports import PushOutcome, PushResult

ICON = "iVBORw0KGgoAAAANSUhEUgAAAFgAAABYCAYAAABxlTA0+/9a/b+c==="
LEGACY_SESSION = AuthSession(-8337412603900330717, "F2C5F1", "zoidberg", "https://a")
REST_SESSION = AuthSession(6821477223339041056, "", "zoidberg", "https://a")


def ok(body: str | bytes, status: int = 200) -> HttpResponse:
    return HttpResponse(status, body.encode() if isinstance(body, str) else body)


# -- legacy body syntax (section 3.1) ----------------------------------------------------------
def test_legacy_body_keeps_base64_icon_and_splits_on_first_equals() -> None:
    fields = parse_body(f"authsessionid=-5&authsessionicondata={ICON}&x=a=b".encode())
    assert fields == {"authsessionid": "-5", "authsessionicondata": ICON, "x": "a=b"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", {}),
        (b"&&&", {}),
        (b"a=1&", {"a": "1"}),  # the JS API leaves a trailing &
        (b" a = 1 &b=2\r\n", {"a": "1", "b": "2"}),  # Node trims keys and values
        (b"noequals&a=1", {"a": "1"}),
        (b"=orphan&a=", {"a": ""}),
        (b"a=1&a=2", {"a": "1"}),  # the first occurrence wins
        (b"servicename=VPN+Login%20x", {"servicename": "VPN+Login%20x"}),  # never decoded
        (b"\xff\xfe=garbage", None),
    ],
)
def test_legacy_body_edge_cases(body: bytes, expected: dict[str, str] | None) -> None:
    assert parse_body(body) == expected


def test_legacy_start_reads_the_reference_example() -> None:
    body = ("authsessionid=-8337412603900330717&servicename=VPN Login&secsignid=zoidberg"
            "&authsessionstate=1&serviceaddress=vpn.example.com&requestid=F2C5F138E720"
            f"&authsessionicondata={ICON}")
    assert LegacyApi.read_start(ok(body)) == Started(-8337412603900330717, "F2C5F138E720",
                                                     "zoidberg", 1)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ("error=500&errormsg=A SecSign ID does not exist with that name.&errorcode=20000", 200,
         PushOutcome.UNKNOWN_ID),
        ("error=500&errormsg=frozen+now&errorcode=20006", 200, PushOutcome.FROZEN),
        ("error=500&errormsg=A SecSign ID does not exist with that name.", 200,
         PushOutcome.UNKNOWN_ID),  # no errorcode: read the message as Nextcloud does
        ("error=500&errormsg=Missing parameter servicename.", 200, PushOutcome.FAILED),
        ("error=500&errormsg=oops&errorcode=abc", 200, PushOutcome.FAILED),
        ("error=500&errormsg=x&errorcode=20000", 503, PushOutcome.UNKNOWN_ID),  # body wins
        ("<html>not found</html>", 404, PushOutcome.FAILED),
    ],
)
def test_legacy_errors_are_definitive(body: str, status: int, expected: PushOutcome) -> None:
    reply = LegacyApi.read_start(ok(body, status))
    assert isinstance(reply, Refused)
    assert reply.outcome is expected


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ("<html>Bad Gateway</html>", 502, Unavailable),
        ("", 500, Unavailable),
        ("", 200, Garbage),
        ("<html><body>captive portal</body></html>", 200, Garbage),
        ("authsessionid=12", 200, Garbage),  # no requestid
        ("authsessionid=abc&requestid=R", 200, Garbage),
        ("authsessionid=99999999999999999999&requestid=R", 200, Garbage),  # not 64-bit
        ("authsessionid=1&requestid=R&authsessionstate=x", 200, Garbage),
        (b"\xff\xfe".decode("latin-1"), 200, Garbage),
    ],
)
def test_legacy_start_without_a_session(body: str, status: int, kind: type) -> None:
    assert isinstance(LegacyApi.read_start(ok(body, status)), kind)


def test_legacy_text_fields_are_read_either_escaped_or_raw() -> None:
    reply = LegacyApi.read_start(ok("authsessionid=1&requestid=R&secsignid=a%40b.c"))
    assert isinstance(reply, Started)
    assert reply.secsign_id == "a@b.c"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("authsessionid=-8337412603900330717&secsignid=zoidberg&authsessionstate=3",
         StateReply(3, "zoidberg")),
        ("authsessionstate=7", StateReply(7, None)),
        ("authsessionid=1&secsignid=zoidberg&authsessionstate=3",
         Garbage("state answer for another authsessionid")),
        ("secsignid=zoidberg", Garbage("state answer without a valid authsessionstate")),
        ("authsessionstate=-1", Garbage("state answer without a valid authsessionstate")),
        ("authsessionstate=3.0", Garbage("state answer without a valid authsessionstate")),
    ],
)
def test_legacy_state(body: str, expected: Reply) -> None:
    assert LegacyApi.read_state(ok(body), LEGACY_SESSION) == expected


def test_legacy_state_error_400_means_the_session_is_gone() -> None:
    reply = LegacyApi.read_state(ok("error=400&errormsg=invalid session"), LEGACY_SESSION)
    assert isinstance(reply, Refused)
    assert reply.outcome is PushOutcome.FAILED
    assert "error 400" in reply.detail


def test_legacy_requests_carry_the_reference_fields() -> None:
    config = SecSignConfig(api="legacy", plugin_name="MyProxy")
    api = LegacyApi(config)
    start = api.start("https://id", "zoidberg", "VPN " * 100, "vpn.example.com")
    assert start.method == "POST"
    assert start.url == "https://id/"
    form = dict(start.form or ())
    assert form["request"] == "ReqRequestAuthSession"
    assert form["apimethod"]
    assert form["pluginname"] == "MyProxy"
    assert form["showaccesspass"] == "false"
    assert len(form["servicename"]) == 255
    state = dict(api.state("https://id", LEGACY_SESSION).form or ())
    assert state == {"request": "ReqGetAuthSessionState", "apimethod": form["apimethod"],
                     "secsignid": "zoidberg", "authsessionid": "-8337412603900330717",
                     "requestid": "F2C5F1"}
    cancel = dict(api.cancel("https://id", LEGACY_SESSION).form or ())
    assert cancel["request"] == "ReqCancelAuthSession"


# -- REST (section 7) --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (409, "", Refused),
        (404, '{"error": 404, "errormsg": "x", "errorcode": 20000}', Refused),
        (500, '{"error": 500, "errormsg": "x", "errorcode": 20000}', Refused),
        (500, '{"errormsg": "A SecSign ID does not exist with that name."}', Refused),
        (500, '{"errormsg": "internal error"}', Unavailable),
        (502, "<html>Bad Gateway</html>", Unavailable),
        (503, "", Unavailable),
        (401, '{"error": 401}', Refused),
        (403, "", Refused),
        (400, '{"errormsg": "Bad Request"}', Refused),
        (404, "<html>REST-Call not found</html>", Refused),
        (302, "", Refused),
        (200, "not json", Garbage),
        (200, "[1, 2]", Garbage),
        (200, "{}", Garbage),
        (200, '{"authsessionid": true}', Garbage),
        (200, '{"authsessionid": 1.5}', Garbage),
        (200, '{"authsessionid": 9223372036854775808}', Garbage),
        (200, '{"authsessionid": 5, "secsignid": 7}', Garbage),
        (200, "[" * 100_000, Garbage),  # nesting deep enough to hit the recursion limit
        (200, '{"authsessionid": -9223372036854775808}', Started),
        (200, '{"authsessionid": "-42", "secsignid": "zoidberg"}', Started),
    ],
)
def test_rest_start_answers(status: int, body: str, expected: type) -> None:
    assert isinstance(RestApi.read_start(ok(body, status)), expected)


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (409, '{"errormsg": "frozen"}', PushOutcome.FROZEN),
        (404, '{"errorcode": 20000}', PushOutcome.UNKNOWN_ID),
        (400, '{"errorcode": "20006"}', PushOutcome.FROZEN),
        (500, '{"errorcode": 20006}', PushOutcome.FROZEN),
        (401, "", PushOutcome.FAILED),
        (404, '{"errormsg": "REST-Call not found."}', PushOutcome.FAILED),
    ],
)
def test_rest_error_mapping(status: int, body: str, outcome: PushOutcome) -> None:
    reply = RestApi.read_start(ok(body, status))
    assert isinstance(reply, Refused)
    assert reply.outcome is outcome


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"authsessionstate": 3}', StateReply(3, None)),
        ('{"authsessionstate": "1"}', StateReply(1, None)),
        ('{"authsessionstate": 3, "secsignid": "x"}', StateReply(3, "x")),
        ('{"authsessionstate": true}', Garbage),
        ('{"authsessionstate": null}', Garbage),
        ('{"authsessionstate": 3, "authsessionid": 1}', Garbage),
        ('{"state": 3}', Garbage),
    ],
)
def test_rest_state(body: str, expected: Reply | type) -> None:
    reply = RestApi.read_state(ok(body), REST_SESSION)
    if isinstance(expected, type):
        assert isinstance(reply, expected)
    else:
        assert reply == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"valid": true}', Verdict(True)),
        ('{"valid": false}', Verdict(False)),
        ('{"valid": "true"}', Garbage),
        ('{"valid": 1}', Garbage),
        ("{}", Garbage),
    ],
)
def test_rest_totp(body: str, expected: Reply | type) -> None:
    reply = RestApi.read_verify(ok(body))
    assert reply == expected if not isinstance(expected, type) else isinstance(reply, expected)


def test_rest_requests() -> None:
    config = SecSignConfig(pin_account="acct", pin_password=Secret("pw"), access_pass=True)
    api = RestApi(config)
    start = api.start("https://id", "zoidberg", "VPN", "vpn")
    assert (start.method, start.url) == ("GET", "https://id/rest/v2/AuthSession")
    assert dict(start.params)["showaccesspassicons"] == "true"
    assert start.auth == ("acct", "pw")
    assert "pw" not in repr(start)
    assert api.state("https://id", REST_SESSION).url.endswith("/AuthSession/6821477223339041056")
    assert api.cancel("https://id", REST_SESSION).method == "DELETE"
    verify = api.verify("https://id", "zoidberg", "12/34")
    assert verify.url == "https://id/rest/v2/TOTP/Verify/12%2F34"


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=300))
def test_no_answer_makes_a_reader_raise(status: int, body: bytes) -> None:
    response = HttpResponse(status, body)
    for reply in (
        LegacyApi.read_start(response), LegacyApi.read_state(response, LEGACY_SESSION),
        LegacyApi.read_cancel(response), RestApi.read_start(response),
        RestApi.read_state(response, REST_SESSION), RestApi.read_cancel(response),
        RestApi.read_verify(response), RestApi.read_probe(response),
    ):
        assert isinstance(reply, Started | StateReply | Done | Verdict | Refused | Unavailable
                          | Garbage)


# -- states and identities (section 3.3) ----------------------------------------------------
@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (0, PushOutcome.FAILED),
        (1, None),
        (2, PushOutcome.TIMEOUT),
        (3, PushOutcome.APPROVED),
        (4, PushOutcome.DENIED),
        (5, PushOutcome.CANCELED),
        (6, PushOutcome.CANCELED),
        (7, None),
        (8, PushOutcome.FAILED),
        (9, PushOutcome.FAILED),
        (999, PushOutcome.FAILED),
    ],
)
def test_state_mapping(state: int, outcome: PushOutcome | None) -> None:
    assert outcome_for_state(state) is outcome


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" Alice.Example ", "alice.example"), ("a@b-c_d", "a@b-c_d"), ("", None),
     ("a b", None), ("a&b", None), ("ä", None), ("x" * 256, None)],
)
def test_secsign_id_normalization(text: str, expected: str | None) -> None:
    assert normalize_secsign_id(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-5, -5), ("-5", -5), (" 7 ", 7), (True, None), (1.0, None), ("1e3", None),
     (2**63, None), (-(2**63), -(2**63)), (None, None)],
)
def test_parse_int(value: object, expected: int | None) -> None:
    assert parse_int(value) == expected


# -- fallback decisions ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "idempotent", "expected"),
    [
        (Unavailable("refused"), False, True),
        (Unavailable("HTTP 503"), True, True),
        (Garbage("html"), True, True),
        (Garbage("html"), False, False),  # a start is never sent twice
        (Refused(PushOutcome.FAILED, "HTTP 400"), True, False),
        (Refused(PushOutcome.UNKNOWN_ID, "20000"), False, False),
        (StateReply(1), True, False),
        (Started(1), False, False),
    ],
)
def test_falls_back(reply: Reply, idempotent: bool, expected: bool) -> None:
    assert falls_back(reply, idempotent) is expected


def test_server_order() -> None:
    servers = ["a", "b", "c"]
    assert server_order(servers, {}, 100.0) == ["a", "b", "c"]
    assert server_order(servers, {"a": 130.0}, 100.0) == ["b", "c", "a"]
    assert server_order(servers, {"a": 99.0}, 100.0) == ["a", "b", "c"]  # rested long enough
    assert server_order(servers, {}, 100.0, first="c") == ["c", "a", "b"]
    assert server_order(servers, {"c": 130.0}, 100.0, first="c") == ["a", "b", "c"]


# -- the client against a fake transport -----------------------------------------------------
Handler = Callable[[HttpRequest], HttpResponse]


class FakeTransport:
    """Answers by server host; records every request (called from worker threads)."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.requests: list[HttpRequest] = []
        self._lock = threading.Lock()

    def __call__(self, request: HttpRequest, timeout: float) -> HttpResponse:
        assert timeout == 1.0
        with self._lock:
            self.requests.append(request)
        host = request.url.split("/")[2]
        return self.handlers[host](request)

    def hosts(self) -> list[str]:
        return [r.url.split("/")[2] for r in self.requests]

    def kinds(self) -> list[str]:
        return [_kind(r) for r in self.requests]


def _kind(request: HttpRequest) -> str:
    if request.form is not None:
        return dict(request.form)["request"]
    if request.method == "DELETE":
        return "cancel"
    return "start" if request.url.endswith("/AuthSession") else "other"


def down(request: HttpRequest) -> HttpResponse:
    raise TransportError("ConnectionError")


def rest_server(states: Iterator[int]) -> Handler:
    def handle(request: HttpRequest) -> HttpResponse:
        if request.method == "DELETE":
            return ok('{"authsessionid": 5, "authsessionstate": 6}')
        if request.url.endswith("/AuthSession"):
            return ok('{"authsessionid": 5, "secsignid": "zoidberg"}')
        return ok(f'{{"authsessionstate": {next(states)}}}')
    return handle


def config(api: str = "rest", **changes: object) -> SecSignConfig:
    values: dict[str, object] = {
        "api": api, "servers": ("https://a", "https://b"), "pin_account": "acct",
        "pin_password": Secret("pw"), "poll_interval_seconds": 0.01,
        "push_timeout_seconds": 5.0, "request_timeout_seconds": 1.0,
    }
    values.update(changes)
    return SecSignConfig(**values)  # type: ignore[arg-type]


def push(fake: FakeTransport, cfg: SecSignConfig | None = None) -> PushOutcome:
    async def run() -> PushOutcome:
        client = SecSignClient(cfg or config(), transport=fake)
        try:
            return (await client.push("Zoidberg", "VPN", "vpn.example.com")).outcome
        finally:
            await client.close()
    return asyncio.run(run())


def test_no_server_answers_the_start_is_unreachable() -> None:
    fake = FakeTransport({"a": down, "b": lambda r: ok("", 503)})
    assert push(fake) is PushOutcome.UNREACHABLE
    assert fake.hosts() == ["a", "b"]


@pytest.mark.parametrize(
    ("kind", "outcome", "hosts"),
    [
        (ErrorKind.GARBAGE, PushOutcome.FAILED, ["a"]),  # an answer, if nonsense: no failmode
        (ErrorKind.CONNECT, PushOutcome.UNREACHABLE, ["a", "b"]),
        (ErrorKind.TIMEOUT, PushOutcome.UNREACHABLE, ["a", "b"]),
        (ErrorKind.CERTIFICATE, PushOutcome.UNREACHABLE, ["a", "b"]),
    ],
)
def test_transport_error_kinds_on_the_start(kind: ErrorKind, outcome: PushOutcome,
                                            hosts: list[str]) -> None:
    def broken(request: HttpRequest) -> HttpResponse:
        raise TransportError(f"broken ({kind.value})", kind)

    fake = FakeTransport({"a": broken, "b": broken})
    assert push(fake) is outcome
    assert fake.hosts() == hosts


def test_garbage_start_fails_and_is_not_sent_again() -> None:
    fake = FakeTransport({"a": lambda r: ok("<html>portal</html>"), "b": down})
    assert push(fake) is PushOutcome.FAILED
    assert fake.hosts() == ["a"]


def test_a_refusal_is_not_retried_elsewhere() -> None:
    fake = FakeTransport({"a": lambda r: ok('{"errorcode": 20000}', 404), "b": down})
    assert push(fake) is PushOutcome.UNKNOWN_ID
    assert fake.hosts() == ["a"]


def test_5xx_falls_back_and_polls_the_server_that_started() -> None:
    fake = FakeTransport({"a": lambda r: ok("", 502), "b": rest_server(iter([1, 7, 3]))})
    assert push(fake) is PushOutcome.APPROVED
    assert fake.hosts() == ["a", "b", "b", "b", "b"]


def test_a_push_that_loses_its_server_fails_after_a_few_rounds_and_cancels() -> None:
    calls = iter(range(1000))

    def flaky(request: HttpRequest) -> HttpResponse:
        if next(calls) == 0:
            return ok('{"authsessionid": 5}')
        raise TransportError("ConnectionError")

    fake = FakeTransport({"a": flaky, "b": lambda r: ok("nonsense")})
    assert push(fake) is PushOutcome.FAILED
    assert fake.kinds().count("other") == 6  # 3 rounds x 2 servers
    assert fake.kinds()[-2:] == ["cancel", "cancel"]


def test_a_session_reported_for_another_id_fails() -> None:
    fake = FakeTransport({"a": lambda r: ok('{"authsessionid": 5, "secsignid": "mallory"}')})
    assert push(fake, config(servers=("https://a",))) is PushOutcome.FAILED
    assert fake.kinds() == ["start", "cancel"]


def test_legacy_approve_never_releases() -> None:
    def legacy(request: HttpRequest) -> HttpResponse:
        kind = dict(request.form or ())["request"]
        if kind == "ReqRequestAuthSession":
            return ok(f"authsessionid=-3&requestid=R&secsignid=zoidberg&authsessionstate=1"
                      f"&authsessionicondata={ICON}")
        return ok("authsessionid=-3&secsignid=zoidberg&authsessionstate=3")

    fake = FakeTransport({"a": legacy})
    assert push(fake, config("legacy", servers=("https://a",))) is PushOutcome.APPROVED
    assert fake.kinds() == ["ReqRequestAuthSession", "ReqGetAuthSessionState"]
    assert all(r.auth is None for r in fake.requests)


def test_passcodes_on_the_legacy_api() -> None:
    fake = FakeTransport({"a": lambda r: ok('{"valid": true}')})

    async def run(cfg: SecSignConfig) -> tuple[PushOutcome, str]:
        client = SecSignClient(cfg, transport=fake)
        try:
            result = await client.verify_code("zoidberg", " 123456 ")
            return result.outcome, result.detail
        finally:
            await client.close()

    no_pin = config("legacy", pin_account="", servers=("https://a",))
    assert asyncio.run(run(no_pin)) == (PushOutcome.FAILED, "passcodes need the REST API")
    assert fake.requests == []
    with_pin = config("legacy", servers=("https://a",))
    assert asyncio.run(run(with_pin))[0] is PushOutcome.APPROVED
    assert fake.requests[0].url == "https://a/rest/v2/TOTP/Verify/123456"
    assert fake.requests[0].auth == ("acct", "pw")


def test_no_servers_configured_is_never_unreachable() -> None:
    assert push(FakeTransport({}), config(servers=())) is PushOutcome.FAILED


def test_a_start_still_in_flight_at_the_deadline_times_out_and_is_withdrawn() -> None:
    def slow(request: HttpRequest) -> HttpResponse:
        if _kind(request) == "start":
            time.sleep(0.4)
            return ok('{"authsessionid": 5}')
        return ok('{"authsessionid": 5, "authsessionstate": 6}')

    fake = FakeTransport({"a": slow})
    cfg = config(servers=("https://a",), push_timeout_seconds=0.2)
    assert push(fake, cfg) is PushOutcome.TIMEOUT  # not UNREACHABLE: it may have started
    assert fake.kinds() == ["start", "cancel"]  # close() waited for the late withdrawal


def test_the_loop_keeps_running_while_http_blocks() -> None:
    def blocking(request: HttpRequest) -> HttpResponse:
        time.sleep(0.3)
        return ok('{"valid": true}')

    async def run() -> int:
        client = SecSignClient(config(servers=("https://a",)),
                               transport=FakeTransport({"a": blocking}))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            results = await asyncio.gather(*(client.verify_code("z", "123456") for _ in range(4)))
            assert all(r.approved for r in results)
        finally:
            ticker.cancel()
            await client.close()
        return ticks

    assert asyncio.run(run()) >= 15


# -- the client on an async transport (HTTP on the loop, as in production) ---------------------
class AsyncFake:
    """An async transport answering by request kind; `hold` keeps state requests in flight."""

    def __init__(self, states: Iterator[int], start: str = '{"authsessionid": 5}') -> None:
        self.states = states
        self.start = start
        self.kinds: list[str] = []
        self.hold: asyncio.Event | None = None
        self._sent = asyncio.Event()

    async def sent(self, kind: str, count: int = 1) -> None:
        """Until `count` requests of this kind have been sent."""
        while self.kinds.count(kind) < count:
            self._sent.clear()
            await self._sent.wait()

    async def __call__(self, request: HttpRequest, seconds: float) -> HttpResponse:
        kind = _kind(request)
        self.kinds.append(kind)
        self._sent.set()
        await asyncio.sleep(0)  # a real exchange always yields to the loop
        if kind == "start":
            return ok(self.start)
        if kind == "cancel":
            return ok('{"authsessionid": 5, "authsessionstate": 6}')
        if self.hold is not None:
            await self.hold.wait()
        return ok(f'{{"authsessionstate": {next(self.states)}}}')


def test_async_transport_polls_on_the_loop_until_approved() -> None:
    fake = AsyncFake(iter([1, 7, 7, 3]))
    assert push(fake) is PushOutcome.APPROVED  # type: ignore[arg-type]
    assert fake.kinds == ["start", "other", "other", "other", "other"]


def test_many_pushes_few_workers_none_is_forgotten() -> None:
    """More due pushes than workers, polled again and again: every one finishes.

    Guards the scheduler's hand-over between a worker that is running dry and a wake-up
    that brings new work (a lost item would wait for its deadline).
    """
    async def run() -> list[PushOutcome]:
        rounds: dict[str, int] = {}

        async def transport(request: HttpRequest, seconds: float) -> HttpResponse:
            await asyncio.sleep(0)
            if _kind(request) == "start":
                return ok(f'{{"authsessionid": {len(rounds)}}}')
            rounds[request.url] = rounds.get(request.url, 0) + 1
            return ok(f'{{"authsessionstate": {3 if rounds[request.url] > 3 else 1}}}')

        client = SecSignClient(config(servers=("https://a",), max_connections=3,
                                      poll_interval_seconds=0.001), transport=transport)
        try:
            async with asyncio.timeout(4):
                results = await asyncio.gather(
                    *(client.push(f"user{i}", "VPN", "vpn") for i in range(300)))
            return [r.outcome for r in results]
        finally:
            await client.close()

    assert asyncio.run(run()) == [PushOutcome.APPROVED] * 300


def test_the_deadline_ends_a_wait_on_time_even_while_a_poll_hangs() -> None:
    fake = AsyncFake(iter([1] * 1000))
    fake.hold = asyncio.Event()  # never set: every state request hangs

    async def run() -> tuple[PushOutcome, float]:
        client = SecSignClient(config(servers=("https://a",), push_timeout_seconds=0.3),
                               transport=fake)
        try:
            began = time.monotonic()
            result = await client.push("zoidberg", "VPN", "vpn")
            return result.outcome, time.monotonic() - began
        finally:
            await client.close()

    outcome, elapsed = asyncio.run(run())
    assert outcome is PushOutcome.TIMEOUT
    assert 0.3 <= elapsed < 0.6
    assert fake.kinds == ["start", "other", "cancel"]


def test_a_cancelled_wait_withdraws_the_session() -> None:
    fake = AsyncFake(iter([1] * 1000))

    async def run() -> None:
        client = SecSignClient(config(servers=("https://a",)), transport=fake)
        try:
            waiting = asyncio.create_task(client.push("zoidberg", "VPN", "vpn"))
            await fake.sent("other", 2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            await client.close()  # waits for the withdrawal

    asyncio.run(run())
    assert fake.kinds[-1] == "cancel"
    assert fake.kinds.count("start") == 1


def test_closing_fails_the_pushes_still_waiting() -> None:
    fake = AsyncFake(iter([1] * 1000))

    async def run() -> PushResult:
        client = SecSignClient(config(servers=("https://a",)), transport=fake)
        waiting = asyncio.create_task(client.push("zoidberg", "VPN", "vpn"))
        await fake.sent("other")
        await client.close()
        return await asyncio.wait_for(waiting, 1)

    result = asyncio.run(run())
    assert (result.outcome, result.detail) == (PushOutcome.FAILED,
                                               "the SecSign ID client is closed")


def test_a_bug_in_one_poll_fails_that_push_only() -> None:
    async def run() -> tuple[BaseException | PushResult, ...]:
        async def transport(request: HttpRequest, seconds: float) -> HttpResponse:
            kinds.append(_kind(request))
            if _kind(request) == "start":
                return ok('{"authsessionid": 5}')
            if _kind(request) == "cancel":
                return ok("{}")
            if _kind(request) == "other" and "bad" not in seen:
                seen.add("bad")
                raise RuntimeError("a bug")
            return ok('{"authsessionstate": 3}')

        seen: set[str] = set()
        kinds: list[str] = []
        client = SecSignClient(config(servers=("https://a",)), transport=transport)
        try:
            first = await asyncio.gather(client.push("u1", "VPN", "vpn"),
                                         return_exceptions=True)
            second = await client.push("u2", "VPN", "vpn")
            return (*first, second)
        finally:
            await client.close()
            assert kinds.count("cancel") == 1  # the broken push was withdrawn

    first, second = asyncio.run(run())
    assert isinstance(first, RuntimeError)
    assert isinstance(second, PushResult)
    assert second.approved


def test_poll_intervals_are_jittered_within_ten_percent() -> None:
    client = SecSignClient(config(poll_interval_seconds=2.0), transport=AsyncFake(iter(())))
    intervals = [client._interval() for _ in range(2000)]
    assert 1.8 <= min(intervals) < 1.85
    assert 2.15 < max(intervals) <= 2.2


def _cancelled_timers(objects: list[object]) -> int:
    """Cancelled timer handles among `objects`, with the contexts copied for them alone.

    asyncio keeps a cancelled timer in its heap until it comes due or until cancelled ones
    are over half of the heap, so whether the start's timeout (cancelled once the start is
    answered) is still there when counting depends on the loop, not on the push.
    """
    import contextvars
    import gc

    timers = [o for o in objects if isinstance(o, asyncio.TimerHandle) and o.cancelled()]
    new = {id(o) for o in objects}
    contexts = {id(r) for t in timers for r in gc.get_referents(t)
                if isinstance(r, contextvars.Context) and id(r) in new}
    return len(timers) + len(contexts)


def test_a_waiting_push_holds_few_objects() -> None:
    """The wait-at-scale budget: a waiting push is a future and a heap entry, not a task
    with timers (the first version kept about 29 GC-tracked objects per push)."""
    import gc

    async def run() -> float:
        fake = AsyncFake(iter([1] * 100_000))
        client = SecSignClient(config(servers=("https://a",), poll_interval_seconds=0.05,
                                      push_timeout_seconds=60.0), transport=fake)
        gc.collect()
        before = {id(o) for o in gc.get_objects()}
        waiting = [asyncio.create_task(client.push(f"u{i}", "VPN", "vpn")) for i in range(500)]
        await fake.sent("other", 1000)  # everyone has polled at least once
        gc.collect()
        now = gc.get_objects()
        lingering = _cancelled_timers([o for o in now if id(o) not in before])
        per_push = (len(now) - len(before) - lingering) / len(waiting)
        del now
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await client.close()
        return per_push

    assert asyncio.run(run()) < 16  # 14 measured, 5 of them the caller's own task
