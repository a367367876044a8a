"""redis-server (and Redis Sentinel) for the state store's tests (test-servers.md section 5).

Each server runs in the foreground as a child process on a free loopback port, with a
private directory, no persistence (`--save ""`, `--appendonly no`), and is always stopped by
its PID. `stop()` and `start()` reuse the same port, so a test can take Redis away in the
middle of a run and bring it back; `pause()` and `resume()` (SIGSTOP/SIGCONT) make a server
that accepts connections but never answers. Options: a password (`requirepass`), TLS only
(`--port 0 --tls-port`), or a replica of another server. `RedisSentinel` watches one primary
as service "mymaster" (quorum 1, down after 1 s), so a test can force a failover.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from tests.servers.slapd import TestPki
from tests.support import ManagedProcess, free_port, require_binary, tcp_open, wait_for

SERVICE = "mymaster"


class RedisServer:
    """One redis-server: private directory, a free port, stoppable and restartable."""

    def __init__(self, workdir: Path, *, password: str | None = None, tls: TestPki | None = None,
                 replica_of: RedisServer | None = None) -> None:
        self.binary = require_binary("redis-server")
        self.cli_binary = require_binary("redis-cli")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.tls = tls
        self.replica_of = replica_of
        self.port = free_port(socket.SOCK_STREAM)
        self.process: ManagedProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.workdir),
                "--logfile", str(self.workdir / "redis.log"),
                "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls.cert_file),
                     "--tls-key-file", str(self.tls.key_file),
                     "--tls-ca-cert-file", str(self.tls.ca_file), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return args

    def start(self) -> None:
        """Start on the port (which must be free) and wait until PING answers."""
        assert self.process is None or not self.process.alive()
        if tcp_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is taken: a stale server would answer probes")
        self.process = ManagedProcess(self.args(), self.workdir / "stdout.log")
        process = self.process

        def ready() -> bool:
            if not process.alive():
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server died:\n{process.output()}{log}")
            return self.cli("PING", check=False).strip() == "PONG"

        wait_for(ready, timeout=10, what="redis-server to answer PING")

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.stop()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, the server answers nothing."""
        if self.process is not None:
            self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.signal(signal.SIGCONT)

    def cli(self, *command: str, check: bool = True) -> str:
        """Run one command with redis-cli; its raw output."""
        args = [self.cli_binary, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            args += ["--tls", "--cacert", str(self.tls.ca_file)]
        env = {"REDISCLI_AUTH": self.password} if self.password else None
        proc = subprocess.run([*args, *command], capture_output=True, text=True, timeout=10,
                              check=False, env=env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(command)}: {proc.stderr}")
        return proc.stdout


class RedisSentinel:
    """One Sentinel watching `primary` as service "mymaster" (quorum 1)."""

    def __init__(self, workdir: Path, primary: RedisServer) -> None:
        self.binary = require_binary("redis-server")
        self.cli_binary = require_binary("redis-cli")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(socket.SOCK_STREAM)
        conf = workdir / "sentinel.conf"  # Sentinel rewrites its file: a private copy
        auth = f"sentinel auth-pass {SERVICE} {primary.password}\n" if primary.password else ""
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {workdir}\n"
            f"logfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n{auth}"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.process = ManagedProcess([self.binary, str(conf), "--sentinel"],
                                      workdir / "stdout.log")
        wait_for(lambda: self.primary_port() == primary.port, timeout=10,
                 what="sentinel to know the primary")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli(self, *command: str) -> str:
        proc = subprocess.run([self.cli_binary, "-h", "127.0.0.1", "-p", str(self.port),
                               *command], capture_output=True, text=True, timeout=10,
                              check=False)
        return proc.stdout

    def primary_port(self) -> int | None:
        lines = self.cli("SENTINEL", "get-master-addr-by-name", SERVICE).split()
        return int(lines[1]) if len(lines) == 2 and lines[1].isdigit() else None

    def failover(self) -> None:
        """Promote the replica; Sentinel refuses ("NOGOODSLAVE") until it has seen one."""
        wait_for(lambda: self.cli("SENTINEL", "FAILOVER", SERVICE).strip() == "OK", 20,
                 what="sentinel to accept FAILOVER")

    def stop(self) -> None:
        self.process.stop()
