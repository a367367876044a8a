"""Prometheus metrics, with the names of PRODUCT.md section 6.

One registry per process (`METRICS`), so the server, the pipeline and the backends count
into the same place and `/metrics` shows it. Label values are bounded: client names come
from the configuration, reasons and outcomes from fixed vocabularies, servers from the
configuration.

With `server.workers` > 1 each worker writes its values to files that the supervisor sums
(prometheus_client's multiprocess mode); a gauge's `multiprocess_mode` says how workers
combine (workers/supervisor.py). `in_flight` is read at scrape time in one process
(server.py) and, in a worker, written once a second (workers/worker.py), because the
supervisor sees only what is written to the files.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The proxy's metrics on their own registry (tests make a fresh one each)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "radius_proxy_requests", "Finished Access-Requests",
            ["client", "outcome", "reason"], registry=self.registry)
        self.in_flight = Gauge(
            "radius_proxy_in_flight", "Authentications in flight", registry=self.registry,
            multiprocess_mode="livesum")  # the whole proxy's, across workers
        self.push_seconds = Histogram(
            "radius_proxy_push_seconds", "Time from push start to the phone's answer",
            buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90), registry=self.registry)
        self.dropped = Counter(
            "radius_proxy_dropped", "Packets silently discarded", ["reason"],
            registry=self.registry)
        self.backend_errors = Counter(
            "radius_proxy_backend_errors", "Failed calls to a backend", ["backend"],
            registry=self.registry)
        self.backend_up = Gauge(
            "radius_proxy_backend_up", "1 when the backend server answers", ["backend", "server"],
            registry=self.registry, multiprocess_mode="livemin")  # 0 if one worker lost it
        self._children: dict[tuple[str, ...], Any] = {}

    def count_request(self, client: str, outcome: str, reason: str) -> None:
        """One finished Access-Request; the labelled child is looked up once per label set.

        `labels()` validates and joins the label values on every call, several times the
        cost of the increment itself; the label sets are few (see the module docstring).
        """
        key = (client, outcome, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(client, outcome, reason)
        child.inc()

    def count_drop(self, reason: str) -> None:
        """One silently discarded packet, as `count_request` does it."""
        key = ("dropped", reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.dropped.labels(reason)
        child.inc()


METRICS = Metrics()
