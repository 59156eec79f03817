"""Prometheus metrics (`GET /metrics`): requests, latencies, engine starts, evictions, memory.

Counters and histograms are updated as things happen (requests by the relay, starts and stops
by the scheduler's events); gauges (in flight, queued, GPU memory, footprints, states) are read
from the gateway's status at scrape time, so they can never drift from what the gateway knows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1 << 20
# Requests: from a millisecond (warm, tiny) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
START_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
EVICTION_REASONS = ("lru", "ttl", "discovery", "admin", "oom", "reload")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vramgate_requests", "Relayed requests.", ["model", "route", "status"], registry=r
        )
        self.duration = Histogram(
            "vramgate_request_duration_seconds",
            "Time from arrival to the end of the answer.",
            ["model", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "vramgate_time_to_first_token_seconds",
            "Streams: time from arrival to the first chunk of the answer.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "vramgate_overhead_seconds",
            "Time the gateway itself added (not engine starts, queueing or generation).",
            ["model"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.starts = Counter(
            "vramgate_engine_starts", "Engine starts by result.", ["model", "result"], registry=r
        )
        self.start_duration = Histogram(
            "vramgate_engine_start_seconds",
            "Time from a start's decision to the engine being ready.",
            ["model"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}
        self.evictions = Counter(
            "vramgate_evictions", "Engines stopped, by reason.", ["model", "reason"], registry=r
        )

    def attach(self, status: Callable[[], dict[str, Any]]) -> None:
        """Gauges read `status()` (the shape of GET /gateway/status) at each scrape."""
        self.registry.register(_Gauges(status))

    def event(self, event: dict[str, Any]) -> None:
        """A scheduler event: starts, failures, stops."""
        kind, model, data = event["kind"], event["model"], event
        if kind == "ready":
            self.starts.labels(model, "ready").inc()
            self.start_duration.labels(model).observe(data.get("seconds", 0.0))
        elif kind == "start_failed":
            self.starts.labels(model, "failed").inc()
        elif kind == "oom":
            self.starts.labels(model, "out_of_memory").inc()
        elif kind == "stop" and data.get("reason") in EVICTION_REASONS:
            self.evictions.labels(model, data["reason"]).inc()

    def request(
        self,
        model: str,
        route: str,
        status: int,
        duration_s: float,
        overhead_s: float | None,
        first_chunk_s: float | None,
    ) -> None:
        # On the hot path: the labelled children are looked up once per (model, route, status)
        # and kept; prometheus_client's labels() validates and locks on every call.
        key = (model, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(model, route, str(status)),
                self.duration.labels(model, route),
                self.overhead.labels(model),
                self.first_token.labels(model),
            )
        requests, duration, overhead, first_token = children
        requests.inc()
        duration.observe(duration_s)
        if overhead_s is not None:
            overhead.observe(overhead_s)
        if first_chunk_s is not None:
            first_token.observe(first_chunk_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges(Collector):
    """What the gateway knows now, read at each scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        in_flight = GaugeMetricFamily(
            "vramgate_in_flight_requests", "Requests being served.", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "vramgate_queued_requests", "Requests waiting for a slot.", labels=["model"]
        )
        state = GaugeMetricFamily(
            "vramgate_model_state", "1 for the state each model is in.", labels=["model", "state"]
        )
        footprint = GaugeMetricFamily(
            "vramgate_footprint_bytes",
            "GPU memory a model is taken to need, by where the figure comes from.",
            labels=["model", "source"],
        )
        host = GaugeMetricFamily(
            "vramgate_sleeping_host_bytes",
            "Host RAM a sleeping model's engine holds.",
            labels=["model"],
        )
        wake = GaugeMetricFamily(
            "vramgate_last_wake_seconds", "How long a model's last wake took.", labels=["model"]
        )
        ram = status["host_ram"]
        budget = GaugeMetricFamily(
            "vramgate_host_ram_budget_bytes",
            "Host RAM that engines on the CPU and sleeping engines may hold in all.",
        )
        budget.add_metric([], ram["budget_mib"] * MIB)
        ram_used = GaugeMetricFamily(
            "vramgate_host_ram_used_bytes", "Host RAM our engines hold, by model.", labels=["model"]
        )
        for name, mib in ram["models"].items():
            ram_used.add_metric([name], mib * MIB)
        available = GaugeMetricFamily(
            "vramgate_host_ram_available_bytes",
            "What the gateway may still take: MemAvailable, or less where its cgroup is limited.",
        )
        available.add_metric([], ram["available_mib"] * MIB)
        for m in status["models"]:
            name = m["name"]
            if m["host_mib"] is not None:
                host.add_metric([name], m["host_mib"] * MIB)
            if m["wake_s"] is not None:
                wake.add_metric([name], m["wake_s"])
            in_flight.add_metric([name], m["in_flight"])
            queued.add_metric([name], m["queued"])
            state.add_metric([name, m["state"]], 1)
            if m["footprint_mib"] is not None:
                footprint.add_metric([name, m["footprint_source"]], m["footprint_mib"] * MIB)
        yield from (in_flight, queued, state, footprint, host, wake, budget, ram_used, available)
        gpus = status["gpus"]
        families = {
            key: GaugeMetricFamily(
                f"vramgate_gpu_memory_{key}_bytes", f"GPU memory {key}.", labels=["gpu", "node"]
            )
            for key in ("total", "used", "free", "reserved", "others")
        }
        for gpu in gpus:
            for key, family in families.items():
                labels = [str(gpu["index"]), gpu.get("node") or ""]
                family.add_metric(labels, gpu[f"{key}_mib"] * MIB)
        if gpus:
            yield from families.values()
        if nodes := status.get("nodes"):
            up = GaugeMetricFamily(
                "vramgate_node_up", "1 for a cluster node that is alive, 0 once dead.",
                labels=["node"],
            )  # fmt: skip
            engines = GaugeMetricFamily(
                "vramgate_node_engines", "Engines running on a cluster node.", labels=["node"]
            )
            for node in nodes:
                up.add_metric([node["name"]], 1 if node["alive"] else 0)
                engines.add_metric([node["name"]], len(node["engines"]))
            yield from (up, engines)
