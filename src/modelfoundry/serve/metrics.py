"""Prometheus metrics of one app (its own registry, so several apps in one process don't mix)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series double the output and no dashboard reads them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "foundry_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "foundry_request_seconds",
            "Request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "foundry_batch_size", "Inputs per model batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "foundry_queue_depth", "Inputs waiting for the model", registry=self.registry
        )
        self.predictions = Counter(
            "foundry_predictions", "Predictions by predicted label", ["label"], registry=self.registry
        )

        # the labelled children, kept: `labels()` takes a lock and builds a key on every call
        self._by_route: dict[tuple[str, int], tuple] = {}
        self._by_label: dict[str, Counter] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        children = self._by_route.get((route, status))
        if children is None:
            labels = {"route": route, "status": str(status)}
            children = self._by_route[route, status] = (
                self.requests.labels(**labels),
                self.latency.labels(**labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def predicted(self, label: str) -> None:
        child = self._by_label.get(label)
        if child is None:
            child = self._by_label[label] = self.predictions.labels(label=label)
        child.inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
