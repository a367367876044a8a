"""A Samba Active Directory domain controller for the LDAP backend's tests.

Provisioned at test time into a private prefix (about 7 s, so once per test session; the
session fixture reuses it), users and nested groups added offline through Samba's own
Python bindings (one process instead of a dozen `samba-tool` runs), TLS from the test CA
of `tests.servers.slapd.make_pki`, and `server services = ldap, cldap` only.

Ports: Samba hard-codes LDAP on 389 and 636. So that a test run neither needs those ports
free nor collides with another run on the same machine, the DC runs in its own network
namespace (`unshare -n`, its loopback only), and socat bridges it out: inside, a socat per
port listens on a unix socket in the prefix and connects to 127.0.0.1:389/636; outside, a
socat per port listens on a free 127.0.0.1 port and connects to that unix socket (see
reference/test-servers.md section 4). Where no network namespace can be made (a container
without CAP_SYS_ADMIN), the DC runs directly on 127.0.0.1:389/636 if they are free.

Stopping: the namespace's shell is the child we started; on SIGTERM it stops samba and
the inner socats and reaps them, so nothing is left behind in the namespace.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.servers.slapd import TestPki, make_pki
from tests.support import ManagedProcess, free_port, require_binary, tcp_open, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyasn1 >= 0.6.2 vs ldap3 2.9.1
    import ldap3
    from ldap3.core.exceptions import LDAPException

REALM = "EXAMPLE.TEST"
DOMAIN = "EXAMPLE"
BASE_DN = "DC=example,DC=test"
ADMIN_PASSWORD = "Adm1nPass!23"
SERVICE_DN = f"CN=svc-radius,CN=Users,{BASE_DN}"
SERVICE_PASSWORD = "SvcRadius!23"
#: The SecSign ID lives in employeeNumber: Samba's schema has no secsignId, and
#: employeeID is limited to 16 characters.
SECSIGN_ATTRIBUTE = "employeeNumber"


@dataclass(frozen=True)
class AdUser:
    name: str
    password: str
    secsign_id: str | None


AD_USERS = (
    AdUser("alice", "AlicePass!1", "alice.secsign"),
    AdUser("bob", "BobPass!1", "bob.secsign"),
    AdUser("dave", "DavePass!1", None),
    AdUser("erin", "ErinPass!1", "erin.secsign"),  # disabled
)

_SEED = """\
import sys
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
base = db.domain_dn()
users = {users!r}
for name, password, secsign_id in users:
    db.newuser(name, password)
    if secsign_id:
        m = ldb.Message()
        m.dn = ldb.Dn(db, "CN=%s,CN=Users,%s" % (name, base))
        m["employeeNumber"] = ldb.MessageElement(secsign_id, ldb.FLAG_MOD_REPLACE,
                                                 "employeeNumber")
        db.modify(m)
for group in ("vpn-users", "g1", "g2", "g3"):
    db.newgroup(group)
db.add_remove_group_members("vpn-users", ["alice"])
db.add_remove_group_members("g1", ["alice"])
db.add_remove_group_members("g2", ["g1"])
db.add_remove_group_members("g3", ["g2"])
db.disable_account("(sAMAccountName=erin)")
"""

_NETNS = """\
ip link set lo up || exit 1
socat UNIX-LISTEN:"$1/ldap.sock",fork,unlink-early TCP:127.0.0.1:389 & s1=$!
socat UNIX-LISTEN:"$1/ldaps.sock",fork,unlink-early TCP:127.0.0.1:636 & s2=$!
samba -s "$1/etc/smb.conf" -i -M single -d 1 & dc=$!
trap 'kill $dc $s1 $s2 2>/dev/null; wait' TERM INT
wait $dc
kill $s1 $s2 2>/dev/null
wait
"""


def _samba_python() -> str:
    """The interpreter samba-tool runs with: the one that has Samba's Python bindings."""
    first = Path(require_binary("samba-tool")).read_text(errors="replace").splitlines()[0]
    return first.removeprefix("#!").strip().split()[0]


def _netns_works() -> bool:
    unshare = require_binary("unshare")
    try:
        return subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10,
                              check=False).returncode == 0
    except OSError:
        return False


class SambaDC:
    """A provisioned Samba AD DC, reachable over ldap:// and ldaps:// on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.samba = require_binary("samba")
        self.workdir = workdir
        self.prefix = workdir / "dc"
        self.pki: TestPki = make_pki(workdir / "pki")
        self.netns = _netns_works()
        if self.netns:
            self.socat = require_binary("socat")
            self.port = free_port(socket.SOCK_STREAM)
            self.tls_port = free_port(socket.SOCK_STREAM)
        else:
            self.port, self.tls_port = 389, 636
        self.processes: list[ManagedProcess] = []
        self._provision()
        self._seed()

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _provision(self) -> None:
        d = self.prefix
        subprocess.run(
            [require_binary("samba-tool"), "domain", "provision", f"--targetdir={d}",
             f"--realm={REALM}", f"--domain={DOMAIN}", "--server-role=dc",
             "--dns-backend=NONE", "--host-name=dc1", "--host-ip=127.0.0.1",
             f"--adminpass={ADMIN_PASSWORD}", "--use-rfc2307",
             "--option=interfaces=lo", "--option=bind interfaces only=yes"],
            check=True, capture_output=True, timeout=120,
        )
        for sub in ("run", "log", "cache"):
            (d / sub).mkdir(exist_ok=True)
        extra = {
            "log file": f"{d}/log/log.%m",
            "pid directory": f"{d}/run",
            "ncalrpc dir": f"{d}/run/ncalrpc",
            "winbindd socket directory": f"{d}/run/winbindd",
            "ntp signd socket directory": f"{d}/run/ntp_signd",
            "ldap server require strong auth": "no",
            "server services": "ldap, cldap",
            "tls enabled": "yes",
            "tls keyfile": str(self.pki.key_file),
            "tls certfile": str(self.pki.cert_file),
            "tls cafile": str(self.pki.ca_file),
        }
        conf = d / "etc" / "smb.conf"
        lines = [line for line in conf.read_text().splitlines()
                 if line.strip().partition("=")[0].strip().lower() not in extra]
        at = lines.index("[global]") + 1
        lines[at:at] = [f"\t{key} = {value}" for key, value in extra.items()]
        conf.write_text("\n".join(lines) + "\n")

    def _seed(self) -> None:
        users = [(u.name, u.password, u.secsign_id) for u in AD_USERS]
        users.append(("svc-radius", SERVICE_PASSWORD, None))
        script = self.workdir / "seed.py"
        script.write_text(_SEED.format(users=users))
        subprocess.run([_samba_python(), str(script), str(self.prefix / "etc" / "smb.conf")],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        for port in (self.port, self.tls_port):
            if tcp_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} is taken: a stale server would answer probes")
        if self.netns:
            script = self.workdir / "samba-netns.sh"
            script.write_text(_NETNS)
            dc = ManagedProcess([require_binary("unshare"), "-n", "sh", str(script),
                                 str(self.prefix)], self.workdir / "samba.log")
            self.processes.append(dc)
            for port, sock in ((self.port, "ldap.sock"), (self.tls_port, "ldaps.sock")):
                self.processes.append(ManagedProcess(
                    [self.socat, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                     f"UNIX-CONNECT:{self.prefix / sock}"],
                    self.workdir / f"socat-{port}.log"))
        else:
            dc = ManagedProcess([self.samba, "-s", str(self.prefix / "etc" / "smb.conf"), "-i",
                                 "-M", "single", "-d", "1"], self.workdir / "samba.log")
            self.processes.append(dc)

        def ready() -> bool:
            if not dc.alive():
                raise RuntimeError(f"samba died:\n{dc.output()[-3000:]}")
            return self._answers(self.ldap_url) and self._answers(self.ldaps_url)

        wait_for(ready, timeout=60, what="samba to answer LDAP", interval=0.1)

    def _answers(self, url: str) -> bool:
        tls = ldap3.Tls(validate=ssl.CERT_NONE)
        server = ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=1, tls=tls)
        conn = ldap3.Connection(server, receive_timeout=2)
        try:
            conn.open()
            conn.bind()
            return bool(conn.search("", "(objectClass=*)", search_scope=ldap3.BASE,
                                    attributes=["defaultNamingContext"]))
        except (LDAPException, OSError):
            return False
        finally:
            with contextlib.suppress(LDAPException, OSError):
                conn.unbind()
            if conn.socket is not None:  # ldap3 leaves it open when connect() failed
                conn.socket.close()

    def stop(self) -> None:
        """Stop the host socats, then samba, then the inner socats in samba's group."""
        for process in reversed(self.processes):
            process.stop(grace=10)
        self.processes.clear()
