"""The Redis store's pure parts: key names, the challenge codec, connection options.

Kept apart from `redis.py` (the store itself) because none of this does I/O: it is what the
unit tests pin down (key layout, JSON round trips, which options reach redis-py).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import urllib.parse
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from radius_proxy.state import ChallengeContext


class KeySpace:
    """Key and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()

    def challenge(self, token: bytes) -> str:
        return f"{self.prefix}challenge:{token.hex()}"

    def remember(self, key: str) -> str:
        return f"{self.prefix}remember:{self.digest(key)}"

    def pushes(self, user: str) -> str:
        return f"{self.prefix}pushes:{self.digest(user)}"

    def claim(self, digest: str) -> str:
        return f"{self.prefix}claim:{digest}"

    def outcome(self, digest: str) -> str:
        return f"{self.prefix}outcome:{digest}"

    def channel(self, digest: str) -> str:
        return f"{self.prefix}push:{digest}"

    @property
    def pattern(self) -> str:
        """The pub/sub pattern of every push channel: the prefix with glob characters escaped."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}push:*"

    def digest_of_channel(self, channel: bytes | str) -> str | None:
        name = text(channel)
        head = f"{self.prefix}push:"
        return name[len(head):] if name.startswith(head) else None


def _to_json(value: Any) -> Any:
    """bytes as {"b64": ...}, tuples as lists, str, int and None as they are."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, str | int):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a challenge context")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def encode_context(context: ChallengeContext) -> bytes:
    """A ChallengeContext as compact JSON, field by field (bytes as base64)."""
    fields = {f.name: _to_json(getattr(context, f.name))
              for f in dataclasses.fields(ChallengeContext)}
    return json.dumps({"v": 1, **fields}, separators=(",", ":")).encode("utf-8")


def decode_context(data: bytes | str) -> ChallengeContext:
    """The inverse of `encode_context`; ValueError for anything else."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.pop("v", None) != 1:
            raise ValueError("unexpected version")
        context = ChallengeContext(**{k: _from_json(v) for k, v in raw.items()})
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a challenge context: {exc}") from None
    if not all(isinstance(v, str) for v in (context.kind, context.client, context.username)):
        raise ValueError("not a challenge context: kind, client and username must be text")
    return context


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def milliseconds(seconds: float) -> int:
    """A TTL for PX: whole milliseconds, at least 1 (Redis refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


def redact_url(url: str) -> str:
    """The URL for a log line: any password replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def setting(config: Any, name: str, default: Any) -> Any:
    """A StateConfig field, or its default while config.py does not have it yet."""
    value = getattr(config, name, default)
    return getattr(value, "value", value)  # a Secret's text


def connection_options(config: Any) -> dict[str, Any]:
    """redis-py keyword arguments shared by the plain and the Sentinel client.

    The URL's credentials win over `redis_username`/`redis_password` (the loader refuses
    both); `ca_file` applies to rediss:// only.
    """
    timeout = float(setting(config, "timeout_seconds", 1.0))
    url = urllib.parse.urlsplit(config.redis_url)
    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        # One immediate retry on a broken connection (a pooled one after Redis restarted);
        # none on a timeout, which may have executed.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    password = setting(config, "redis_password", "")
    username = setting(config, "redis_username", "")
    if url.password is None and password:
        options["password"] = password
        if username:
            options["username"] = username
    ca_file = setting(config, "ca_file", "")
    if url.scheme == "rediss" and ca_file:
        options["ssl_ca_certs"] = ca_file
    return options


def sentinel_addresses(sentinels: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    """ "host:port" (port default 26379, "[v6]:port" allowed) -> (host, port)."""
    out = []
    for entry in sentinels:
        host, sep, port = entry.rpartition(":")
        if not sep or ("]" not in host and ":" in host):
            host, port = entry, "26379"
        out.append((host.strip("[]"), int(port)))
    return out


def make_client(config: Any) -> tuple[Redis, Sentinel | None]:
    """A client for the configured Redis: by URL, or the Sentinel service's primary."""
    options = connection_options(config)
    sentinels = tuple(setting(config, "sentinels", ()))
    if not sentinels:
        return Redis.from_url(config.redis_url, **options), None
    url = urllib.parse.urlsplit(config.redis_url)
    db = url.path.strip("/")
    if db.isdigit():
        options["db"] = int(db)
    if url.password is not None:
        options["password"] = urllib.parse.unquote(url.password)
        if url.username:
            options["username"] = urllib.parse.unquote(url.username)
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in options.items()
                                       if k.startswith("socket_") or k == "retry"}
    if url.scheme == "rediss":
        options["ssl"] = True
        sentinel_kwargs.update(ssl=True, ssl_ca_certs=options.get("ssl_ca_certs"))
    sentinel_password = setting(config, "sentinel_password", "")
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(sentinel_addresses(sentinels),  # type: ignore[no-untyped-call]
                        sentinel_kwargs=sentinel_kwargs, **options)
    service = setting(config, "sentinel_service", "mymaster")
    client: Redis = sentinel.master_for(service, redis_class=Redis)
    return client, sentinel
