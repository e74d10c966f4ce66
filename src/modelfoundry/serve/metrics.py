"""Prometheus metrics of one app (its own registry, so several apps in one process don't mix)."""

from __future__ import annotations

import collections
import threading
import time

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
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATE_WINDOW_S = 10.0  # foundry_generated_tokens_per_second averages over this many seconds


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

        # text generation (serve/openai.py, generation/engine.py); absent from a classifier's /metrics
        self.generated_tokens = Counter(
            "foundry_generated_tokens", "Tokens generated, all sequences", registry=self.registry
        )
        self.first_token = Histogram(
            "foundry_time_to_first_token_seconds",
            "From a sequence's arrival to its first generated token (queueing and prefill included)",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.cancelled = Counter(
            "foundry_generation_cancelled",
            "Sequences stopped unfinished because their client went away",
            registry=self.registry,
        )
        self.tokens_per_second = TokenRate()

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

    def generating(self, engine_of) -> None:
        """Register the generation gauges; `engine_of()` is the engine serving now (it changes on reload)."""
        Gauge(
            "foundry_generation_waiting", "Sequences waiting for a decode slot", registry=self.registry
        ).set_function(lambda: getattr(engine_of(), "waiting", 0))
        Gauge(
            "foundry_generation_active", "Sequences being decoded together", registry=self.registry
        ).set_function(lambda: getattr(engine_of(), "active", 0))
        Gauge(
            "foundry_generated_tokens_per_second",
            f"Tokens generated per second, all sequences, over the last {RATE_WINDOW_S:g} s",
            registry=self.registry,
        ).set_function(self.tokens_per_second.rate)

    def tokens(self, n: int) -> None:
        """n tokens generated (called by the decode thread once per step)."""
        self.generated_tokens.inc(n)
        self.tokens_per_second.add(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TokenRate:
    """Tokens per second over the last RATE_WINDOW_S seconds: what a dashboard without PromQL shows
    (`rate(foundry_generated_tokens_total[1m])` says the same from the counter)."""

    def __init__(self):
        self._steps: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._steps.append((now, n))
            self._forget(now)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._forget(now)
            return sum(n for _, n in self._steps) / RATE_WINDOW_S

    def _forget(self, now: float) -> None:
        while self._steps and self._steps[0][0] < now - RATE_WINDOW_S:
            self._steps.popleft()
