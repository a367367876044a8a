"""The simulator's pure core: rules, the session state machine on an injected clock, TOTP."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radius_proxy.simulator import totp
from radius_proxy.simulator.httpserver import parse_form
from radius_proxy.simulator.icon import ACCESS_ICON_PNG_BASE64, ICON_HEIGHT, ICON_WIDTH
from radius_proxy.simulator.rules import (
    Refusal,
    Rule,
    find_rule,
    normalize_secsignid,
    parse_rule,
    parse_rules,
)
from radius_proxy.simulator.sessions import (
    MAX_SESSIONS,
    RETAIN_SECONDS,
    AuthSessionState,
    SessionInfo,
    Simulator,
)

S = AuthSessionState


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(*rules: str, lifetime: float = 120.0, account: str | None = None
         ) -> tuple[Simulator, FakeClock]:
    clock = FakeClock()
    sim = Simulator(parse_rules(rules), account=account, session_lifetime_seconds=lifetime,
                    clock=clock)
    return sim, clock


def start(sim: Simulator, secsignid: str = "alice") -> SessionInfo:
    result = sim.start(secsignid, "VPN Login", "vpn.example.com")
    assert isinstance(result, SessionInfo)
    return result


def state(sim: Simulator, info: SessionInfo) -> AuthSessionState | None:
    polled = sim.poll(info.id)
    return None if polled is None else polled.state


# -- rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice=approve", Rule("alice", "approve", 1.0)),
        ("alice=approve:2", Rule("alice", "approve", 2.0)),
        ("*.example=deny:0.5", Rule("*.example", "deny", 0.5)),
        ("bob=expire:0", Rule("bob", "expire", 0.0)),
        ("*=manual", Rule("*", "manual", 0.0)),
        ("ghost=unknown", Rule("ghost", "unknown", 0.0)),
        ("ice*=FROZEN", Rule("ice*", "frozen", 0.0)),
        ("  carol = approve:1.25 ", Rule("carol", "approve", 1.25)),
    ],
)
def test_parse_rule_accepts(text: str, expected: Rule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "expected PATTERN=ACTION"),
        ("=approve", "PATTERN"),
        ("alice=accept", "unknown ACTION"),
        ("alice=approve:soon", "not a number"),
        ("alice=approve:-1", ">= 0"),
        ("alice=approve:inf", "finite"),
        ("alice=approve:nan", "finite"),
        ("alice=manual:3", "takes no SECONDS"),
        ("alice=frozen:1", "takes no SECONDS"),
    ],
)
def test_parse_rule_rejects_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_rule(text)
    assert repr(text) in str(caught.value)


@given(st.text(max_size=40))
def test_parse_rule_any_text_is_a_rule_or_a_value_error(text: str) -> None:
    try:
        rule = parse_rule(text)
    except ValueError:
        return
    assert rule.pattern
    assert parse_rule(str(rule)) == rule


def test_rule_str_round_trips() -> None:
    for text in ("a=approve:0.5", "b=deny:1", "c=expire:3", "*=manual", "d=unknown"):
        assert str(parse_rule(text)) == text


def test_first_matching_rule_wins_and_default_is_manual() -> None:
    rules = parse_rules(["alice=deny", "a*=approve:2", "*.frozen=frozen"])
    assert find_rule(rules, "alice").action == "deny"
    assert find_rule(rules, "anna").action == "approve"
    assert find_rule(rules, "ANNA").action == "approve"
    assert find_rule(rules, "x.frozen").action == "frozen"
    assert find_rule(rules, "bob") == Rule("*", "manual", 0.0)


# -- sessions ------------------------------------------------------------------------------
def test_new_session_is_pending_with_random_signed_64_bit_id_and_hex_request_id() -> None:
    sim, _ = make()
    infos = [start(sim, f"user{i}") for i in range(50)]
    for info in infos:
        assert info.state is S.PENDING
        assert -(2**63) <= info.id < 2**63
        assert re.fullmatch(r"[0-9A-F]{64}", info.request_id)
    assert len({i.id for i in infos}) == 50
    assert any(i.id < 0 for i in infos)


def test_approve_passes_through_fetched_then_authenticated() -> None:
    sim, clock = make("alice=approve:2")
    info = start(sim)
    assert state(sim, info) is S.PENDING
    clock.advance(0.99)
    assert state(sim, info) is S.PENDING
    clock.advance(0.01)
    assert state(sim, info) is S.FETCHED
    clock.advance(1.0)
    assert state(sim, info) is S.AUTHENTICATED
    clock.advance(500)
    assert state(sim, info) is S.AUTHENTICATED


def test_deny_and_expire_rules() -> None:
    sim, clock = make("bob=deny:1", "carol=expire:3")
    bob, carol = start(sim, "bob"), start(sim, "carol")
    clock.advance(1)
    assert (state(sim, bob), state(sim, carol)) == (S.DENIED, S.PENDING)
    clock.advance(2)
    assert state(sim, carol) is S.EXPIRED


def test_zero_seconds_decides_on_the_first_poll_but_start_answers_pending() -> None:
    sim, _ = make("*=approve:0")
    info = start(sim)
    assert info.state is S.PENDING
    assert state(sim, info) is S.AUTHENTICATED


def test_manual_waits_for_a_decision_and_a_late_decision_changes_nothing() -> None:
    sim, clock = make()
    info = start(sim)
    clock.advance(60)
    assert state(sim, info) is S.PENDING
    decided = sim.decide(info.id, approve=True)
    assert decided is not None
    assert decided.state is S.AUTHENTICATED
    again = sim.decide(info.id, approve=False)
    assert again is not None
    assert again.state is S.AUTHENTICATED
    assert sim.decide(12345, approve=True) is None


def test_sessions_expire_after_their_lifetime_even_if_the_rule_is_slower() -> None:
    sim, clock = make("slow=approve:200", lifetime=10)
    manual, slow = start(sim, "alice"), start(sim, "slow")
    clock.advance(9.9)
    assert state(sim, manual) is S.PENDING
    clock.advance(0.1)
    assert (state(sim, manual), state(sim, slow)) == (S.EXPIRED, S.EXPIRED)
    assert sim.decide(manual.id, approve=True) == sim.poll(manual.id)


def test_unknown_and_frozen_ids_are_refused() -> None:
    sim, _ = make("ghost=unknown", "ice=frozen")
    unknown = sim.start("ghost", "s", "a")
    frozen = sim.start("ice", "s", "a")
    assert isinstance(unknown, Refusal)
    assert unknown.errorcode == 20000
    assert unknown.message == "A SecSign ID does not exist with that name."
    assert isinstance(frozen, Refusal)
    assert frozen.errorcode == 20006
    assert sim.sessions() == []


def test_second_session_for_an_id_suspends_the_pending_one_only() -> None:
    sim, clock = make("done=approve:0")
    first, other = start(sim, "alice"), start(sim, "bob")
    second = start(sim, "alice")
    assert state(sim, first) is S.SUSPENDED
    assert state(sim, second) is S.PENDING
    assert state(sim, other) is S.PENDING
    finished = start(sim, "done")
    clock.advance(0.1)
    assert state(sim, finished) is S.AUTHENTICATED
    start(sim, "done")
    assert state(sim, finished) is S.AUTHENTICATED


def test_fetched_sessions_are_suspended_too() -> None:
    sim, clock = make("alice=approve:2")
    first = start(sim)
    clock.advance(1.5)
    second = start(sim)
    assert state(sim, first) is S.SUSPENDED
    clock.advance(2)
    assert state(sim, second) is S.AUTHENTICATED


def test_cancel_sets_state_6_and_the_session_can_no_longer_be_queried() -> None:
    sim, _ = make()
    info = start(sim)
    cancelled = sim.cancel(info.id)
    assert cancelled is not None
    assert cancelled.state is S.CANCELED
    assert sim.poll(info.id) is None
    assert sim.cancel(info.id) is None
    assert sim.decide(info.id, approve=True) is not None
    assert [s.state for s in sim.sessions()] == [S.CANCELED]


def test_changed_rules_apply_to_new_sessions_only() -> None:
    sim, clock = make("*=deny:1")
    old = start(sim, "alice")
    sim.set_rules(parse_rules(["*=approve:1"]))
    new = start(sim, "bob")
    clock.advance(1)
    assert (state(sim, old), state(sim, new)) == (S.DENIED, S.AUTHENTICATED)
    assert [str(r) for r in sim.rules] == ["*=approve:1"]


def test_log_records_in_order_with_clock_time_and_reset_clears_everything() -> None:
    sim, clock = make()
    base = sim.wall_time()
    sim.record("start", "legacy", "alice", None)
    clock.advance(2.5)
    sim.record("state", "rest", "alice", -5)
    entries = [e.to_json() for e in sim.log()]
    assert [(e["type"], e["api"], e["secsignid"]) for e in entries] == [
        ("start", "legacy", "alice"), ("state", "rest", "alice")]
    assert entries[1]["authsessionid"] == "-5"
    assert entries[1]["time"] == pytest.approx(base + 2.5)
    start(sim)
    sim.reset()
    assert (sim.log(), sim.sessions()) == ([], [])


def test_session_json_shape_uses_a_string_id() -> None:
    sim, _ = make()
    info = start(sim)
    assert info.to_json() == {
        "id": str(info.id), "secsignid": "alice", "servicename": "VPN Login",
        "serviceaddress": "vpn.example.com", "state": 1, "created": info.created,
    }


def test_old_sessions_are_pruned_so_memory_stays_bounded() -> None:
    sim, clock = make(lifetime=10)
    old = start(sim, "alice")
    clock.advance(10 + RETAIN_SECONDS + 1)
    start(sim, "bob")
    assert [s.secsignid for s in sim.sessions()] == ["bob"]
    assert sim.poll(old.id) is None
    assert MAX_SESSIONS >= 1000


def test_start_among_many_pending_sessions_touches_only_that_ids_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, _ = make()
    pending = [start(sim, f"user{i}") for i in range(20_000)]
    advanced: list[int] = []
    original = Simulator._advance

    def counting(self: Simulator, session: Any, now: float) -> None:
        advanced.append(session.info.id)
        original(self, session, now)

    monkeypatch.setattr(Simulator, "_advance", counting)
    again = start(sim, "user7")
    assert advanced == [pending[7].id]  # O(1): the one session it may suspend, nothing else
    assert state(sim, pending[7]) is S.SUSPENDED
    assert state(sim, again) is S.PENDING
    assert (state(sim, pending[6]), state(sim, pending[8])) == (S.PENDING, S.PENDING)
    assert sum(info.state is S.PENDING for info in sim.sessions()) == 20_000


def test_the_index_follows_each_ids_newest_session() -> None:
    sim, clock = make("quick=approve:1")
    alice1, bob1 = start(sim, "alice"), start(sim, "bob")
    alice2 = start(sim, "alice")
    alice3 = start(sim, "alice")
    assert [state(sim, i) for i in (alice1, alice2, alice3, bob1)] == [
        S.SUSPENDED, S.SUSPENDED, S.PENDING, S.PENDING]
    assert sim.cancel(alice3.id) is not None
    alice4 = start(sim, "alice")  # nothing waiting for alice: nothing else changes
    assert [state(sim, i) for i in (alice2, alice3, alice4)] == [S.SUSPENDED, None, S.PENDING]
    quick1 = start(sim, "quick")
    clock.advance(1)
    start(sim, "quick")
    assert state(sim, quick1) is S.AUTHENTICATED  # ended before the second start
    sim.reset()
    fresh = start(sim, "alice")
    assert (state(sim, alice4), state(sim, fresh)) == (None, S.PENDING)


def test_expiry_and_retention_without_scanning() -> None:
    clock = FakeClock()
    sim = Simulator(clock=clock, session_lifetime_seconds=10, retain_seconds=5)
    old = start(sim, "alice")
    clock.advance(10)
    assert state(sim, old) is S.EXPIRED  # lifetime over: still visible, for 5 s more
    middle = start(sim, "bob")
    clock.advance(5.5)
    new = start(sim, "alice")  # 15.5 s after the first start: that one is dropped
    assert sim.poll(old.id) is None
    assert [i.id for i in sim.sessions()] == [middle.id, new.id]
    assert state(sim, middle) is S.PENDING  # 5.5 s old: the queue stopped at it
    clock.advance(100)
    start(sim, "carol")
    assert [i.secsignid for i in sim.sessions()] == ["carol"]
    assert len(sim._newest) == 1  # the per-ID index shrinks with the sessions


def test_beyond_the_cap_the_oldest_session_goes_first() -> None:
    clock = FakeClock()
    sim = Simulator(clock=clock, max_sessions=3)
    first, *rest = [start(sim, name) for name in ("a", "b", "c", "d")]
    assert sim.poll(first.id) is None
    assert [i.id for i in sim.sessions()] == [i.id for i in rest]
    again = start(sim, "d")  # evicts b, the oldest now, and suspends d's first session
    assert [i.id for i in sim.sessions()] == [rest[1].id, rest[2].id, again.id]
    assert state(sim, rest[2]) is S.SUSPENDED


def test_normalize_secsignid() -> None:
    assert normalize_secsignid("  Alice.Example@corp ") == "alice.example@corp"
    assert normalize_secsignid("a-b_c") == "a-b_c"
    for bad in ("", "   ", "a b", "a&b", "ä", "x" * 256):
        assert normalize_secsignid(bad) is None


def test_credentials() -> None:
    open_sim, _ = make()
    assert open_sim.credentials_ok("any", "thing")
    assert open_sim.credentials_ok("user", "")
    assert not open_sim.credentials_ok("", "")
    locked, _ = make(account="radius:s3cret:x")
    assert locked.credentials_ok("radius", "s3cret:x")
    assert not locked.credentials_ok("radius", "s3cret")
    assert not locked.credentials_ok("other", "s3cret:x")
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        Simulator(account="nocolon")
    with pytest.raises(ValueError, match="lifetime"):
        Simulator(session_lifetime_seconds=0)


# -- TOTP ----------------------------------------------------------------------------------
RFC6238_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC6238_VECTORS = [  # RFC 6238 appendix B: time, SHA-1, SHA-256, SHA-512
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("unix_time", "sha1", "sha256", "sha512"), RFC6238_VECTORS)
def test_totp_rfc6238_vectors(unix_time: int, sha1: str, sha256: str, sha512: str) -> None:
    for digest, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        assert totp.totp(RFC6238_SEEDS[digest], unix_time, 8, 30, digest) == expected


def test_hotp_rfc4226_vectors_with_six_digits() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314",
                "254676", "287922", "162583", "399871", "520489"]
    assert [totp.hotp(RFC6238_SEEDS["sha1"], c) for c in range(10)] == expected


def test_totp_verify_accepts_one_step_of_drift_and_rejects_junk() -> None:
    secret = RFC6238_SEEDS["sha1"]
    now = 1111111111.0
    assert totp.verify(secret, totp.totp(secret, now), now)
    assert totp.verify(secret, totp.totp(secret, now - 30), now)
    assert totp.verify(secret, totp.totp(secret, now + 30), now)
    assert not totp.verify(secret, totp.totp(secret, now - 90), now)
    fullwidth = "".join(chr(0xFF10 + d) for d in range(1, 7))  # str.isdigit() is True for it
    for junk in ("", "12345", "1234567", "12345a", fullwidth, " 123456"):
        assert not totp.verify(secret, junk, now)


def test_simulator_totp_per_id_and_refusals() -> None:
    sim, clock = make("ghost=unknown", "ice=frozen")
    code = sim.totp_code("alice")
    assert isinstance(code, str)
    assert re.fullmatch(r"\d{6}", code)
    assert sim.verify_totp("alice", code) is True
    assert sim.totp_code("ALICE") == code
    clock.advance(120)
    assert sim.verify_totp("alice", code) is False
    assert isinstance(sim.totp_code("ghost"), Refusal)
    refusal = sim.verify_totp("ice", "123456")
    assert isinstance(refusal, Refusal)
    assert refusal.errorcode == 20006


# -- the access-pass icon ------------------------------------------------------------------
def test_icon_is_a_valid_88x88_png_whose_base64_needs_careful_parsing() -> None:
    assert {"+", "/"} <= set(ACCESS_ICON_PNG_BASE64)
    assert ACCESS_ICON_PNG_BASE64.endswith("=")
    data = base64.b64decode(ACCESS_ICON_PNG_BASE64, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (width, height, depth, colour) == (ICON_WIDTH, ICON_HEIGHT, 8, 6)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 4 * width)


@given(st.text(alphabet="ab=&+%2Fé;", max_size=40))
def test_parse_form_gives_the_first_value_of_each_name_as_parse_qsl_does(text: str) -> None:
    """The simulator's form parser is a faster parse_qsl: the same answer for any input."""
    expected: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        expected.setdefault(name, value)
    assert parse_form(text) == expected
