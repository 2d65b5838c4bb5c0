"""The reload metrics, named as Prometheus and Alertmanager name theirs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llama_exporter.reload.apply import Counts

PREFIX = "llama_exporter_"
RESULTS = ("success", "failure")


class ReloadMetrics(Collector):
    """config_last_reload_successful, its success timestamp, config_reloads_total{result}."""

    def __init__(self, counts: Callable[[], Counts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        """The three families (no I/O)."""
        c = self._counts()
        yield GaugeMetricFamily(
            PREFIX + "config_last_reload_successful",
            "1 when the last config reload was applied (or none was tried), 0 when it failed.",
            value=1.0 if c.last_ok else 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "config_last_reload_success_timestamp_seconds",
            "Unix time of the last config reload applied (the service's start before any).",
            value=c.last_success,
        )
        total = CounterMetricFamily(
            PREFIX + "config_reloads",
            "Config reloads tried, by result (success: applied; failure: the old config stays).",
            labels=["result"],
        )
        total.add_metric(["success"], c.success)
        total.add_metric(["failure"], c.failure)
        yield total
