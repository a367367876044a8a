"""The operations endpoint of `[http] listen`: metrics, liveness and readiness.

- `GET /metrics`: the process's Prometheus registry (`radius_proxy.metrics.METRICS`).
- `GET /healthz`: 200 "ok" while the process runs and its event loop answers.
- `GET /readyz`: 200 when every configured backend answered its last probe, else 503 with a
  JSON body naming the failing ones. A load balancer or orchestrator takes an instance out
  of rotation on 503 and back on 200.

Readiness is never computed on request: a background task probes every backend every
`interval` seconds, each probe bounded by `timeout`, and caches the answers, so `/readyz`
answers at once even while a directory hangs, and a flood of health checks never becomes a
flood of LDAP binds. The same task sets `radius_proxy_backend_up{backend, server="any"}`:
1 when at least one server of that backend answered. The per-server series
(`server="<url or host:port>"`) come from the backends themselves, at every transition.

The HTTP layer is the simulator's stdlib server (`simulator/httpserver.py`): no framework,
bounded heads and connections, idle connections closed. Bind it to loopback or a
management network: it has no authentication, and metrics name clients and backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from radius_proxy.config_loader import parse_hostport
from radius_proxy.metrics import METRICS, Metrics
from radius_proxy.simulator.httpserver import HttpServer, Request, Response

log = structlog.get_logger(__name__)

Probe = Callable[[], Awaitable[bool]]

#: Seconds between two probe rounds, and the bound of one probe.
#: What the HTTP endpoint serves, in one proxy and in the supervisor of `server.workers`.
PATHS = ("/metrics", "/healthz", "/readyz")
PROBE_INTERVAL_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 10.0
#: The `server` label of the whole-backend series this module sets.
ANY_SERVER = "any"

#: What to look at when a backend fails its check; keyed by backend (= config section).
HINTS = {
    "ldap": "check ldap.urls, the service account (bind_dn, bind_password_file), ca_file "
            "for ldaps/StartTLS, and that base_dn exists",
    "radius_upstream": "check radius_upstream.servers and the shared secret; the upstream "
                       "must answer Status-Server (FreeRADIUS: status_server = yes) and "
                       "list this host as a client",
    "secsign": "check secsign.servers, the network path (firewall, HTTP proxy) to the ID "
               "server and secsign.ca_file",
}


async def _probe_one(name: str, probe: Probe, limit_seconds: float) -> bool:
    """One probe, never raising: a timeout or an exception is a failed check."""
    try:
        async with asyncio.timeout(limit_seconds):
            return bool(await probe())
    except TimeoutError:
        log.debug("backend_probe_timeout", backend=name, timeout_seconds=limit_seconds)
    except Exception as exc:  # a probe must never take the monitor down
        log.debug("backend_probe_error", backend=name, error=f"{type(exc).__name__}: {exc}")
    return False


async def run_probes(probes: Mapping[str, Probe],
                     limit_seconds: float = PROBE_TIMEOUT_SECONDS) -> dict[str, bool]:
    """Every probe at once, each bounded by limit_seconds; backend name -> reachable."""
    names = list(probes)
    results = await asyncio.gather(*(_probe_one(n, probes[n], limit_seconds) for n in names))
    return dict(zip(names, results, strict=True))


async def self_test(probes: Mapping[str, Probe],
                    limit_seconds: float = PROBE_TIMEOUT_SECONDS) -> dict[str, bool]:
    """Check every backend once and log one line each (run at start).

    `backend_check backend=ldap ok=true`, or a warning with a hint, so the first lines of
    the log say whether the proxy can work, before the first user finds out.
    """
    results = await run_probes(probes, limit_seconds)
    for name, ok in results.items():
        if ok:
            log.info("backend_check", backend=name, ok=True)
        else:
            log.warning("backend_check", backend=name, ok=False,
                        hint=HINTS.get(name, "check this backend's section of the config"))
    return results


class Monitor:
    """The HTTP endpoint and the background prober behind `/readyz`."""

    def __init__(self, listen: str, probes: Mapping[str, Probe], *,
                 interval: float = PROBE_INTERVAL_SECONDS,
                 timeout: float = PROBE_TIMEOUT_SECONDS, metrics: Metrics = METRICS) -> None:
        self._host, self._port = parse_hostport(listen, allow_zero=True)
        self._probes = dict(probes)
        self._interval = interval
        self._timeout = timeout
        self._metrics = metrics
        self._ready: dict[str, bool] = {}
        self._checked = False
        self._http = HttpServer(self._handle)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when `listen` asked for port 0)."""
        return self._http.port

    async def start(self) -> None:
        """Listen, and start probing (the first round at once)."""
        await self._http.start(self._host, self._port)
        self._task = asyncio.create_task(self._probe_forever(), name="monitor-probes")
        log.info("http_listening", address=f"{self._host}:{self.port}", paths=list(PATHS))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.close()

    def ready(self) -> dict[str, bool]:
        """Each configured backend -> whether it answered the last probe.

        A backend not yet probed counts as not ready.
        """
        return {name: self._ready.get(name, False) for name in self._probes}

    def set_probes(self, probes: Mapping[str, Probe]) -> None:
        """Replace the probes (the backends changed); the next round checks them."""
        for name in set(self._probes) - set(probes):
            self._ready.pop(name, None)
            with contextlib.suppress(KeyError):
                self._metrics.backend_up.remove(name, ANY_SERVER)
        self._probes = dict(probes)

    async def check(self) -> dict[str, bool]:
        """One probe round: update the cache and the gauges; log every change."""
        probes = dict(self._probes)
        results = await run_probes(probes, self._timeout)
        for name, ok in results.items():
            if name not in self._probes:  # removed while we probed
                continue
            before = self._ready.get(name)
            self._ready[name] = ok
            self._metrics.backend_up.labels(name, ANY_SERVER).set(1 if ok else 0)
            if before is not None and before != ok:
                self._log_change(name, ok)
        self._checked = True
        return results

    @staticmethod
    def _log_change(name: str, ok: bool) -> None:
        if ok:
            log.info("backend_ready", backend=name)
        else:
            log.warning("backend_unready", backend=name, hint=HINTS.get(name, ""))

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # keep probing whatever one round did
                log.exception("monitor_round_failed")
            await asyncio.sleep(self._interval)

    # -- HTTP ------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        return route(request, self._metrics.registry, lambda: Response(200, b"ok\n"),
                     self._readyz)

    def _readyz(self) -> Response:
        backends = self.ready()
        failing = sorted(name for name, ok in backends.items() if not ok)
        ready = not failing
        body: dict[str, object] = {"status": "ready" if ready else "unready",
                                   "backends": backends}
        if failing:
            body["failing"] = failing
            if not self._checked:
                body["detail"] = "the first check has not finished yet"
        return Response(200 if ready else 503, (json.dumps(body) + "\n").encode(),
                        content_type="application/json")


def route(request: Request, registry: CollectorRegistry, healthz: Callable[[], Response],
          readyz: Callable[[], Response]) -> Response:
    """The endpoint's paths (`PATHS`), GET and HEAD only; the two health answers are the
    caller's, since one proxy and a supervisor of workers know health differently."""
    if request.method not in ("GET", "HEAD"):
        return Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
    if request.path == "/metrics":
        return Response(200, generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    if request.path == "/healthz":
        return healthz()
    if request.path == "/readyz":
        return readyz()
    return Response(404, b"not found: try /metrics, /healthz or /readyz\n")
