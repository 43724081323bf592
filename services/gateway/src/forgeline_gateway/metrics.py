"""The gateway's Prometheus metrics, by model, backend and status.

Label values stay bounded: ``model`` is a deployed model's name (requests for unknown models are
counted under ``model="unknown"``), ``backend`` a backend kind, ``endpoint`` one of chat,
completions, embeddings, responses, ``status`` an HTTP status code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["UNKNOWN_MODEL", "GatewayMetrics"]

UNKNOWN_MODEL = "unknown"

# Latency buckets from sub-millisecond (a cached embedding) to minutes (a long generation).
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
_TTFT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class GatewayMetrics:
    """The metric families, registered in `collectors`."""

    def __init__(self, collectors: CollectorRegistry) -> None:
        self.requests = Counter(
            "forgeline_gateway_requests",
            "Inference requests answered, by model, backend, endpoint and HTTP status.",
            ["model", "backend", "endpoint", "status"],
            registry=collectors,
        )
        self.latency = Histogram(
            "forgeline_gateway_request_duration_seconds",
            "Time from receiving an inference request to sending its last byte.",
            ["model", "backend", "endpoint", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=collectors,
        )
        self.ttft = Histogram(
            "forgeline_gateway_time_to_first_token_seconds",
            "Time from receiving a streamed request to sending its first event.",
            ["model", "backend", "endpoint"],
            buckets=_TTFT_BUCKETS,
            registry=collectors,
        )
        self.prompt_tokens = Counter(
            "forgeline_gateway_prompt_tokens",
            "Prompt tokens processed, as the backends report them.",
            ["model", "backend"],
            registry=collectors,
        )
        self.completion_tokens = Counter(
            "forgeline_gateway_completion_tokens",
            "Completion tokens generated, as the backends report them.",
            ["model", "backend"],
            registry=collectors,
        )
        self.in_flight = Gauge(
            "forgeline_gateway_in_flight_requests",
            "Inference requests being served now.",
            ["model", "backend"],
            registry=collectors,
        )
        self.upstream_errors = Counter(
            "forgeline_gateway_upstream_errors",
            "Failed calls to backend instances, by reason (connect, timeout, status_5xx, "
            "broken_stream, invalid_response).",
            ["model", "backend", "reason"],
            registry=collectors,
        )

        self.adapter_attach = Histogram(
            "forgeline_gateway_adapter_attach_seconds",
            "Time to put an adapter deployment on its base deployment: on llama.cpp the base's "
            "blue-green restart with the new set of adapters, on vLLM the runtime load, on "
            "Ollama the creation of its model from the base's.",
            ["backend"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=collectors,
        )
        # Adapters loaded into and unloaded from a running base server (vLLM), each by its
        # adapter deployment (``model``): how often one is evicted and brought back shows
        # whether the base's max_loaded_adapters fits its traffic.
        self.adapter_loads = Counter(
            "forgeline_gateway_adapter_loads",
            "Adapters loaded into their base deployment's server, by reason (attach: deployed; "
            "on_demand: a request for an unloaded adapter; restore: a gateway start).",
            ["base", "model", "backend", "reason"],
            registry=collectors,
        )
        self.adapter_unloads = Counter(
            "forgeline_gateway_adapter_unloads",
            "Adapters unloaded from their base deployment's server, by reason (lru: evicted, "
            "least recently used, to load another; detach: the adapter deployment was deleted; "
            "restore: past the limit at a gateway start).",
            ["base", "model", "backend", "reason"],
            registry=collectors,
        )
        self.adapter_load = Histogram(
            "forgeline_gateway_adapter_load_seconds",
            "Time to load an adapter into its base deployment's running server.",
            ["model", "backend"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=collectors,
        )
        self._collectors = collectors

    def watch_adapters(self, count: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Report ``forgeline_gateway_base_adapters`` from `count` (adapters per base
        deployment and backend) at each scrape, so the figure is never out of step."""
        self._collectors.register(
            _PerBase(
                count,
                "forgeline_gateway_base_adapters",
                "Adapter deployments served on each base deployment's processes.",
            )
        )

    def watch_loaded_adapters(self, count: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Report ``forgeline_gateway_base_adapters_loaded`` from `count` (adapters loaded
        now in each base deployment's server, by base and backend) at each scrape."""
        self._collectors.register(
            _PerBase(
                count,
                "forgeline_gateway_base_adapters_loaded",
                "Adapters loaded now in each base deployment's server (at most its "
                "max_loaded_adapters; the others are loaded again on demand).",
            )
        )

    def observe(self, model: str, backend: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        code = str(status)
        self.requests.labels(model, backend, endpoint, code).inc()
        self.latency.labels(model, backend, endpoint, code).observe(seconds)

    def tokens(self, model: str, backend: str, prompt: int, completion: int) -> None:
        if prompt > 0:
            self.prompt_tokens.labels(model, backend).inc(prompt)
        if completion > 0:
            self.completion_tokens.labels(model, backend).inc(completion)


class _PerBase(Collector):
    """A gauge by base deployment and backend, read at scrape time."""

    def __init__(
        self, count: Callable[[], Mapping[tuple[str, str], int]], name: str, documentation: str
    ) -> None:
        self._count = count
        self._name = name
        self._documentation = documentation

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=["base", "backend"])
        for (base, backend), adapters in sorted(self._count().items()):
            family.add_metric([base, backend], adapters)
        yield family
