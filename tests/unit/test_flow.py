"""The orchestrator with fake ports: primary -> identity -> policy -> second factor -> reply.

Every port is a small fake that records its calls and advances an injected clock by a fixed
amount (a password check costs 25 ms, a push 3 s), so the audit event's timings are exact.
Each login runs through `asyncio.run`; the concurrency tests run two in one loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import structlog

from radius_proxy.config import ClientConfig, Config, MessagesConfig, PolicyConfig, Secret
from radius_proxy.pipeline.flow import Decision, Pipeline, split_passcode
from radius_proxy.pipeline.ports import (
    AuthRequest,
    DirectoryEntry,
    PrimaryOutcome,
    PrimaryResult,
    PushOutcome,
    PushResult,
)
from radius_proxy.state.memory import MemoryStore

SSH = ClientConfig(name="ssh-hosts", networks=("10.1.0.0/16",), secret=Secret("x" * 24),
                   service_name="SSH login to {nas_identifier}",
                   service_address="{calling_station_id}")
VPN = ClientConfig(name="vpn", networks=("192.0.2.0/24",), secret=Secret("y" * 24))
STATION = "198.51.100.7"
CODE = "123456"
UPSTREAM_STATE = b"upstream-state-from-their-server"
OTP = b"424242"

PASSWORDS = {"alice": b"alicepass", "bob": b"bob,pass", "carl": b"secret,123456",
             "dora": b"dorapass", "erin": b"erinpass", "olga": b"olgapass"}
SECSIGN_IDS = {"alice": "alice.example", "bob": "bob.example", "carl": "carl.example",
               "erin": "erin.example", "olga": "olga.example"}
GROUPS = {"erin": frozenset({"Service-Accounts"})}


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


class FakePrimary:
    """Passwords from PASSWORDS; "olga" gets an upstream challenge first (an OTP server)."""

    name = "fake-primary"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[AuthRequest] = []
        self.forced: PrimaryResult | None = None
        self.reply_attributes: tuple[tuple[str, Any], ...] = (("Class", b"vpn-group"),)
        self.challenge_attributes: tuple[tuple[str, Any], ...] = (
            ("Reply-Message", "Enter your OTP"), ("Prompt", 0), ("Class", b"not-for-the-nas"))

    async def authenticate(self, request: AuthRequest) -> PrimaryResult:
        self.calls.append(request)
        self.clock.now += 0.025
        if self.forced is not None:
            return self.forced
        name = request.username
        if name == "olga" and request.state is None and request.password == PASSWORDS[name]:
            return PrimaryResult(PrimaryOutcome.CHALLENGE, "upstream_challenge",
                                 self.challenge_attributes, challenge_state=UPSTREAM_STATE)
        if name == "olga" and request.state is not None:
            ok = request.state == UPSTREAM_STATE and request.password == OTP
        else:
            ok = name in PASSWORDS and request.password == PASSWORDS[name]
        if not ok:
            return PrimaryResult(PrimaryOutcome.REJECT,
                                 "bad_password" if name in PASSWORDS else "unknown_user")
        return PrimaryResult(PrimaryOutcome.ACCEPT, reply_attributes=self.reply_attributes,
                             entry=DirectoryEntry("fake", None, GROUPS.get(name, frozenset())))


class FakeIdentity:
    name = "fake-map"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def lookup(self, username: str, primary: PrimaryResult) -> DirectoryEntry | None:
        self.calls.append(username)
        sid = SECSIGN_IDS.get(username)
        return DirectoryEntry("map", sid) if sid else None


class FakeSecondFactor:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.outcome = PushOutcome.APPROVED
        self.sleep = 0.0
        self.pushes: list[tuple[str, str, str]] = []
        self.codes: list[tuple[str, str]] = []

    async def push(self, secsign_id: str, service_name: str, service_address: str) -> PushResult:
        self.pushes.append((secsign_id, service_name, service_address))
        if self.sleep:
            await asyncio.sleep(self.sleep)
        self.clock.now += 3.0
        return PushResult(self.outcome, f"fake {self.outcome.value}")

    async def verify_code(self, secsign_id: str, code: str) -> PushResult:
        self.codes.append((secsign_id, code))
        self.clock.now += 0.5
        if self.outcome is not PushOutcome.APPROVED:
            return PushResult(self.outcome)
        return PushResult(PushOutcome.APPROVED if code == CODE else PushOutcome.DENIED)


@dataclass
class World:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    store_class: type[MemoryStore] = MemoryStore

    def __post_init__(self) -> None:
        self.clock = Clock()
        self.primary = FakePrimary(self.clock)
        self.identity = FakeIdentity()
        self.second = FakeSecondFactor(self.clock)
        self.store = self.store_class(self.clock)
        self.config = Config(clients=(SSH, VPN), policy=self.policy)
        self.pipeline = Pipeline(config=self.config, primary=self.primary,
                                 identity=[self.identity], second_factor=self.second,
                                 store=self.store, clock=self.clock)

    def handle(self, request: AuthRequest, client: ClientConfig = SSH) -> Decision:
        return asyncio.run(self.pipeline.handle(request, client))

    def handle_together(self, *requests: AuthRequest) -> list[Decision]:
        async def both() -> list[Decision]:
            return list(await asyncio.gather(*(self.pipeline.handle(r, SSH)
                                               for r in requests)))
        return asyncio.run(both())


def req(username: str = "alice", password: bytes | None = None, *, station: str = STATION,
        state: bytes | None = None, client: str = "ssh-hosts",
        attributes: dict[str, tuple[Any, ...]] | None = None) -> AuthRequest:
    attrs = {"User-Name": (username,), "NAS-Identifier": ("ssh-1",),
             "NAS-IP-Address": ("10.1.0.5",), "Calling-Station-Id": (station,)}
    if attributes is not None:
        attrs = attributes
    return AuthRequest(request_id="req-1", client=client, client_ip="10.1.0.5",
                       username=username,
                       password=PASSWORDS.get(username, b"x") if password is None else password,
                       attributes=attrs, state=state)


def policy(**fields: Any) -> PolicyConfig:
    return PolicyConfig(**fields)


def attr(decision: Decision, name: str) -> list[Any]:
    return [v for n, v in decision.attributes if n == name]


def outcome(decision: Decision) -> tuple[str, str]:
    return decision.outcome, decision.reason


# -- split_passcode -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (b"password,123456", (b"password", "123456")),
        (b"password,1234567", (b"password", "1234567")),
        (b"password,12345678", (b"password", "12345678")),
        (b"password,12345", (b"password,12345", None)),
        (b"password,123456789", (b"password,123456789", None)),
        (b"pass,word,123456", (b"pass,word", "123456")),
        (b"bob,pass", (b"bob,pass", None)),
        (b"a,b,c", (b"a,b,c", None)),
        (b",123456", (b"", "123456")),
        (b"123456", (b"123456", None)),
        (b"password,", (b"password,", None)),
        (b"password,123456,", (b"password,123456,", None)),
        (b"password,12 3456", (b"password,12 3456", None)),
        (b"password,12345a", (b"password,12345a", None)),
        (b"password,-12345", (b"password,-12345", None)),
        ("password,١٢٣٤٥٦".encode(), ("password,١٢٣٤٥٦".encode(), None)),  # not ASCII digits
        (b"p\xff\xfe,654321", (b"p\xff\xfe", "654321")),
        (b"", (b"", None)),
    ],
)
def test_split_passcode(password: bytes, expected: tuple[bytes, str | None]) -> None:
    assert split_passcode(password) == expected


# -- push mode: the plain journeys ------------------------------------------------------------
def test_push_approved() -> None:
    w = World()
    decision = w.handle(req())
    assert outcome(decision) == ("accept", "push_approved")
    assert decision.attributes == (("Class", b"vpn-group"),)  # pass-through from the primary
    assert w.second.pushes == [("alice.example", "SSH login to ssh-1", STATION)]
    assert [c.password for c in w.primary.calls] == [b"alicepass"]
    assert w.second.codes == []
    assert w.pipeline.pending_pushes == 0


def test_push_denied() -> None:
    w = World()
    w.second.outcome = PushOutcome.DENIED
    decision = w.handle(req())
    assert outcome(decision) == ("reject", "push_denied")
    assert decision.attributes == ()


def test_service_texts_from_templates_with_missing_attributes() -> None:
    w = World()
    client = replace(SSH, service_name="{user_name}@{client} via {nas_port}",
                     service_address="{nas_identifier}/{calling_station_id}")
    asyncio.run(w.pipeline.handle(req(attributes={"NAS-Identifier": ("edge",)}), client))
    assert w.second.pushes == [("alice.example", "alice@ssh-hosts via ", "edge/")]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (PrimaryResult(PrimaryOutcome.REJECT, "bad_password"), ("reject", "primary_rejected")),
        (PrimaryResult(PrimaryOutcome.REJECT, "account_disabled"),
         ("reject", "primary_rejected")),
        (PrimaryResult(PrimaryOutcome.UNAVAILABLE, "upstream_timeout"),
         ("reject", "primary_unavailable")),
    ],
)
def test_primary_refusal_ends_the_flow(result: PrimaryResult, expected: tuple[str, str]) -> None:
    w = World()
    w.primary.forced = result
    with structlog.testing.capture_logs() as logs:
        decision = w.handle(req())
    assert outcome(decision) == expected
    assert decision.attributes == ()
    assert w.identity.calls == []
    assert w.second.pushes == []
    (event,) = [e for e in logs if e["event"] == "auth"]
    assert event["primary_reason"] == result.reason


@pytest.mark.parametrize(("username", "password"), [("alice", b"wrong"), ("mallory", b"x")])
def test_wrong_password_or_unknown_user(username: str, password: bytes) -> None:
    w = World()
    assert outcome(w.handle(req(username, password))) == ("reject", "primary_rejected")
    assert w.second.pushes == []


@pytest.mark.parametrize(
    ("no_secsign_id", "expected"),
    [("reject", ("reject", "no_secsign_id")), ("accept", ("accept", "no_secsign_id"))],
)
def test_user_without_secsign_id(no_secsign_id: str, expected: tuple[str, str]) -> None:
    w = World(policy(no_secsign_id=no_secsign_id))
    decision = w.handle(req("dora"))
    assert outcome(decision) == expected
    assert w.second.pushes == []
    if expected[0] == "accept":
        assert decision.attributes == (("Class", b"vpn-group"),)


def test_bypass_group_skips_the_push_case_insensitively() -> None:
    w = World(policy(bypass_2fa_groups=("service-accounts",)))
    assert outcome(w.handle(req("erin"))) == ("accept", "bypass_group")
    assert w.second.pushes == []


def test_allow_groups_refuse_outsiders_before_any_push() -> None:
    w = World(policy(allow_groups=("vpn-users",)))
    assert outcome(w.handle(req())) == ("reject", "not_in_allowed_group")
    assert w.second.pushes == []


def test_require_groups_let_others_in_on_the_password() -> None:
    w = World(policy(require_2fa_groups=("admins",)))
    assert outcome(w.handle(req())) == ("accept", "2fa_not_required")
    assert w.second.pushes == []


def test_groups_come_from_primary_and_identity_entries() -> None:
    w = World(policy(require_2fa_groups=("service-accounts",)))
    assert outcome(w.handle(req("erin"))) == ("accept", "push_approved")
    assert len(w.second.pushes) == 1


# -- failmode -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failmode", "push", "expected"),
    [
        ("secure", PushOutcome.UNREACHABLE, ("reject", "id_server_unreachable")),
        ("safe", PushOutcome.UNREACHABLE, ("accept", "failmode_safe")),
        ("secure", PushOutcome.FAILED, ("reject", "push_failed")),
        ("safe", PushOutcome.FAILED, ("reject", "push_failed")),
        ("safe", PushOutcome.TIMEOUT, ("reject", "push_timeout")),
        ("safe", PushOutcome.DENIED, ("reject", "push_denied")),
        ("safe", PushOutcome.CANCELED, ("reject", "push_canceled")),
        ("safe", PushOutcome.UNKNOWN_ID, ("reject", "unknown_secsign_id")),
        ("safe", PushOutcome.FROZEN, ("reject", "frozen_secsign_id")),
    ],
)
def test_failmode(failmode: str, push: PushOutcome, expected: tuple[str, str]) -> None:
    w = World(policy(failmode=failmode))
    w.second.outcome = push
    assert outcome(w.handle(req())) == expected


def test_failmode_safe_accept_is_not_remembered() -> None:
    w = World(policy(failmode="safe", remember_minutes=10))
    w.second.outcome = PushOutcome.UNREACHABLE
    assert outcome(w.handle(req())) == ("accept", "failmode_safe")
    w.second.outcome = PushOutcome.DENIED
    assert outcome(w.handle(req())) == ("reject", "push_denied")
    assert len(w.second.pushes) == 2


# -- passcodes --------------------------------------------------------------------------------
def test_passcode_in_push_mode_verifies_the_code_instead_of_pushing() -> None:
    w = World()
    decision = w.handle(req(password=b"alicepass," + CODE.encode()))
    assert outcome(decision) == ("accept", "passcode_accepted")
    assert w.second.codes == [("alice.example", CODE)]
    assert w.second.pushes == []
    assert [c.password for c in w.primary.calls] == [b"alicepass"]


def test_wrong_passcode_is_rejected() -> None:
    w = World()
    assert outcome(w.handle(req(password=b"alicepass,654321"))) == ("reject",
                                                                    "passcode_rejected")
    assert w.second.pushes == []


def test_password_with_a_comma_is_not_split() -> None:
    w = World()
    assert outcome(w.handle(req("bob"))) == ("accept", "push_approved")
    assert [c.password for c in w.primary.calls] == [b"bob,pass"]
    assert w.second.codes == []


def test_password_that_looks_like_a_passcode_is_tried_whole() -> None:
    w = World()
    assert outcome(w.handle(req("carl"))) == ("accept", "push_approved")
    assert [c.password for c in w.primary.calls] == [b"secret", b"secret,123456"]
    assert w.second.codes == []
    assert len(w.second.pushes) == 1


def test_password_that_looks_like_a_passcode_plus_a_real_passcode() -> None:
    w = World()
    decision = w.handle(req("carl", b"secret,123456," + CODE.encode()))
    assert outcome(decision) == ("accept", "passcode_accepted")
    assert w.second.codes == [("carl.example", CODE)]


def test_passcodes_disabled_means_the_whole_string_is_the_password() -> None:
    w = World(policy(passcodes=False))
    assert outcome(w.handle(req(password=b"alicepass,123456"))) == ("reject",
                                                                    "primary_rejected")
    assert [c.password for c in w.primary.calls] == [b"alicepass,123456"]
    assert w.second.codes == []


def test_failmode_safe_applies_to_an_unreachable_passcode_check() -> None:
    w = World(policy(failmode="safe"))
    w.second.outcome = PushOutcome.UNREACHABLE
    assert outcome(w.handle(req(password=b"alicepass,123456"))) == ("accept", "failmode_safe")


# -- challenge mode -----------------------------------------------------------------------------
def start_challenge(w: World, username: str = "alice") -> bytes:
    decision = w.handle(req(username))
    assert outcome(decision) == ("challenge", "challenge_sent")
    (state,) = attr(decision, "State")
    return bytes(state)


def test_challenge_has_one_short_reply_message_a_state_and_a_prompt() -> None:
    w = World(policy(mode="challenge"))
    decision = w.handle(req())
    assert outcome(decision) == ("challenge", "challenge_sent")
    (message,) = attr(decision, "Reply-Message")
    assert message == MessagesConfig().start
    assert len(message.encode("utf-8")) <= 253
    (state,) = attr(decision, "State")
    assert isinstance(state, bytes)
    assert len(state) >= 16
    assert len(attr(decision, "Prompt")) == 1
    assert {n for n, _ in decision.attributes} == {"Reply-Message", "State", "Prompt"}
    assert w.second.pushes == []
    assert w.second.codes == []


def test_each_challenge_gets_a_fresh_state() -> None:
    w = World(policy(mode="challenge"))
    assert start_challenge(w) != start_challenge(w)


@pytest.mark.parametrize(
    ("start", "show"),
    [("é" * 200, False), ("x" * 252 + "€", False), ("Press Enter", True),
     ("ü" * 126, True)],
    ids=["400-bytes", "multibyte-at-the-cut", "with-id", "252-bytes-with-id"],
)
def test_challenge_message_never_exceeds_253_bytes(start: str, show: bool) -> None:
    # config validation keeps long texts out; the flow must still never send more
    w = World(policy(mode="challenge", show_secsign_id=show,
                     messages=MessagesConfig(start=start)))
    (message,) = attr(w.handle(req()), "Reply-Message")
    full = f"{start} (alice.example)" if show else start
    assert full.startswith(message)  # cut at a character, never inside one
    assert len(message.encode("utf-8")) <= 253
    if len(full.encode("utf-8")) > 253:
        assert len(message.encode("utf-8")) >= 250  # the longest prefix that fits
    else:
        assert message == full


@pytest.mark.parametrize("answer", [b"", b" ", b"\r\n"])
def test_enter_at_the_challenge_sends_the_push(answer: bytes) -> None:
    w = World(policy(mode="challenge"))
    state = start_challenge(w)
    decision = w.handle(req(password=answer, state=state))
    assert outcome(decision) == ("accept", "push_approved")
    assert w.second.pushes == [("alice.example", "SSH login to ssh-1", STATION)]
    assert len(w.primary.calls) == 1  # the answer does not check the password again


def test_digits_at_the_challenge_verify_the_code() -> None:
    w = World(policy(mode="challenge"))
    state = start_challenge(w)
    assert outcome(w.handle(req(password=CODE.encode(), state=state))) == (
        "accept", "passcode_accepted")
    assert w.second.codes == [("alice.example", CODE)]
    assert w.second.pushes == []


def test_wrong_digits_at_the_challenge() -> None:
    w = World(policy(mode="challenge"))
    state = start_challenge(w)
    assert outcome(w.handle(req(password=b"000000", state=state))) == ("reject",
                                                                      "passcode_rejected")


@pytest.mark.parametrize(("answer", "passcodes"),
                         [(b"yes", True), (b"12345", True), (b"123456789", True),
                          (b"12 34 56", True), (CODE.encode(), False)])
def test_other_answers_at_the_challenge_are_rejected(answer: bytes, passcodes: bool) -> None:
    w = World(policy(mode="challenge", passcodes=passcodes))
    state = start_challenge(w)
    assert outcome(w.handle(req(password=answer, state=state))) == ("reject", "invalid_answer")
    assert w.second.pushes == []
    assert w.second.codes == []


def test_push_denied_after_the_challenge() -> None:
    w = World(policy(mode="challenge"))
    state = start_challenge(w)
    w.second.outcome = PushOutcome.DENIED
    assert outcome(w.handle(req(password=b"", state=state))) == ("reject", "push_denied")


def test_passcode_with_the_password_skips_the_challenge() -> None:
    w = World(policy(mode="challenge"))
    assert outcome(w.handle(req(password=b"alicepass,123456"))) == ("accept",
                                                                    "passcode_accepted")


def test_challenge_mode_accept_keeps_pass_through_attributes() -> None:
    w = World(policy(mode="challenge"))
    state = start_challenge(w)
    decision = w.handle(req(password=b"", state=state))
    assert decision.attributes == (("Class", b"vpn-group"),)


# -- State checks (RFC 2865 5.24, RFC 5080 2.1.1: random, single-use, bound, expiring) --------
@pytest.mark.parametrize("case", ["unknown", "reused", "foreign-client", "foreign-user",
                                  "expired", "empty"])
def test_invalid_state_is_rejected(case: str) -> None:
    w = World(policy(mode="challenge", challenge_timeout_seconds=300))
    state = start_challenge(w)
    client, username = SSH, "alice"
    if case == "unknown":
        state = b"\x00" * 16
    elif case == "reused":
        assert outcome(w.handle(req(password=b"", state=state))) == ("accept", "push_approved")
    elif case == "foreign-client":
        client = VPN
    elif case == "foreign-user":
        username = "bob"
    elif case == "expired":
        w.clock.now += 300
    elif case == "empty":
        state = b""
    pushes = len(w.second.pushes)
    decision = w.handle(req(username, b"", state=state), client)
    assert outcome(decision) == ("reject", "invalid_state")
    assert len(w.second.pushes) == pushes
    assert decision.attributes == ()


def test_a_state_refused_for_a_foreign_user_is_spent() -> None:
    w = World(policy(mode="challenge"))
    state = start_challenge(w)
    assert outcome(w.handle(req("bob", b"", state=state))) == ("reject", "invalid_state")
    assert outcome(w.handle(req("alice", b"", state=state))) == ("reject", "invalid_state")


# -- an upstream's challenge, relayed under our State ----------------------------------------
def test_upstream_challenge_is_relayed_under_our_state() -> None:
    w = World()
    decision = w.handle(req("olga"))
    assert outcome(decision) == ("challenge", "upstream_challenge")
    assert attr(decision, "Reply-Message") == ["Enter your OTP"]
    assert attr(decision, "Prompt") == [0]
    assert attr(decision, "Class") == []  # only Reply-Message and Prompt go to the NAS
    (state,) = attr(decision, "State")
    assert state != UPSTREAM_STATE
    assert len(state) >= 16
    assert w.second.pushes == []


def test_upstream_challenge_without_reply_message_gets_a_default() -> None:
    w = World()
    w.primary.challenge_attributes = ()
    decision = w.handle(req("olga"))
    assert attr(decision, "Reply-Message") == ["Enter the response: "]
    assert len(attr(decision, "State")) == 1


def test_answer_to_upstream_challenge_carries_their_state_then_pushes() -> None:
    w = World()
    (state,) = attr(w.handle(req("olga")), "State")
    decision = w.handle(req("olga", OTP, state=state))
    assert outcome(decision) == ("accept", "push_approved")
    answer = w.primary.calls[-1]
    assert answer.state == UPSTREAM_STATE  # our State unwrapped to theirs
    assert answer.password == OTP
    assert w.second.pushes == [("olga.example", "SSH login to ssh-1", STATION)]


def test_wrong_answer_to_upstream_challenge() -> None:
    w = World()
    (state,) = attr(w.handle(req("olga")), "State")
    assert outcome(w.handle(req("olga", b"000000", state=state))) == ("reject",
                                                                      "primary_rejected")
    assert w.second.pushes == []


@pytest.mark.parametrize("case", ["their-state", "reused", "foreign-user", "foreign-client"])
def test_upstream_state_misuse_is_invalid_state(case: str) -> None:
    w = World()
    (state,) = attr(w.handle(req("olga")), "State")
    client, username = SSH, "olga"
    if case == "their-state":
        state = UPSTREAM_STATE
    elif case == "reused":
        w.handle(req("olga", OTP, state=state))
    elif case == "foreign-user":
        username = "alice"
    else:
        client = VPN
    calls = len(w.primary.calls)
    assert outcome(w.handle(req(username, OTP, state=state), client)) == ("reject",
                                                                          "invalid_state")
    assert len(w.primary.calls) == calls  # the upstream is not asked with a bad State


# -- remembered logins ------------------------------------------------------------------------
def test_remember_skips_the_second_push_from_the_same_client_and_station() -> None:
    w = World(policy(remember_minutes=10))
    assert outcome(w.handle(req())) == ("accept", "push_approved")
    w.clock.now += 60
    decision = w.handle(req())
    assert outcome(decision) == ("accept", "remembered")
    assert decision.attributes == (("Class", b"vpn-group"),)
    assert len(w.second.pushes) == 1
    assert [c.password for c in w.primary.calls] == [b"alicepass", b"alicepass"]


def test_remember_does_not_cover_another_station_client_or_user() -> None:
    w = World(policy(remember_minutes=10))
    w.handle(req())
    assert outcome(w.handle(req(station="203.0.113.9"))) == ("accept", "push_approved")
    assert outcome(w.handle(req(), VPN)) == ("accept", "push_approved")
    assert outcome(w.handle(req("bob"))) == ("accept", "push_approved")
    assert len(w.second.pushes) == 4


def test_remember_expires() -> None:
    w = World(policy(remember_minutes=10))
    w.handle(req())
    w.clock.now += 10 * 60
    assert outcome(w.handle(req())) == ("accept", "push_approved")
    assert len(w.second.pushes) == 2


def test_remember_still_needs_the_password() -> None:
    w = World(policy(remember_minutes=10))
    w.handle(req())
    assert outcome(w.handle(req(password=b"wrong"))) == ("reject", "primary_rejected")


def test_remember_off_pushes_every_time() -> None:
    w = World(policy(remember_minutes=0))
    w.handle(req())
    assert outcome(w.handle(req())) == ("accept", "push_approved")
    assert len(w.second.pushes) == 2


def test_denied_push_is_not_remembered() -> None:
    w = World(policy(remember_minutes=10))
    w.second.outcome = PushOutcome.DENIED
    w.handle(req())
    w.second.outcome = PushOutcome.APPROVED
    assert outcome(w.handle(req())) == ("accept", "push_approved")


def test_remembered_login_skips_the_challenge_too() -> None:
    w = World(policy(mode="challenge", remember_minutes=10))
    state = start_challenge(w)
    w.handle(req(password=b"", state=state))
    assert outcome(w.handle(req())) == ("accept", "remembered")


def test_passcode_login_is_remembered() -> None:
    w = World(policy(remember_minutes=10))
    w.handle(req(password=b"alicepass,123456"))
    assert outcome(w.handle(req())) == ("accept", "remembered")
    assert w.second.pushes == []


# -- rate limit (push fatigue) ----------------------------------------------------------------
def test_fourth_push_in_the_window_is_rejected() -> None:
    w = World(policy(max_pushes_per_user=3, push_window_minutes=10))
    w.second.outcome = PushOutcome.DENIED
    results = []
    for _ in range(4):
        results.append(outcome(w.handle(req())))
        w.clock.now += 30
    assert results == [("reject", "push_denied")] * 3 + [("reject", "rate_limited")]
    assert len(w.second.pushes) == 3


def test_rate_limit_is_per_user_and_the_window_slides() -> None:
    w = World(policy(max_pushes_per_user=3, push_window_minutes=10))
    for _ in range(3):
        w.handle(req())
    assert outcome(w.handle(req())) == ("reject", "rate_limited")
    assert outcome(w.handle(req("bob"))) == ("accept", "push_approved")
    w.clock.now += 11 * 60
    assert outcome(w.handle(req())) == ("accept", "push_approved")


def test_passcode_checks_count_toward_the_rate_limit() -> None:
    w = World(policy(max_pushes_per_user=2))
    w.handle(req(password=b"alicepass,000000"))
    w.handle(req(password=b"alicepass,000001"))
    assert outcome(w.handle(req(password=b"alicepass,123456"))) == ("reject", "rate_limited")
    assert len(w.second.codes) == 2


# -- concurrent requests: one push ------------------------------------------------------------
def test_two_concurrent_requests_share_one_push() -> None:
    w = World()
    w.second.sleep = 0.05
    with structlog.testing.capture_logs() as logs:
        decisions = w.handle_together(req(), req())
    assert [outcome(d) for d in decisions] == [("accept", "push_approved")] * 2
    assert len(w.second.pushes) == 1
    assert w.pipeline.pending_pushes == 0
    assert [e["event"] for e in logs].count("push_joined") == 1
    assert [e["event"] for e in logs].count("auth") == 2


def test_concurrent_requests_from_different_stations_push_separately() -> None:
    w = World()
    w.second.sleep = 0.05
    decisions = w.handle_together(req(), req(station="203.0.113.9"))
    assert [outcome(d) for d in decisions] == [("accept", "push_approved")] * 2
    assert len(w.second.pushes) == 2


def test_joined_push_does_not_count_toward_the_rate_limit() -> None:
    w = World(policy(max_pushes_per_user=1))
    w.second.sleep = 0.05
    decisions = w.handle_together(req(), req())
    assert [outcome(d) for d in decisions] == [("accept", "push_approved")] * 2


class YieldingStore(MemoryStore):
    """The same store, but its calls suspend like a networked store's (redis) would."""

    async def count_push(self, user: str, window: float) -> int:
        await asyncio.sleep(0)
        return await super().count_push(user, window)


def test_two_concurrent_requests_share_one_push_with_a_suspending_store() -> None:
    # regression: the pending push must be registered before the first await (the rate
    # limit lookup), or two requests that both suspend there start two pushes
    w = World(store_class=YieldingStore)
    w.second.sleep = 0.05
    decisions = w.handle_together(req(), req())
    assert len(w.second.pushes) == 1
    assert [outcome(d) for d in decisions] == [("accept", "push_approved")] * 2


# -- the NAS timeout bounds the whole request -------------------------------------------------
def test_nas_timeout_rejects_and_the_push_can_be_cancelled() -> None:
    w = World()
    w.second.sleep = 5.0
    client = replace(SSH, nas_timeout_seconds=0.05)

    async def scenario() -> tuple[Decision, int, int]:
        decision = await w.pipeline.handle(req(), client)
        pending = w.pipeline.pending_pushes
        await w.pipeline.cancel_pushes()
        await asyncio.sleep(0)
        return decision, pending, w.pipeline.pending_pushes

    decision, pending_before, pending_after = asyncio.run(scenario())
    assert outcome(decision) == ("reject", "timeout")
    assert (pending_before, pending_after) == (1, 0)


# -- the audit event ----------------------------------------------------------------------------
AUDIT_KEYS = {"request_id", "client", "nas_ip", "nas_identifier", "calling_station_id",
              "username", "secsign_id", "outcome", "reason", "primary_ms", "second_factor_ms",
              "total_ms"}


def audit_of(w: World, *requests: AuthRequest, client: ClientConfig = SSH
             ) -> list[MutableMapping[str, Any]]:
    with structlog.testing.capture_logs() as logs:
        for r in requests:
            w.handle(r, client)
    events = [e for e in logs if e["event"] == "auth"]
    assert len(events) == len(requests)  # one audit event per request
    for e in events:
        assert set(e) >= AUDIT_KEYS
    return events


def assert_no_secret(events: Sequence[Mapping[str, Any]], *secrets: bytes) -> None:
    text = repr(events)
    for secret in secrets:
        assert secret not in text.encode()
        assert secret.decode("utf-8", "replace") not in text
        assert repr(secret) not in text


def test_audit_event_of_an_approved_push() -> None:
    w = World()
    (event,) = audit_of(w, req())
    assert {k: event[k] for k in AUDIT_KEYS} == {
        "request_id": "req-1", "client": "ssh-hosts", "nas_ip": "10.1.0.5",
        "nas_identifier": "ssh-1", "calling_station_id": STATION, "username": "alice",
        "secsign_id": "alice.example", "outcome": "accept", "reason": "push_approved",
        "primary_ms": 25.0, "second_factor_ms": 3000.0, "total_ms": 3025.0,
    }
    assert event["log_level"] == "info"
    assert_no_secret([event], b"alicepass")


def test_audit_event_of_a_primary_reject() -> None:
    w = World()
    (event,) = audit_of(w, req(password=b"Tr0ub4dor&3"))
    assert (event["outcome"], event["reason"]) == ("reject", "primary_rejected")
    assert event["secsign_id"] is None
    assert event["second_factor_ms"] is None
    assert event["primary_ms"] == 25.0
    assert event["primary_reason"] == "bad_password"
    assert_no_secret([event], b"Tr0ub4dor&3", b"alicepass")


def test_audit_event_of_a_passcode_login_holds_no_password() -> None:
    w = World()
    (event,) = audit_of(w, req(password=b"alicepass,123456"))
    assert (event["outcome"], event["reason"]) == ("accept", "passcode_accepted")
    assert event["second_factor_ms"] == 500.0
    assert_no_secret([event], b"alicepass")


def test_audit_events_of_a_challenge_round_trip() -> None:
    w = World(policy(mode="challenge"))
    with structlog.testing.capture_logs() as logs:
        state = start_challenge(w)
        w.handle(req(password=b"", state=state))
    first, second = [e for e in logs if e["event"] == "auth"]
    assert (first["outcome"], first["reason"]) == ("challenge", "challenge_sent")
    assert (second["outcome"], second["reason"]) == ("accept", "push_approved")
    assert second["secsign_id"] == "alice.example"
    assert second["primary_ms"] is None  # the answer did not check a password
    assert_no_secret(logs, b"alicepass")


def test_audit_event_of_an_upstream_challenge_answer_holds_no_otp() -> None:
    w = World()
    with structlog.testing.capture_logs() as logs:
        (state,) = attr(w.handle(req("olga")), "State")
        w.handle(req("olga", OTP, state=state))
    assert [e["reason"] for e in logs if e["event"] == "auth"] == ["upstream_challenge",
                                                                   "push_approved"]
    assert_no_secret(logs, b"olgapass", OTP)


def test_audit_event_with_ipv6_nas_and_missing_attributes() -> None:
    w = World()
    (event,) = audit_of(w, req(attributes={"NAS-IPv6-Address": ("2001:db8::5",)}))
    assert event["nas_ip"] == "2001:db8::5"
    assert event["nas_identifier"] is None
    assert event["calling_station_id"] is None


def test_audit_event_of_a_timeout() -> None:
    w = World()
    w.second.sleep = 5.0
    client = replace(SSH, nas_timeout_seconds=0.05)

    async def scenario() -> None:
        await w.pipeline.handle(req(), client)
        await w.pipeline.cancel_pushes()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    (event,) = [e for e in logs if e["event"] == "auth"]
    assert (event["outcome"], event["reason"]) == ("reject", "timeout")
    assert_no_secret(logs, b"alicepass")


# -- answered without a Task when nothing waits (radius_proxy.eager) ---------------------------
class TaskBoundPrimary(FakePrimary):
    """A backend that needs a current Task before it waits (asyncio.timeout), as most do."""

    async def authenticate(self, request: AuthRequest) -> PrimaryResult:
        async with asyncio.timeout(1):
            await asyncio.sleep(0)
            return await super().authenticate(request)


class TaskFreeIdentity(FakeIdentity):
    runs_without_task = True


class TaskFreePrimary(FakePrimary):
    runs_without_task = True


def drive_by_hand(w: World, request: AuthRequest) -> tuple[Decision, bool]:
    """As the server does it: step handle() by hand from a callback; (decision, needed a Task)."""
    import contextvars

    from radius_proxy.eager import start

    decisions: list[Decision] = []

    async def answer() -> None:
        decisions.append(await w.pipeline.handle(request, SSH))

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None] | None] = []
        loop.call_soon(lambda: tasks.append(start(answer(), contextvars.copy_context(), loop)))
        await asyncio.sleep(0)
        task = tasks[0]
        if task is not None:
            await task
        return task is not None

    used_task = asyncio.run(scenario())
    return decisions[0], used_task


def test_ports_that_need_a_task_get_one_before_they_are_called() -> None:
    w = World()
    w.primary = TaskBoundPrimary(w.clock)
    w.pipeline = Pipeline(config=w.config, primary=w.primary, identity=[w.identity],
                          second_factor=w.second, store=w.store, clock=w.clock)
    decision, used_task = drive_by_hand(w, req("dora"))
    assert outcome(decision) == ("reject", "no_secsign_id")
    assert used_task


def test_ports_that_run_without_a_task_answer_in_the_first_step() -> None:
    w = World()
    w.primary = TaskFreePrimary(w.clock)
    w.pipeline = Pipeline(config=w.config, primary=w.primary, identity=[TaskFreeIdentity()],
                          second_factor=w.second, store=w.store, clock=w.clock)
    decision, used_task = drive_by_hand(w, req("dora"))
    assert outcome(decision) == ("reject", "no_secsign_id")
    assert not used_task


def test_a_passcode_check_gets_a_task_even_when_the_ports_need_none() -> None:
    w = World()
    w.primary = TaskFreePrimary(w.clock)

    class TaskBoundSecondFactor(FakeSecondFactor):
        async def verify_code(self, secsign_id: str, code: str) -> PushResult:
            assert asyncio.current_task() is not None
            return await super().verify_code(secsign_id, code)

    w.second = TaskBoundSecondFactor(w.clock)
    w.pipeline = Pipeline(config=w.config, primary=w.primary, identity=[TaskFreeIdentity()],
                          second_factor=w.second, store=w.store, clock=w.clock)
    decision, used_task = drive_by_hand(w, req(password=b"alicepass," + CODE.encode()))
    assert outcome(decision) == ("accept", "passcode_accepted")
    assert used_task


class TaskBoundStore(MemoryStore):
    """A store that needs a current Task before it is asked anything, as the Redis store."""

    runs_without_task = False

    async def put_challenge(self, token: bytes, context: Any, ttl: float) -> None:
        assert asyncio.current_task() is not None
        await super().put_challenge(token, context, ttl)

    async def take_challenge(self, token: bytes) -> Any:
        assert asyncio.current_task() is not None
        return await super().take_challenge(token)

    async def is_remembered(self, key: str) -> bool:
        assert asyncio.current_task() is not None
        return await super().is_remembered(key)


def task_bound_store_world(**fields: Any) -> World:
    w = World(policy(**fields))
    w.store = TaskBoundStore(w.clock)
    w.pipeline = Pipeline(config=w.config, primary=TaskFreePrimary(w.clock),
                          identity=[TaskFreeIdentity()], second_factor=w.second,
                          store=w.store, clock=w.clock)
    return w


def test_a_store_that_needs_a_task_leaves_a_plain_answer_without_one() -> None:
    w = task_bound_store_world()
    decision, used_task = drive_by_hand(w, req("dora"))
    assert outcome(decision) == ("reject", "no_secsign_id")
    assert not used_task


def test_a_store_that_needs_a_task_gets_one_before_it_is_asked() -> None:
    w = task_bound_store_world(mode="challenge", remember_minutes=5)
    decision, used_task = drive_by_hand(w, req())
    assert outcome(decision) == ("challenge", "challenge_sent")
    assert used_task
    state = attr(decision, "State")[0]
    decision, used_task = drive_by_hand(w, req(password=CODE.encode(), state=state))
    assert outcome(decision) == ("accept", "passcode_accepted")
    assert used_task
