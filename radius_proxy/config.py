"""The configuration model: one TOML file into frozen dataclasses, validated once at start.

Every key of PRODUCT.md section 3 is a field here, with its default and a line of
documentation in the field's metadata; the loader in `config_loader.py` walks these
classes, so an unknown key, a wrong type or a value out of range is reported with the file,
the key and the fix. A misspelt security setting is a hole, so nothing is silently ignored.

Secrets are `Secret` values: given inline as `X = "..."` or, preferably, as `X_file =
"path"`; their repr never shows the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/radius-proxy/radius-proxy.toml"


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string that cannot leak through repr(), str() or a log line by accident."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self.value)

    def encode(self) -> bytes:
        return self.value.encode("utf-8")


NO_SECRET = Secret("")


def doc(
    text: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    path: bool = False,
) -> dict[str, Any]:
    """Field metadata: the documentation line and the checks the loader applies.

    `path` marks file names, which are read relative to the config file's folder.
    """
    return {"doc": text, "min": minimum, "max": maximum, "choices": choices, "path": path}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    listen: tuple[str, ...] = field(
        default=("127.0.0.1:1812",),
        metadata=doc('UDP addresses, one socket each; "[::1]:1812" for IPv6'),
    )
    max_pending: int = field(
        default=10000,
        metadata=doc("authentications in flight; beyond it requests are dropped", minimum=1,
                     maximum=1_000_000),
    )
    reply_cache_seconds: float = field(
        default=30.0,
        metadata=doc("how long a sent reply is kept for retransmits (RFC 5080)", minimum=1,
                     maximum=300),
    )
    receive_buffer_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=doc("UDP receive buffer per socket, for bursts (capped by net.core.rmem_max)",
                     minimum=65536, maximum=256 * 1024 * 1024),
    )
    dictionaries: tuple[str, ...] = field(
        default=(), metadata=doc("extra RADIUS dictionary files (FreeRADIUS format)", path=True)
    )
    workers: int = field(
        default=1,
        metadata=doc("proxy processes sharing the listen addresses (Linux, SO_REUSEPORT), one "
                     "per core; more than 1 needs [state] backend = \"redis\"", minimum=1,
                     maximum=64),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    name: str = field(metadata=doc("a name for this NAS group, used in logs and metrics"))
    networks: tuple[str, ...] = field(
        metadata=doc("source networks in CIDR form; the longest prefix wins")
    )
    secret: Secret = field(metadata=doc("the shared secret, at least 16 characters"))
    require_message_authenticator: bool = field(
        default=True,
        metadata=doc("drop requests without Message-Authenticator; false only for legacy NASes"),
    )
    limit_proxy_state: bool = field(
        default=True,
        metadata=doc("drop requests with Proxy-State but no Message-Authenticator (BlastRADIUS)"),
    )
    service_name: str = field(
        default="Login at {client}",
        metadata=doc("shown on the phone; placeholders: request attributes in snake_case, "
                     "{client}, {user_name}"),
    )
    service_address: str = field(
        default="{calling_station_id}",
        metadata=doc("shown on the phone under the service name; same placeholders"),
    )
    nas_timeout_seconds: float = field(
        default=60.0,
        metadata=doc("how long this NAS waits for an answer; the push must end before it",
                     minimum=1, maximum=600),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryConfig:
    backend: str = field(
        default="file",
        metadata=doc("the password check", choices=("ldap", "radius", "file", "none")),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LdapConfig:
    urls: tuple[str, ...] = field(
        default=(), metadata=doc("ldap:// or ldaps:// URLs, tried in order with failover")
    )
    start_tls: bool = field(default=False, metadata=doc("upgrade ldap:// with StartTLS"))
    ca_file: str = field(default="", metadata=doc("CA bundle for the directory's certificate",
                                                      path=True))
    bind_dn: str = field(default="", metadata=doc("the service account that searches"))
    bind_password: Secret = field(default=NO_SECRET, metadata=doc("the service account's password"))
    base_dn: str = field(default="", metadata=doc("where users are searched"))
    user_filter: str = field(
        default="(&(objectClass=user)(sAMAccountName={username}))",
        metadata=doc("search filter; {username} is escaped per RFC 4515"),
    )
    secsign_id_attribute: str = field(
        default="secsignId", metadata=doc("the attribute holding the user's SecSign ID")
    )
    group_attribute: str = field(
        default="memberOf", metadata=doc("the attribute listing a user's groups (DNs)")
    )
    nested_groups: bool = field(
        default=True, metadata=doc("resolve nested group membership (Active Directory)")
    )
    strip_domain: bool = field(
        default=True,
        metadata=doc(r'reduce "DOMAIN\user" and "user@domain" to "user" before the search'),
    )
    timeout_seconds: float = field(
        default=5.0, metadata=doc("connect and per-operation timeout", minimum=0.1, maximum=120)
    )
    dead_server_seconds: float = field(
        default=30.0,
        metadata=doc("how long a failed URL is skipped before it is tried again", minimum=0,
                     maximum=3600),
    )
    pool_size: int = field(
        default=8,
        metadata=doc("connections kept for user binds, one bind at a time each (service "
                     "searches share two more)", minimum=1, maximum=256),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RadiusUpstreamConfig:
    servers: tuple[str, ...] = field(
        default=(), metadata=doc("upstream RADIUS servers host:port, tried in order")
    )
    secret: Secret = field(default=NO_SECRET, metadata=doc("the secret shared with the upstreams"))
    timeout_seconds: float = field(
        default=3.0, metadata=doc("wait per attempt", minimum=0.1, maximum=60)
    )
    retries: int = field(
        default=1, metadata=doc("retransmits per server before failover", minimum=0, maximum=10)
    )
    require_message_authenticator: bool = field(
        default=True, metadata=doc("replies from upstream must carry Message-Authenticator")
    )
    pass_through: tuple[str, ...] = field(
        default=("Class",),
        metadata=doc('reply attributes copied into our Access-Accept; ["*"] for all'),
    )
    dead_server_seconds: float = field(
        default=30.0,
        metadata=doc("a server that failed is probed with Status-Server this often until it "
                     "answers", minimum=1, maximum=3600),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class UsersFileConfig:
    path: str = field(
        default="", metadata=doc('the users file of primary backend "file"', path=True)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityConfig:
    sources: tuple[str, ...] = field(
        default=("file",),
        metadata=doc("where the SecSign ID comes from, in order", choices=("ldap", "file",
                                                                          "username")),
    )
    mapping_file: str = field(default="", metadata=doc('"user = secsignid" lines', path=True))
    username_suffix: str = field(
        default="", metadata=doc('for source "username": SecSign ID = user name + suffix')
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SecSignConfig:
    api: str = field(default="rest", metadata=doc("the ID server's API", choices=("rest",
                                                                                  "legacy")))
    servers: tuple[str, ...] = field(
        default=("https://httpapi.secsign.com", "https://httpapi2.secsign.com"),
        metadata=doc("ID servers, tried in order on connection errors and 5xx"),
    )
    pin_account: str = field(default="", metadata=doc("the REST API's PIN account"))
    pin_password: Secret = field(default=NO_SECRET, metadata=doc("the PIN account's password"))
    plugin_name: str = field(default="radius-proxy", metadata=doc("sent as pluginname"))
    access_pass: bool = field(
        default=False, metadata=doc("show the access-pass symbol (a console cannot)")
    )
    poll_interval_seconds: float = field(
        default=2.0, metadata=doc("how often a pending push is polled", minimum=0.05, maximum=30)
    )
    push_timeout_seconds: float = field(
        default=50.0,
        metadata=doc("a push still pending after this is cancelled and rejected", minimum=1,
                     maximum=600),
    )
    request_timeout_seconds: float = field(
        default=10.0, metadata=doc("timeout of each HTTP request", minimum=0.1, maximum=120)
    )
    ca_file: str = field(default="", metadata=doc("CA bundle for the ID server; default: system",
                                                           path=True))
    max_connections: int = field(
        default=32, metadata=doc("HTTP requests to the ID server in flight at once", minimum=1,
                                 maximum=1024)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesConfig:
    start: str = field(
        default="SecSign ID: press Enter to send a push to your phone, or type a code",
        metadata=doc("challenge text before the push (at most 253 bytes)"),
    )
    waiting: str = field(
        default="Confirm the login in your SecSign ID app, then press Enter",
        metadata=doc("challenge text while the push waits (at most 253 bytes)"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    mode: str = field(default="push", metadata=doc("push: one round trip; challenge: "
                                                   "Access-Challenge first",
                                                   choices=("push", "challenge")))
    failmode: str = field(
        default="secure",
        metadata=doc("safe: accept on the password alone when the ID server is unreachable "
                     "before a push", choices=("secure", "safe")),
    )
    allow_groups: tuple[str, ...] = field(default=(), metadata=doc("if set, only members log in"))
    require_2fa_groups: tuple[str, ...] = field(
        default=(), metadata=doc("if set, only members need the second factor")
    )
    bypass_2fa_groups: tuple[str, ...] = field(
        default=(), metadata=doc("members log in with the password alone")
    )
    no_secsign_id: str = field(
        default="reject", metadata=doc("a user without a SecSign ID", choices=("reject", "accept"))
    )
    remember_minutes: float = field(
        default=0, metadata=doc("skip the push when this user passed it from this client and "
                                "station within N minutes", minimum=0, maximum=10080)
    )
    show_secsign_id: bool = field(
        default=False, metadata=doc("include the SecSign ID in challenge messages")
    )
    max_pushes_per_user: int = field(
        default=3, metadata=doc("pushes per window; more are rejected (push fatigue)", minimum=1,
                                maximum=1000)
    )
    push_window_minutes: float = field(
        default=10, metadata=doc("the window of max_pushes_per_user", minimum=0.1, maximum=1440)
    )
    passcodes: bool = field(
        default=True, metadata=doc('accept "password,123456" and codes typed at the challenge')
    )
    challenge_timeout_seconds: float = field(
        default=300, metadata=doc("how long a challenge State stays valid", minimum=5,
                                  maximum=3600)
    )
    messages: MessagesConfig = field(
        default_factory=MessagesConfig, metadata=doc("challenge-mode texts")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    backend: str = field(default="memory", metadata=doc("shared state", choices=("memory",
                                                                                 "redis")))
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata=doc("the Redis server"))
    key_prefix: str = field(default="radius-proxy:", metadata=doc("namespace of every key"))
    redis_username: str = field(
        default="", metadata=doc("Redis ACL user (Redis 6+); empty: the default user")
    )
    redis_password: Secret = field(
        default=NO_SECRET,
        metadata=doc("Redis password (AUTH), or in redis_url but not both"),
    )
    ca_file: str = field(
        default="", metadata=doc("CA bundle for rediss:// (TLS); default: system", path=True)
    )
    sentinels: tuple[str, ...] = field(
        default=(), metadata=doc('Sentinel "host:port" list; when set, the primary is found '
                                 "through them and redis_url gives only scheme, password, db")
    )
    sentinel_service: str = field(
        default="mymaster", metadata=doc("the Sentinel service (master) name")
    )
    sentinel_password: Secret = field(
        default=NO_SECRET, metadata=doc("password of the Sentinels themselves, if they have one")
    )
    timeout_seconds: float = field(
        default=1.0, metadata=doc("connect and per-command timeout; a call gives up after 3x",
                                  minimum=0.05, maximum=30)
    )
    unavailable: str = field(
        default="reject",
        metadata=doc("when Redis cannot be reached: reject; drop (no reply, so the NAS tries "
                     "its next server); memory (each instance alone, nothing shared)",
                     choices=("reject", "drop", "memory")),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    format: str = field(default="json", metadata=doc("log line format", choices=("json",
                                                                                 "console")))
    level: str = field(
        default="info",
        metadata=doc("least severe level written", choices=("debug", "info", "warning",
                                                            "error")),
    )
    destination: str = field(
        default="stdout",
        metadata=doc("where log lines go", choices=("stdout", "file", "syslog")),
    )
    file: str = field(default="", metadata=doc('the log file for destination "file"',
                                               path=True))
    syslog_facility: str = field(
        default="daemon",
        metadata=doc("syslog facility for destination \"syslog\"",
                     choices=("daemon", "auth", "authpriv", "user", "local0", "local1",
                              "local2", "local3", "local4", "local5", "local6", "local7")),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    listen: str = field(
        default="127.0.0.1:9812",
        metadata=doc('/metrics, /healthz and /readyz; "" disables'),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; `source` names the file it came from."""

    server: ServerConfig = field(default_factory=ServerConfig, metadata=doc("the RADIUS server"))
    clients: tuple[ClientConfig, ...] = field(default=(), metadata=doc("the NASes"))
    primary: PrimaryConfig = field(default_factory=PrimaryConfig, metadata=doc("password check"))
    ldap: LdapConfig = field(default_factory=LdapConfig, metadata=doc("the directory"))
    radius_upstream: RadiusUpstreamConfig = field(
        default_factory=RadiusUpstreamConfig, metadata=doc("upstream RADIUS servers")
    )
    users_file: UsersFileConfig = field(
        default_factory=UsersFileConfig, metadata=doc("the users file")
    )
    identity: IdentityConfig = field(default_factory=IdentityConfig, metadata=doc("SecSign IDs"))
    secsign: SecSignConfig = field(default_factory=SecSignConfig, metadata=doc("the ID server"))
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata=doc("policy"))
    state: StateConfig = field(default_factory=StateConfig, metadata=doc("shared state"))
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata=doc("logging"))
    http: HttpConfig = field(default_factory=HttpConfig, metadata=doc("HTTP endpoint"))
    source: str = field(default="<defaults>", metadata=doc("internal"))
