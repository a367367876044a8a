"""The `radius-proxy` command (PRODUCT.md section 2).

Exit codes: 0 success; 2 for a broken configuration or a usage error (and for radtest and
test-user, an error or timeout); radtest exits 1 on Access-Reject, test-user when the user
could not log in.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from radius_proxy import __version__
from radius_proxy.config import Config
from radius_proxy.config_loader import default_config_path, load_config
from radius_proxy.errors import ConfigError
from radius_proxy.log import setup_logging

EXIT_CONFIG = 2
_ASK = object()  # --password given without a value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radius-proxy", description="SecSign ID push two-factor "
                                "authentication in front of anything that speaks RADIUS.")
    p.add_argument("--version", action="version", version=f"radius-proxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy in the foreground")
    serve.add_argument("-c", "--config", help="config file (default: $RADIUS_PROXY_CONFIG or "
                       "/etc/radius-proxy/radius-proxy.toml)")
    check = sub.add_parser("check-config", help="validate a configuration; exit 0 or 2")
    check.add_argument("-c", "--config")

    demo = sub.add_parser("demo", help="proxy + SecSign ID simulator + demo users on loopback")
    demo.add_argument("--port", type=int, default=1812, help="RADIUS port (default 1812)")
    demo.add_argument("--simulator-port", type=int, default=8480,
                      help="simulator and phone page port (default 8480)")
    demo.add_argument("--rule", action="append", default=[],
                      help="simulator rule PATTERN=ACTION[:SECONDS] (default *=manual)")

    sim = sub.add_parser("simulator", help="the SecSign ID server simulator")
    sim.add_argument("--listen", default=None, help="H:P (default 127.0.0.1:8480)")
    sim.add_argument("--rule", action="append", default=[], help="PATTERN=ACTION[:SECONDS]")
    sim.add_argument("--account", default=None, help="USER:PASSWORD the REST API accepts")

    rt = sub.add_parser("radtest", help="send an Access-Request and print the answer")
    rt.add_argument("user")
    rt.add_argument("--password", help="the password (default: read from the terminal)")
    rt.add_argument("--server", default="127.0.0.1:1812", help="H:P (default 127.0.0.1:1812)")
    secret = rt.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret")
    secret.add_argument("--secret-file")
    rt.add_argument("--nas-identifier", default="radius-proxy-radtest")
    rt.add_argument("--calling-station-id", default=None)
    rt.add_argument("--response", action="append", default=[],
                    help="answer to a challenge (repeat for several rounds)")
    rt.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt")
    rt.add_argument("--retries", type=int, default=0, help="retransmits of each request")

    tu = sub.add_parser("test-user", help="diagnose a user's login without a NAS: directory "
                        "entry, SecSign ID, groups, policy; --push sends a real push")
    tu.add_argument("user")
    tu.add_argument("-c", "--config")
    tu.add_argument("--push", action="store_true", help="send a real push and wait for it")
    tu.add_argument("--password", nargs="?", const=_ASK, default=None,
                    help="also check the password with the primary backend (without a "
                    "value: read it from the terminal)")

    sub.add_parser("hash-password", help="read a password on stdin, print a users-file hash")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    handlers = {"serve": _serve, "check-config": _check_config, "radtest": _radtest,
                "hash-password": _hash_password, "simulator": _simulator, "demo": _demo,
                "test-user": _test_user}
    try:
        return handlers[command](args)
    except KeyboardInterrupt:
        return 130


def _load(path: str | None) -> Config | None:
    file = path or default_config_path()
    try:
        return load_config(file)
    except ConfigError as exc:
        print(f"radius-proxy: the configuration has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    lc = config.logging
    try:
        setup_logging(lc.format, lc.level, destination=lc.destination, file=lc.file,
                      facility=lc.syslog_facility)
    except OSError as exc:
        print(f"radius-proxy: cannot open the log: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_serve_main(config))
    except ConfigError as exc:  # a backend file (users file, mapping file) is broken
        for problem in exc.problems:
            print(f"radius-proxy: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"radius-proxy: cannot start: {exc}", file=sys.stderr)
        return 1


async def _serve_main(config: Config) -> int:
    """One process; or, with server.workers > 1, a supervisor or one of its workers."""
    from radius_proxy.workers import worker_settings

    settings = worker_settings()
    if settings is not None:
        from radius_proxy.workers.worker import run_worker

        return await run_worker(config, settings)
    if config.server.workers > 1:
        from radius_proxy.workers.supervisor import supervise

        return await supervise(config)
    from radius_proxy.app import run

    return await run(config)


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if config.primary.backend == "file":
        from radius_proxy.backends.users_file import load_users

        try:
            load_users(config.users_file.path)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_CONFIG
    print(f"{config.source}: OK ({len(config.clients)} client(s), primary "
          f"{config.primary.backend}, mode {config.policy.mode})")
    return 0


def _radtest(args: argparse.Namespace) -> int:
    from radius_proxy.protocol.dictionary import load_dictionary
    from radius_proxy.radtest import RadtestOptions, read_password, run_radtest

    if args.secret_file:
        try:
            secret = Path(args.secret_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            print(f"radius-proxy: cannot read {args.secret_file}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    else:
        secret = args.secret
    password = args.password if args.password is not None else read_password()
    options = RadtestOptions(
        user=args.user, password=password, server=args.server, secret=secret.encode("utf-8"),
        nas_identifier=args.nas_identifier, calling_station_id=args.calling_station_id,
        timeout=args.timeout, retries=args.retries, responses=tuple(args.response),
    )
    return run_radtest(options, load_dictionary(()))


def _test_user(args: argparse.Namespace) -> int:
    from radius_proxy.diagnose import test_user
    from radius_proxy.radtest import read_password

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    # Backend warnings (a directory that is down, a refused bind) help here: to stderr.
    setup_logging("console", "warning", stream=sys.stderr)
    password: str | None = read_password() if args.password is _ASK else args.password
    return asyncio.run(test_user(config, args.user, args.push, password, sys.stdout))


def _hash_password(args: argparse.Namespace) -> int:
    from radius_proxy.passwords import hash_password
    from radius_proxy.radtest import read_password

    password = read_password("Password: ")
    if not password:
        print("radius-proxy: an empty password cannot be hashed", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from radius_proxy.simulator import DEFAULT_LISTEN, run_simulator

    return run_simulator(args.listen or DEFAULT_LISTEN, args.rule, args.account)


def _demo(args: argparse.Namespace) -> int:
    from radius_proxy.demo import run_demo

    return run_demo(port=args.port, simulator_port=args.simulator_port, rules=args.rule)
