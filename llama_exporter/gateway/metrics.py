"""Per-request gateway metrics: labelled counters and histograms, and a 60 s window.

Names are the contract in docs/ARCHITECTURE.md ("Gateway metrics"). The collector
does no I/O; observations are plain method calls on the event loop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llama_exporter.metrics.kinds import Counter, Histogram
from llama_exporter.states import LOAD_TRIGGERS, UNLOAD_REASONS

PREFIX = "llama_exporter_"
# Every latency histogram has 0.1 0.25 0.5 1 2 5 10 as boundaries: alert thresholds read exactly.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# 0 first: most requests wait 0, and a quantile that falls in a bucket ending at 0 reads 0
# (in (0, 0.1] histogram_quantile would interpolate, showing 95 ms for no wait at all).
WAIT_BUCKETS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)
REJECT_REASONS = ("queue_full", "timeout", "cancelled")
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class ModelWindow:
    """A model's last 60 s, as the gateway summary shows it."""

    requests: int
    ttft_p50: float | None
    ttft_p95: float | None


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of already sorted values, None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class RequestMetrics(Collector):
    """Every gateway metric; gauges and lifecycle counters are read from callbacks."""

    def __init__(
        self,
        *,
        in_flight: Callable[[], dict[str, int]],
        queue_length: Callable[[], int],
        models: Callable[[], list[str]],
        lifecycle: Callable[[str], tuple[dict[str, int], dict[str, int]]],
        endpoints: Sequence[str] = (),
    ) -> None:
        """endpoints: whose requests_total{code="200"} starts at 0 for every known model."""
        self._endpoints = tuple(endpoints)
        self._in_flight = in_flight
        self._queue_length = queue_length
        self._models = models
        self._lifecycle = lifecycle
        g, m, e = PREFIX + "gateway_", ("model",), ("model", "endpoint")
        self.requests = Counter(
            g + "requests_total", "Gateway requests by model, endpoint and status code.",
            ("model", "endpoint", "code"),
        )  # fmt: skip
        self.duration = Histogram(
            g + "request_duration_seconds", "Gateway request arrival to last byte.", e,
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.ttft = Histogram(
            g + "time_to_first_token_seconds",
            "Streamed requests: arrival to the first event carrying generated text.", m,
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.inter_token = Histogram(
            g + "inter_token_seconds", "Gaps between streamed events carrying text.", m,
            GAP_BUCKETS,
        )  # fmt: skip
        self.queue_wait = Histogram(
            g + "queue_wait_seconds",
            "Time queued for a place under the cap (every admitted request, 0 if none).", m,
            WAIT_BUCKETS,
        )  # fmt: skip
        self.load_wait = Histogram(
            g + "load_wait_seconds",
            "Time waiting for the model to load (every admitted request, 0 if none).", m,
            WAIT_BUCKETS,
        )  # fmt: skip
        self.prompt_tokens = Histogram(
            g + "prompt_tokens", "Prompt tokens per request (usage/timings).", m,
            TOKEN_BUCKETS,
        )  # fmt: skip
        self.completion_tokens = Histogram(
            g + "completion_tokens", "Completion tokens per request (usage/timings).", m,
            TOKEN_BUCKETS,
        )  # fmt: skip
        self.rejected = Counter(
            g + "rejected_total", "Requests refused or dropped while queued, by reason.",
            ("model", "reason"),
        )  # fmt: skip
        self.cut_off = Counter(
            g + "requests_cut_off_total",
            "Requests still running when a stop's drain time ran out, by unload reason.",
            ("model", "reason"),
        )  # fmt: skip
        self._recent: dict[str, deque[float]] = {}  # arrival times
        self._recent_ttft: dict[str, deque[tuple[float, float]]] = {}

    # -- observations ----------------------------------------------------------------

    def request_arrived(self, model: str, arrived: float) -> None:
        """A request for model came in (the summary's last minute counts it from now on)."""
        arrivals = self._recent.setdefault(model, deque())
        arrivals.append(arrived)
        while arrivals[0] < arrived - WINDOW_SECONDS:  # kept short without a reader too
            arrivals.popleft()

    def request_done(
        self, model: str, endpoint: str, code: int | str, arrived: float, now: float
    ) -> None:
        """Count a finished request and its duration."""
        self.requests.inc((model, endpoint, str(code)))
        self.duration.observe((model, endpoint), now - arrived)

    def first_token(self, model: str, seconds: float, now: float) -> None:
        """A streamed request's time to first token."""
        self.ttft.observe((model,), seconds)
        ttfts = self._recent_ttft.setdefault(model, deque())
        ttfts.append((now, seconds))
        while ttfts[0][0] < now - WINDOW_SECONDS:
            ttfts.popleft()

    # -- summary -----------------------------------------------------------------------

    def window(self, model: str, now: float) -> ModelWindow:
        """Requests that arrived in the last 60 s (running ones too) and TTFT quantiles."""
        since = now - WINDOW_SECONDS
        arrivals = self._recent.get(model, deque())
        while arrivals and arrivals[0] < since:
            arrivals.popleft()
        ttfts = self._recent_ttft.get(model, deque())
        while ttfts and ttfts[0][0] < since:
            ttfts.popleft()
        values = sorted(v for _, v in ttfts)
        return ModelWindow(len(arrivals), quantile(values, 0.5), quantile(values, 0.95))

    # -- exposition --------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every gateway family; per-model series start at 0 for every known model."""
        models = self._models()
        in_flight = self._in_flight()
        gauge = GaugeMetricFamily(
            PREFIX + "gateway_requests_in_flight", "Gateway requests running.", labels=["model"]
        )
        for name in models:
            gauge.add_metric([name], in_flight.get(name, 0))
        yield gauge
        yield GaugeMetricFamily(
            PREFIX + "gateway_queue_length",
            "Requests waiting for a place under the cap.",
            value=self._queue_length(),
        )
        for name in models:
            # A series born at 1 loses that first request to rate() and increase().
            for endpoint in self._endpoints:
                self.requests.values.setdefault((name, endpoint, "200"), 0.0)
            for reason in REJECT_REASONS:
                self.rejected.values.setdefault((name, reason), 0.0)
        for counters in (self.requests, self.rejected, self.cut_off):
            yield counters.family()
        for hist in (
            self.duration,
            self.ttft,
            self.inter_token,
            self.queue_wait,
            self.load_wait,
            self.prompt_tokens,
            self.completion_tokens,
        ):
            yield hist.family()
        loads = CounterMetricFamily(
            PREFIX + "model_loads_total", "Instance starts by trigger.", labels=["model", "trigger"]
        )
        unloads = CounterMetricFamily(
            PREFIX + "model_unloads_total", "Instance stops by reason.", labels=["model", "reason"]
        )
        for name in models:
            started, stopped = self._lifecycle(name)
            for trigger in LOAD_TRIGGERS:
                loads.add_metric([name, trigger], started.get(trigger, 0))
            for reason in UNLOAD_REASONS:
                unloads.add_metric([name, reason], stopped.get(reason, 0))
        yield loads
        yield unloads
