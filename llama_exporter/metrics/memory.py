"""Memory families: each model's estimate and reported figure, each device's budget and
what is reserved on it. A Collector over plain callables: no I/O in collect()."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llama_exporter.memory.figure import MemoryFigure

PREFIX = "llama_exporter_"
KINDS = ("weights", "kv", "compute")

Figures = Callable[[], Mapping[str, MemoryFigure]]
Bytes = Callable[[], Mapping[str, int]]


class MemoryCollector(Collector):
    """model_memory_estimated_bytes, model_memory_reported_bytes, memory_budget_bytes,
    memory_reserved_bytes."""

    def __init__(self, estimates: Figures, reported: Figures, budgets: Bytes, reserved: Bytes):
        self._estimates = estimates
        self._reported = reported
        self._budgets = budgets
        self._reserved = reserved

    def collect(self) -> Iterator[Metric]:
        """The four families from the latest figures (read off the loop by the ledger)."""
        estimated = GaugeMetricFamily(
            PREFIX + "model_memory_estimated_bytes",
            "Memory a model's instance is estimated to need per device, before a load "
            "(GGUF header and launch settings).",
            labels=["model", "device"],
        )
        for model, figure in sorted(self._estimates().items()):
            for device, need in sorted(figure.devices.items()):
                estimated.add_metric([model, device], need.total)
        yield estimated
        reported = GaugeMetricFamily(
            PREFIX + "model_memory_reported_bytes",
            "Memory llama-server reported for a model's last load per device and kind "
            "(the learned figure admission uses).",
            labels=["model", "device", "kind"],
        )
        for model, figure in sorted(self._reported().items()):
            for device, need in sorted(figure.devices.items()):
                for kind in KINDS:
                    reported.add_metric([model, device, kind], getattr(need, kind))
        yield reported
        budget = GaugeMetricFamily(
            PREFIX + "memory_budget_bytes",
            "Memory instances may reserve per device (memory_budget).",
            labels=["device"],
        )
        budgets = self._budgets()
        for device, size in sorted(budgets.items()):
            budget.add_metric([device], size)
        yield budget
        reserved = GaugeMetricFamily(
            PREFIX + "memory_reserved_bytes",
            "Memory reserved per device by the instances holding a place (starting, ready, "
            "stopping, waiting to restart); a file's host weights counted once.",
            labels=["device"],
        )
        held = self._reserved()
        for device in sorted({*budgets, *held}):
            reserved.add_metric([device], held.get(device, 0))
        yield reserved
