"""The Redis store's pure parts: key names, the challenge-context codec, URLs and options."""

from __future__ import annotations

import fnmatch
import re
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radius_proxy.config import Secret
from radius_proxy.state import ChallengeContext
from radius_proxy.state.redis_support import (
    KeySpace,
    connection_options,
    decode_context,
    encode_context,
    milliseconds,
    redact_url,
    sentinel_addresses,
)


def config(**values: Any) -> SimpleNamespace:
    base: dict[str, Any] = {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0",
                            "key_prefix": "radius-proxy:"}
    return SimpleNamespace(**{**base, **values})


# --- key names -----------------------------------------------------------------------------

def test_keys_carry_the_prefix_and_a_fixed_length_digest() -> None:
    keys = KeySpace("rp:")
    login = "alice\x00ssh-hosts\x00198.51.100.7"
    digest = keys.digest(login)
    assert len(digest) == 32
    assert int(digest, 16) >= 0
    assert keys.remember(login) == f"rp:remember:{digest}"
    assert keys.claim(digest) == f"rp:claim:{digest}"
    assert keys.outcome(digest) == f"rp:outcome:{digest}"
    assert keys.channel(digest) == f"rp:push:{digest}"
    assert keys.challenge(b"\x00\xff") == "rp:challenge:00ff"
    assert keys.pushes("alice").startswith("rp:pushes:")
    assert "alice" not in keys.pushes("alice")


@pytest.mark.parametrize(("a", "b"), [
    ("alice\x00nas\x00", "alice\x00nas\x00x"),
    ("alice", "Alice"),
    ("a\x00b\x00c", "a\x00bc"),
])
def test_different_logins_get_different_keys(a: str, b: str) -> None:
    assert KeySpace.digest(a) != KeySpace.digest(b)


@pytest.mark.parametrize("prefix", ["radius-proxy:", "", "rp[1]*?:", "a\\b:"])
def test_the_pattern_matches_exactly_this_prefix_channels(prefix: str) -> None:
    keys = KeySpace(prefix)
    channel = keys.channel(keys.digest("bob"))
    # Redis globs are fnmatch-like, with backslash escapes (fnmatch has none: use its
    # bracket form to check the escaping is complete).
    assert re.sub(r"\\(.)", r"\1", keys.pattern) == f"{prefix}push:*"
    translated = "".join(f"[{c}]" if c in "*?[]\\" else c for c in prefix) + "push:*"
    assert fnmatch.fnmatchcase(channel, translated)
    assert not fnmatch.fnmatchcase(KeySpace("other:").channel("x"), translated)


def test_digest_of_channel_is_the_inverse_of_channel() -> None:
    keys = KeySpace("rp:")
    digest = keys.digest("carol")
    assert keys.digest_of_channel(keys.channel(digest).encode()) == digest
    assert keys.digest_of_channel(keys.channel(digest)) == digest
    assert keys.digest_of_channel(b"other:push:abc") is None


@pytest.mark.parametrize(("seconds", "ms"), [(0.0, 1), (0.0001, 1), (1.0, 1000), (1.0004, 1001),
                                             (600.0, 600_000)])
def test_milliseconds_are_whole_and_never_zero(seconds: float, ms: int) -> None:
    assert milliseconds(seconds) == ms


# --- challenge contexts ----------------------------------------------------------------------

CONTEXTS = [
    ChallengeContext("secsign", "ssh-hosts", "alice", "alice.example"),
    ChallengeContext("upstream", "vpn", "j\u00fcrgen", None, b"\x00\xffState"),
    ChallengeContext("secsign", "vpn", "bob", "bob.example", None,
                     (("Class", b"\x01\x02"), ("Session-Timeout", 3600),
                      ("Reply-Message", "hi \u2713"))),
]


@pytest.mark.parametrize("context", CONTEXTS)
def test_contexts_survive_the_round_trip(context: ChallengeContext) -> None:
    data = encode_context(context)
    assert data.startswith(b'{"v":1,')
    assert decode_context(data) == context
    assert decode_context(data.decode()) == context


@given(kind=st.text(), client=st.text(), username=st.text(),
       secsign_id=st.none() | st.text(), state=st.none() | st.binary(max_size=253))
def test_any_context_survives_the_round_trip(kind: str, client: str, username: str,
                                             secsign_id: str | None, state: bytes | None) -> None:
    context = ChallengeContext(kind, client, username, secsign_id, state)
    assert decode_context(encode_context(context)) == context


@pytest.mark.parametrize("data", [
    b"", b"null", b"[]", b"{}", b'{"v":2,"kind":"secsign","client":"c","username":"u"}',
    b'{"v":1,"kind":"secsign","client":"c"}',
    b'{"v":1,"kind":1,"client":"c","username":"u"}',
    b'{"v":1,"kind":"k","client":"c","username":"u","upstream_state":{"b64":"***"}}',
    b'{"v":1,"kind":"k","client":"c","username":"u","surprise":1}',
    b"\xff\xfe",
])
def test_anything_else_is_refused_cleanly(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a challenge context"):
        decode_context(data)


# --- URLs and connection options -------------------------------------------------------------

@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:s3cret@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
    ("rediss://proxy:s3cret@redis.example:6380/2", "rediss://proxy:***@redis.example:6380/2"),
    ("redis://user@host/0", "redis://user@host/0"),
])
def test_urls_are_logged_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_options_carry_short_timeouts_and_one_retry_on_connection_errors() -> None:
    options = connection_options(config(timeout_seconds=0.5))
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.5
    assert options["retry"].get_retries() == 1
    assert "password" not in options
    assert connection_options(config())["socket_timeout"] == 1.0  # the default


def test_password_from_the_field_unless_the_url_has_one() -> None:
    options = connection_options(config(redis_password=Secret("pw"), redis_username="proxy"))
    assert (options["password"], options["username"]) == ("pw", "proxy")
    in_url = connection_options(config(redis_url="redis://:url-pw@h/0",
                                       redis_password=Secret("pw")))
    assert "password" not in in_url  # redis-py reads it from the URL


def test_ca_file_applies_to_tls_urls_only() -> None:
    tls = connection_options(config(redis_url="rediss://h:6380/0", ca_file="/etc/ca.pem"))
    assert tls["ssl_ca_certs"] == "/etc/ca.pem"
    plain = connection_options(config(ca_file="/etc/ca.pem"))
    assert "ssl_ca_certs" not in plain


@pytest.mark.parametrize(("given_", "expected"), [
    (["10.0.0.1:26379", "10.0.0.2:26380"], [("10.0.0.1", 26379), ("10.0.0.2", 26380)]),
    (["sentinel.example"], [("sentinel.example", 26379)]),
    (["[2001:db8::1]:26379", "2001:db8::2"], [("2001:db8::1", 26379), ("2001:db8::2", 26379)]),
])
def test_sentinel_addresses(given_: list[str], expected: list[tuple[str, int]]) -> None:
    assert sentinel_addresses(given_) == expected
