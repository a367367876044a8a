"""`radius-proxy demo`: the proxy, the SecSign ID simulator and demo users, on loopback.

The embedded default a newcomer runs first: `etc/demo/radius-proxy.toml` with its users
file, the simulator (rule `*=manual`, so the phone page decides) and memory state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

from radius_proxy.config import Config
from radius_proxy.config_loader import load_config
from radius_proxy.errors import ConfigError
from radius_proxy.log import setup_logging

_PACKAGED = Path(__file__).resolve().parent / "demo_files"
_SOURCE_TREE = Path(__file__).resolve().parent.parent / "etc" / "demo"


def demo_config_path() -> Path:
    folder = _PACKAGED if _PACKAGED.exists() else _SOURCE_TREE
    return folder / "radius-proxy.toml"


def demo_config(port: int, simulator_url: str) -> Config:
    config = load_config(demo_config_path())
    server = dataclasses.replace(config.server, listen=(f"127.0.0.1:{port}",))
    secsign = dataclasses.replace(config.secsign, servers=(simulator_url,))
    return dataclasses.replace(config, server=server, secsign=secsign)


async def _run(port: int, simulator_port: int, rules: list[str]) -> int:
    from radius_proxy.app import App
    from radius_proxy.simulator import Simulator, parse_rules, serve_simulator

    simulator = await serve_simulator(Simulator(parse_rules(rules or ["*=manual"])),
                                      "127.0.0.1", simulator_port)
    config = demo_config(port, simulator.url)
    app = App(config)
    await app.start()
    secret = config.clients[0].secret.value
    print(f"""
radius-proxy demo is running.
  RADIUS:      127.0.0.1:{port}  (shared secret: {secret})
  Phone page:  {simulator.page_url}
  Users:       alice / alicepass, bob / bobpass (with SecSign IDs); carol / carolpass (none)

In a second terminal:
  radius-proxy radtest alice --password alicepass --calling-station-id 203.0.113.9 \\
      --server 127.0.0.1:{port} --secret {secret}
then click Approve on the phone page. Ctrl-C stops the demo.
""", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await app.stop(grace=1.0)
    await simulator.close()
    return 0


def run_demo(port: int = 1812, simulator_port: int = 8480, rules: list[str] | None = None) -> int:
    setup_logging("console", "info")
    try:
        return asyncio.run(_run(port, simulator_port, list(rules or [])))
    except ConfigError as exc:
        print(f"radius-proxy demo: {exc}")
        return 2
    except OSError as exc:
        print(f"radius-proxy demo: cannot start: {exc} (is the port in use? try --port)")
        return 1
