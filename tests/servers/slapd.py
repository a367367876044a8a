"""OpenLDAP slapd with an AD-like schema, TLS and seeded users, for the LDAP backend's tests.

A private slapd.conf (mdb, memberof overlay, ppolicy) in a temporary directory; slapd runs
in the foreground (`-d 0`) on free ports for ldap:// and ldaps:// (StartTLS on the first),
with a CA and server certificate made at test time by `openssl`. The schema adds the
Active Directory names the backend looks for (sAMAccountName, userPrincipalName,
userAccountControl, lockoutTime) and a `secsignId` attribute, so the same backend code runs
against slapd and against Samba AD. See docs in reference/test-servers.md section 3.

The server can be stopped and started again mid-test; its database survives a restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.support import ManagedProcess, free_port, require_binary, tcp_open, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyasn1 >= 0.6.2 vs ldap3 2.9.1
    import ldap3

SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "adminpass"
SERVICE_DN = f"cn=svc-radius,ou=service,{SUFFIX}"
SERVICE_PASSWORD = "svcpass-123"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
#: The user filter the tests configure; sAMAccountName as on Active Directory.
USER_FILTER = "(&(objectClass=adLikeUser)(sAMAccountName={username}))"


@dataclass(frozen=True)
class TestUser:
    """A seeded account: its login name, password and what the directory says about it."""

    name: str
    password: str
    secsign_id: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    uid: str | None = None

    @property
    def dn(self) -> str:
        return f"uid={self.uid or self.name},{PEOPLE}"


USERS = (
    TestUser("alice", "alicepass", "alice.secsign",
             (("userPrincipalName", "alice@example.com"),)),
    TestUser("bob", "bobpass", "bob.secsign"),
    TestUser("carol", "carolpass", "carol.secsign"),
    TestUser("dave", "davepass"),  # no secsignId
    TestUser("erin", "erinpass", "erin.secsign", (("userAccountControl", "514"),)),  # disabled
    TestUser("frank", "frankpass", "frank.secsign",
             (("lockoutTime", "133000000000000000"),)),  # locked out (AD-style)
    TestUser("gina", "ginapass", "gina.secsign"),  # locked by ppolicy, see _seed
    TestUser("j\u00fcrgen", "juergenpass", "juergen.secsign", uid="juergen"),
    TestUser("twin", "twinpass", "twin1.secsign", uid="twin1"),
    TestUser("twin", "twinpass", "twin2.secsign", uid="twin2"),
)

#: Nested groups: alice is in g1, g1 in g2, g2 in g3; bob is in a loop (loop-a <-> loop-b).
GROUP_TREE = (
    ("vpn-users", ("uid=alice", "uid=carol")),
    ("g1", ("uid=alice",)),
    ("g2", ("cn=g1",)),
    ("g3", ("cn=g2",)),
    ("loop-a", ("uid=bob",)),
    ("loop-b", ("cn=loop-a",)),
)

SCHEMA = """\
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
\tEQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
\tSYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
\tEQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
\tSYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
\tEQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.662 NAME 'lockoutTime'
\tEQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.1.2 NAME 'secsignId'
\tEQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
\tSYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.99999.1.2.1 NAME 'adLikeUser' SUP top AUXILIARY
\tMAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ lockoutTime $ secsignId ) )
"""


@dataclass(frozen=True)
class TestPki:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost, signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path, name: str = "radius-proxy test CA",
             san: str = "IP:127.0.0.1, DNS:localhost") -> TestPki:
    """Make a CA and a server certificate with openssl (EC P-256, valid for two days).

    `san` is the certificate's subjectAltName: the names a client may verify it for.
    """
    openssl = require_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName = {san}\n"
                   "extendedKeyUsage = serverAuth\nkeyUsage = critical, digitalSignature\n"
                   "basicConstraints = critical, CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-subj", f"/CN={name}", "-days", "2", "-keyout", ca_key,
         "-out", ca_pem, "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-subj", "/CN=localhost", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", pem],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)
    key.chmod(0o600)
    return TestPki(ca_pem, pem, key)


def ssha(password: str) -> str:
    """An RFC 2307 {SSHA} hash, as slappasswd makes, without running slappasswd."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - slapd's format
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


class Slapd:
    """One slapd: private config, free ports, seeded once, stoppable and restartable."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("slapd")
        self.workdir = workdir
        self.pki = make_pki(workdir / "pki")
        self.port = free_port(socket.SOCK_STREAM)
        self.tls_port = free_port(socket.SOCK_STREAM)
        self.process: ManagedProcess | None = None
        self._write_config()
        self.start()
        try:
            self._seed()
        except BaseException:
            self.stop()
            raise

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _write_config(self) -> None:
        d = self.workdir
        (d / "db").mkdir(parents=True, exist_ok=True)
        (d / "adlike.schema").write_text(SCHEMA)
        (d / "slapd.conf").write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {d}/adlike.schema
pidfile  {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload ppolicy
TLSCACertificateFile {self.pki.ca_file}
TLSCertificateFile {self.pki.cert_file}
TLSCertificateKeyFile {self.pki.key_file}
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PASSWORD)}
directory {d}/db
index objectClass eq
index uid,cn,sAMAccountName eq
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true
overlay ppolicy
access to attrs=userPassword
\tby self write
\tby anonymous auth
\tby * none
access to *
\tby users read
\tby * none
""")

    def start(self) -> None:
        """Start slapd on its ports (which must be free) and wait until it answers."""
        assert self.process is None or not self.process.alive()
        for port in (self.port, self.tls_port):
            if tcp_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} is taken: a stale server would answer probes")
        self.process = ManagedProcess(
            [self.binary, "-d", "0", "-h", f"{self.ldap_url}/ {self.ldaps_url}/",
             "-f", str(self.workdir / "slapd.conf")],
            self.workdir / "slapd.log",
        )
        process = self.process

        def ready() -> bool:
            if not process.alive():
                raise RuntimeError(f"slapd died:\n{process.output()[-2000:]}")
            return tcp_open("127.0.0.1", self.port) and tcp_open("127.0.0.1", self.tls_port)

        wait_for(ready, timeout=10, what="slapd to listen")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def admin(self) -> ldap3.Connection:
        """A connection bound as the rootdn, for seeding and for changes made by tests."""
        return ldap3.Connection(ldap3.Server(self.ldap_url, get_info=ldap3.NONE),
                                ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True)

    def _seed(self) -> None:
        conn = self.admin()
        try:
            for dn, classes, attrs in self._entries():
                conn.add(dn, classes, attrs)
            # ppolicy: an administrative lock, which the backend must honour before binding.
            conn.modify(f"uid=gina,{PEOPLE}",
                        {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE, ["000001010000Z"])]})
            # close the loop: loop-a is also a member of loop-b
            conn.modify(f"cn=loop-a,{GROUPS}",
                        {"member": [(ldap3.MODIFY_ADD, [f"cn=loop-b,{GROUPS}"])]})
        finally:
            conn.unbind()

    @staticmethod
    def _entries() -> list[tuple[str, list[str], dict[str, object]]]:
        entries: list[tuple[str, list[str], dict[str, object]]] = [
            (SUFFIX, ["dcObject", "organization"], {"o": "Example Corp", "dc": "example"}),
            (PEOPLE, ["organizationalUnit"], {"ou": "people"}),
            (GROUPS, ["organizationalUnit"], {"ou": "groups"}),
            (f"ou=service,{SUFFIX}", ["organizationalUnit"], {"ou": "service"}),
            (SERVICE_DN, ["person"], {"cn": "svc-radius", "sn": "service",
                                      "userPassword": ssha(SERVICE_PASSWORD)}),
        ]
        for user in USERS:
            attrs: dict[str, object] = {
                "uid": user.uid or user.name, "cn": user.name, "sn": "Example",
                "sAMAccountName": user.name, "userPassword": ssha(user.password),
            }
            if user.secsign_id:
                attrs["secsignId"] = user.secsign_id
            attrs.update(dict(user.extra))
            entries.append((user.dn, ["inetOrgPerson", "adLikeUser"], attrs))
        for name, members in GROUP_TREE:
            dns = [f"{m},{PEOPLE if m.startswith('uid=') else GROUPS}" for m in members]
            entries.append((f"cn={name},{GROUPS}", ["groupOfNames"], {"cn": name,
                                                                      "member": dns}))
        return entries
