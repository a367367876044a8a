"""FreeRADIUS 3.2 as a real upstream RADIUS server for the tests (test-servers.md section 1).

A private, minimal config in a temporary folder (no copy of /etc/freeradius: that one runs as
`freerad`, loads EAP certificates and logs to /var/log), started in the foreground with
`freeradius -f` as a child process and always stopped by its PID.

Two virtual servers share the users and the policy:

- `default` on `port`: replies carry no Message-Authenticator, like stock 3.2.1;
- `with_ma` on `ma_port` (the next port): every Accept, Reject and Challenge carries one.

Users: alice/alicepass (Reply-Message), bob/bobpass (Class, Filter-Id, two Cisco-AVPair),
carol/carolpass answered by Access-Challenge (State "otp-carol-1"), then OTP 123456 with that
State, mallory always rejected, and slow/slowpass whose answer takes `slow_seconds`.
Requests from 127.0.0.1 use `secret`; 127.0.0.2 is the client `strict` that must send
Message-Authenticator.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyrad.packet

from radius_proxy.protocol.dictionary import load_dictionary
from tests.support import ManagedProcess, free_port, require_binary, wait_for

CAROL_STATE = b"otp-carol-1"
CAROL_OTP = "123456"
BOB_AVPAIRS = ("shell:priv-lvl=15", "ip:inacl#1=permit ip any any")

#: The global settings of a private radiusd.conf in folder {d} (a format string; the bench
#: builds its own config from these too).
RADIUSD_GLOBALS = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
raddbdir = {d}
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
logdir = ${{raddbdir}}/log
radacctdir = ${{logdir}}/radacct
run_dir = ${{raddbdir}}/run
db_dir = ${{raddbdir}}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/radiusd.pid
name = radiusd
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
"""
#: Request limits and the thread pool of stock 3.2, without the per-request reject delay.
RADIUSD_LIMITS = """\
security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}}
thread pool {{
	start_servers = 5
	max_servers = 32
	min_spare_servers = 3
	max_spare_servers = 10
	max_requests_per_server = 0
	auto_limit_acct = no
}}
"""

_RADIUSD_CONF = RADIUSD_GLOBALS + """\
log {{
	destination = files
	file = ${{logdir}}/radius.log
	colourise = no
	auth = yes
	auth_badpass = no
	auth_goodpass = no
}}
""" + RADIUSD_LIMITS + """\
client localhost {{
	ipaddr = 127.0.0.1
	secret = {secret}
	require_message_authenticator = no
}}
client strict {{
	ipaddr = 127.0.0.2
	secret = {secret}
	require_message_authenticator = yes
}}
modules {{
	pap {{
		normalise = yes
	}}
	files {{
		filename = ${{confdir}}/users
	}}
	exec {{
		wait = yes
		input_pairs = request
		shell_escape = yes
		timeout = 10
	}}
	always reject {{
		rcode = reject
	}}
	always handled {{
		rcode = handled
	}}
	always ok {{
		rcode = ok
	}}
}}
server default {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {port}
		recv_buff = 4194304
	}}
	$INCLUDE ${{confdir}}/sections.conf
}}
server with_ma {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {ma_port}
		recv_buff = 4194304
	}}
	$INCLUDE ${{confdir}}/sections.conf
}}
"""

_SECTIONS_CONF = """\
	authorize {{
		Autz-Type Status-Server {{
			if ("%{{Virtual-Server}}" == "with_ma") {{
				update reply {{
					Message-Authenticator := 0x00
				}}
			}}
			ok
		}}
		if (&User-Name == "slow") {{
			update control {{
				Tmp-String-0 := "%{{exec:/bin/sleep {slow_seconds}}}"
			}}
		}}
		if (&User-Name == "carol") {{
			if (!&State) {{
				if (&User-Password == "carolpass") {{
					update reply {{
						Reply-Message := "Enter OTP code"
						State := "otp-carol-1"
					}}
					update control {{
						Response-Packet-Type := Access-Challenge
					}}
					if ("%{{Virtual-Server}}" == "with_ma") {{
						update reply {{
							Message-Authenticator := 0x00
						}}
					}}
					handled
				}}
				else {{
					reject
				}}
			}}
			elsif (&State == "otp-carol-1" && &User-Password == "123456") {{
				update control {{
					Auth-Type := Accept
				}}
				update reply {{
					Reply-Message := "OTP ok"
				}}
				ok
			}}
			else {{
				reject
			}}
		}}
		else {{
			files
			pap
		}}
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
	}}
	post-auth {{
		if ("%{{Virtual-Server}}" == "with_ma") {{
			update reply {{
				Message-Authenticator := 0x00
			}}
		}}
		Post-Auth-Type REJECT {{
			update reply {{
				Class !* ANY
				Filter-Id !* ANY
				Cisco-AVPair !* ANY
			}}
			if ("%{{Virtual-Server}}" == "with_ma") {{
				update reply {{
					Message-Authenticator := 0x00
				}}
			}}
		}}
	}}
"""

_USERS = """\
alice	Cleartext-Password := "alicepass"
	Reply-Message := "Hello, alice"

bob	Cleartext-Password := "bobpass"
	Reply-Message := "Hello, bob",
	Class := "bob-class",
	Filter-Id := "vpn-users",
	Cisco-AVPair := "{avpair0}",
	Cisco-AVPair += "{avpair1}"

slow	Cleartext-Password := "slowpass"

mallory	Auth-Type := Reject
	Reply-Message := "go away"
"""


def udp_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port/udp (a stale server would answer our probes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A UDP port p with p + 1 free as well: `default` on p, `with_ma` on p + 1."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and udp_port_free(port + 1):
            return port
    raise RuntimeError("no pair of free UDP ports found")


def status_server(port: int, secret: str, timeout: float = 0.2, host: str = "127.0.0.1") -> bool:
    """One Status-Server with Message-Authenticator (RFC 5997); True on a verified answer."""
    request = pyrad.packet.AuthPacket(code=pyrad.packet.StatusServer, secret=secret.encode(),
                                      dict=load_dictionary())
    request.add_message_authenticator()
    raw = request.RequestPacket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(raw, (host, port))
        try:
            data, _ = s.recvfrom(4096)
        except OSError:  # timeout, or ICMP port unreachable
            return False
    try:
        reply = request.CreateReply(packet=data)
    except pyrad.packet.PacketError:
        return False
    return bool(request.VerifyReply(reply, data))


class FreeRadius:
    """One FreeRADIUS process with a private config; `start()` and `stop()` may repeat."""

    def __init__(self, workdir: Path, *, secret: str | None = None,
                 slow_seconds: float = 2.0) -> None:
        self.binary = require_binary("freeradius")
        self.dir = workdir
        self.secret = secret or secrets.token_hex(16)
        self.port = free_port_pair()
        self.ma_port = self.port + 1
        self.slow_seconds = slow_seconds
        self.process: ManagedProcess | None = None
        self._write_config()

    @property
    def address(self) -> str:
        """host:port of the `default` server (no Message-Authenticator in replies)."""
        return f"127.0.0.1:{self.port}"

    @property
    def ma_address(self) -> str:
        """host:port of the `with_ma` server (Message-Authenticator in every reply)."""
        return f"127.0.0.1:{self.ma_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "radius.log"

    def _write_config(self) -> None:
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        (self.dir / "run").mkdir(exist_ok=True)
        (self.dir / "radiusd.conf").write_text(_RADIUSD_CONF.format(
            d=self.dir, secret=self.secret, port=self.port, ma_port=self.ma_port))
        (self.dir / "sections.conf").write_text(
            _SECTIONS_CONF.format(slow_seconds=f"{self.slow_seconds:g}"))
        (self.dir / "users").write_text(
            _USERS.format(avpair0=BOB_AVPAIRS[0], avpair1=BOB_AVPAIRS[1]))
        check = subprocess.run([self.binary, "-C", "-d", str(self.dir)], capture_output=True,
                               text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"freeradius -C failed:\n{check.stdout}{check.stderr}")

    def start(self) -> None:
        """Start in the foreground; ready once the log says so and a Status-Server is answered."""
        if self.running:
            return
        for port in (self.port, self.ma_port):
            if not udp_port_free(port):
                raise RuntimeError(f"udp port {port} is in use: a stale server would answer")
        self.log_path.write_text("")  # an old "Ready" line must not satisfy the check below
        self.process = ManagedProcess([self.binary, "-f", "-d", str(self.dir)],
                                      self.dir / "stdout.log")
        process = self.process
        wait_for(lambda: "Ready to process requests" in self.log() or not process.alive(),
                 10, "FreeRADIUS to log that it is ready")
        wait_for(lambda: status_server(self.port, self.secret) or not process.alive(),
                 10, "FreeRADIUS to answer Status-Server")
        if not process.alive():
            raise RuntimeError(f"freeradius died:\n{process.output()}\n{self.log()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logins(self, user: str) -> int:
        """How many "Login OK" lines this server logged for user (auth logging is on)."""
        return self.log().count(f"Login OK: [{user}]")


FreeRadiusFactory = Callable[..., FreeRadius]


@contextmanager
def freeradius_factory(base: Path) -> Iterator[FreeRadiusFactory]:
    """Make FreeRADIUS instances under base (each in its own folder); all stopped at exit."""
    made: list[FreeRadius] = []

    def make(*, start: bool = True, secret: str | None = None,
             slow_seconds: float = 2.0) -> FreeRadius:
        server = FreeRadius(base / f"freeradius-{len(made)}", secret=secret,
                            slow_seconds=slow_seconds)
        made.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        for server in made:
            server.stop()

