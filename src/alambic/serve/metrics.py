"""Prometheus metrics of the gateway: requests, latency, tokens, and the engine's batch and queue."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from alambic.generation import GenerationEngine
from alambic.store import RequestRecord


class EngineCollector:
    """Read at scrape time, so the figures are current without a background thread."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine

    def collect(self):
        yield GaugeMetricFamily(
            "alambic_active_sequences", "Sequences in the running batch.", value=self.engine.active_sequences
        )
        yield GaugeMetricFamily(
            "alambic_queued_requests",
            "Requests waiting to join the batch.",
            value=self.engine.queued_requests,
        )
        drafts = CounterMetricFamily(
            "alambic_draft_tokens", "Tokens the model was fed ahead of a sequence running alone.", labels=["outcome"]
        )
        drafts.add_metric(["accepted"], self.engine.batch.accepted_tokens)
        drafts.add_metric(["taken_back"], self.engine.batch.drafted_tokens - self.engine.batch.accepted_tokens)
        yield drafts


class GatewayMetrics:
    def __init__(self, engine: GenerationEngine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "alambic_requests",
            "Requests by endpoint (the route's path template) and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "alambic_request_latency_seconds",
            "Time from request to logged response.",
            ["endpoint"],
            buckets=(0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.overhead = Histogram(
            "alambic_gateway_overhead_seconds",
            "Time a request spends in authentication, policy and logging.",
            buckets=(0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1),
            registry=self.registry,
        )
        self.tokens = Counter("alambic_tokens", "Tokens processed.", ["kind"], registry=self.registry)
        self.registry.register(EngineCollector(engine))

    def observe(self, record: RequestRecord, state: dict) -> None:
        # Labelled by route template, not the raw path: an unknown caller must not be able to add series.
        endpoint = state["route"]
        self.overhead.observe(state["overhead_s"])
        self.requests.labels(endpoint, str(record.status_code)).inc()
        self.latency.labels(endpoint).observe((record.latency_ms or 0) / 1000)
        self.tokens.labels("prompt").inc(record.prompt_tokens or 0)
        self.tokens.labels("completion").inc(record.completion_tokens or 0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
