"""Prometheus collector: the store + the supervisor's view -> metric families, no I/O.

Names and labels are the contract in docs/ARCHITECTURE.md ("Service metrics").
Live series exist only while a model has a latest snapshot (it is ready); state,
counters and info series exist for every known model.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llama_exporter.derive import ModelSnapshot
from llama_exporter.poller import MetricsStore
from llama_exporter.states import InstanceStatus, State

PREFIX = "llama_exporter_"
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Counters(Protocol):
    """Per-model supervisor counters (e.g. states.InstanceCounters)."""

    @property
    def restarts_total(self) -> int: ...
    @property
    def start_failures_total(self) -> int: ...
    @property
    def start_rejected_total(self) -> int: ...


class ModelInfo(Protocol):
    """What the collector shows about a known model."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path | str: ...
    @property
    def source(self) -> str: ...
    @property
    def architecture(self) -> str | None: ...
    @property
    def quantization(self) -> str | None: ...
    @property
    def size_label(self) -> str | None: ...
    @property
    def context_length(self) -> int | None: ...
    @property
    def file_size(self) -> int | None: ...


class StartDurationHistogram(Collector):
    """instance_start_duration_seconds: spawn to /health 200, per model (no _created series)."""

    def __init__(self, buckets: Sequence[float] = START_BUCKETS, host: str | None = None) -> None:
        self._const = [] if host is None else [host]
        self._bounds = sorted(float(b) for b in buckets if math.isfinite(b))
        self._counts: dict[str, list[int]] = {}  # per bucket, not cumulative; last is +Inf
        self._sums: dict[str, float] = {}

    def observe(self, model: str, seconds: float) -> None:
        """Record one start that reached ready."""
        seconds = max(0.0, seconds)
        counts = self._counts.setdefault(model, [0] * (len(self._bounds) + 1))
        counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sums[model] = self._sums.get(model, 0.0) + seconds

    def forget(self, model: str) -> None:
        """Remove a deleted model's observations."""
        self._counts.pop(model, None)
        self._sums.pop(model, None)

    def collect(self) -> Iterable[Metric]:
        """The histogram family."""
        family = HistogramMetricFamily(
            f"{PREFIX}instance_start_duration_seconds",
            "Seconds from spawn to /health 200.",
            labels=[*(["host"] if self._const else []), "model"],
        )
        for model in sorted(self._counts):
            cumulative = list(itertools.accumulate(self._counts[model]))
            bounds = [*map(_go_float, self._bounds), "+Inf"]
            family.add_metric(
                [*self._const, model], list(zip(bounds, cumulative, strict=True)), self._sums[model]
            )
        yield family


POLL_ENDPOINTS = ("metrics", "slots", "props")
POLL_REASONS = ("timeout", "connect", "parse")


class _Gauge(GaugeMetricFamily):
    """A gauge whose every sample starts with the same label values (the host)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], const: Sequence[str]) -> None:
        self._const = list(const)
        names = [*(["host"] if const else []), *labels]
        super().__init__(PREFIX + name, doc, labels=names)

    def add_metric(self, labels: Sequence[str], value: float, *args: Any, **kwargs: Any) -> None:
        """Add a sample; labels are the family's own, without the host."""
        super().add_metric([*self._const, *labels], value, *args, **kwargs)


class _Counter(CounterMetricFamily):
    """A counter whose every sample starts with the same label values (the host)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], const: Sequence[str]) -> None:
        self._const = list(const)
        names = [*(["host"] if const else []), *labels]
        super().__init__(PREFIX + name, doc, labels=names)

    def add_metric(self, labels: Sequence[str], value: float, *args: Any, **kwargs: Any) -> None:
        """Add a sample; labels are the family's own, without the host."""
        super().add_metric([*self._const, *labels], value, *args, **kwargs)


class LlamaCollector(Collector):
    """Yields every llama_exporter_* family from in-memory state."""

    def __init__(
        self,
        store: MetricsStore,
        statuses: Callable[[], list[InstanceStatus]],
        counters: Callable[[str], Counters],
        models: Callable[[], Sequence[ModelInfo]],
        running: Callable[[], int],
        cap: Callable[[], int],
        host: str | None = None,
    ) -> None:
        self._store = store
        self._statuses = statuses
        self._counters = counters
        self._models = models
        self._running = running
        self._cap = cap
        # The host label is set here (not only as a Prometheus target label) so that a
        # reader of /metrics without our service discovery still sees which machine.
        self._const = () if host is None else (host,)

    def _gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
        return _Gauge(name, doc, labels, self._const)

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
        return _Counter(name, doc, labels, self._const)

    def collect(self) -> Iterator[Metric]:
        """All families (no I/O: everything was read by the poller and the supervisor)."""
        statuses = {s.model: s for s in self._statuses()}
        infos = {m.name: m for m in self._models()}
        totals = self._store.token_totals()
        known = sorted(set(statuses) | set(infos) | set(totals))
        yield from self._instances(known, statuses)
        yield from self._models_info(infos)
        yield from self._tokens(known, totals)
        live = [s for m in known if (s := self._store.latest(m)) is not None]
        yield from self._live(live)
        yield from self._slots(live)
        yield from self._process(live)
        yield from self._host()
        yield from self._polls(live)

    def _instances(self, known: list[str], statuses: dict[str, InstanceStatus]) -> Iterator[Metric]:
        state = self._gauge("instance_state", "1 for the current state.", ["model", "state"])
        up = self._gauge("instance_up", "1 when ready.", ["model"])
        info = self._gauge("instance_info", "1 while a process exists.", ["model", "pid", "port"])
        since = self._gauge(
            "instance_ready_since_timestamp_seconds", "Unix time it became ready.", ["model"]
        )
        restarts = self._counter(
            "instance_restarts_total", "Restarts after a crash/hang.", ["model"]
        )
        failures = self._counter("instance_start_failures_total", "Starts not ready.", ["model"])
        rejected = self._counter("instance_start_rejected_total", "Starts refused: cap.", ["model"])
        for model in known:
            status = statuses.get(model)
            current = status.state if status is not None else State.STOPPED
            for candidate in State:
                state.add_metric([model, candidate.value], 1.0 if candidate is current else 0.0)
            up.add_metric([model], 1.0 if current is State.READY else 0.0)
            if status is not None and status.pid is not None:
                port = "" if status.port is None else str(status.port)
                info.add_metric([model, str(status.pid), port], 1.0)
            if status is not None and current is State.READY and status.ready_at is not None:
                since.add_metric([model], status.ready_at)
            counts = self._counters(model)
            restarts.add_metric([model], counts.restarts_total)
            failures.add_metric([model], counts.start_failures_total)
            rejected.add_metric([model], counts.start_rejected_total)
        running = self._gauge("instances_running", "Instances counted against the cap.")
        running.add_metric([], self._running())
        cap = self._gauge("instances_max", "The cap on instances.")
        cap.add_metric([], self._cap())
        yield from (state, up, info, restarts, failures, rejected, since, running, cap)

    def _models_info(self, infos: dict[str, ModelInfo]) -> Iterator[Metric]:
        labels = ["model", "path", "source", "architecture", "quantization", "size_label"]
        info = self._gauge("model_info", "1 per known model.", labels)
        trained = self._gauge("model_trained_context_tokens", "Trained context length.", ["model"])
        size = self._gauge("model_file_size_bytes", "GGUF file size.", ["model"])
        for name in sorted(infos):
            m = infos[name]
            values = [m.architecture, m.quantization, m.size_label]
            info.add_metric([name, str(m.path), m.source, *(v or "" for v in values)], 1.0)
            if m.context_length is not None:
                trained.add_metric([name], m.context_length)
            if m.file_size is not None:
                size.add_metric([name], m.file_size)
        yield from (info, trained, size)

    def _tokens(self, known: list[str], totals: dict[str, tuple[float, float]]) -> Iterator[Metric]:
        generated = self._counter(
            "tokens_generated_total", "Tokens generated: completed + in flight.", ["model"]
        )
        prompt = self._counter("prompt_tokens_total", "Prompt tokens processed.", ["model"])
        for model in known:
            gen_total, prompt_total = totals.get(model, (0.0, 0.0))
            generated.add_metric([model], gen_total)
            prompt.add_metric([model], prompt_total)
        yield from (generated, prompt)

    def _live(self, live: list[ModelSnapshot]) -> Iterator[Metric]:
        rows: list[tuple[str, str, Callable[[ModelSnapshot], float | None]]] = [
            ("slots", "Slots (-np).", lambda s: s.slots_total),
            ("slots_busy", "Slots processing.", lambda s: s.slots_busy),
            ("requests_waiting", "Requests deferred.", lambda s: s.requests_waiting),
            ("context_size_tokens", "Context, summed.", lambda s: s.context_size_tokens),
            ("context_used_tokens", "Context in use.", lambda s: s.context_used_tokens),
            ("context_used_ratio", "Context in use (0..1).", lambda s: s.context_used_ratio),
            ("tokens_per_second", "Generation rate.", lambda s: s.tokens_per_second),
            (
                "tokens_per_second_smoothed",
                "Generation rate, smoothed (~5 s).",
                lambda s: s.tokens_per_second_smoothed,
            ),
            (
                "time_per_token_seconds",
                "Mean seconds per generated token over generating slots.",
                lambda s: s.time_per_token_seconds,
            ),
        ]
        for name, doc, value in rows:
            family = self._gauge(name, doc, ["model"])
            for snap in live:
                v = value(snap)
                if v is not None:
                    family.add_metric([snap.model], v)
            yield family

    def _slots(self, live: list[ModelSnapshot]) -> Iterator[Metric]:
        labels = ["model", "slot"]
        busy = self._gauge("slot_busy", "1 when processing.", labels)
        size = self._gauge("slot_context_size_tokens", "Slot context.", labels)
        used = self._gauge("slot_context_used_tokens", "Slot context in use.", labels)
        used_ratio = self._gauge("slot_context_used_ratio", "Slot context in use (0..1).", labels)
        rate = self._gauge("slot_tokens_per_second", "Slot generation rate.", labels)
        per_token = self._gauge("slot_time_per_token_seconds", "Seconds per token.", labels)
        for snap in live:
            for slot in snap.slots:
                key = [snap.model, str(slot.id)]
                busy.add_metric(key, 1.0 if slot.busy else 0.0)
                size.add_metric(key, slot.n_ctx)
                used.add_metric(key, slot.context_used_tokens)
                used_ratio.add_metric(key, slot.context_used_ratio)
                rate.add_metric(key, slot.tokens_per_second)
                if slot.time_per_token_seconds is not None:
                    per_token.add_metric(key, slot.time_per_token_seconds)
        yield from (busy, size, used, used_ratio, rate, per_token)

    def _process(self, live: list[ModelSnapshot]) -> Iterator[Metric]:
        cpu = self._counter("process_cpu_seconds_total", "llama-server CPU seconds.", ["model"])
        share = self._gauge("process_cpu_utilization_ratio", "Share of host CPU (0..1).", ["model"])
        rss = self._gauge("process_resident_memory_bytes", "llama-server RSS.", ["model"])
        for snap in live:
            if snap.cpu_seconds_total is not None:
                cpu.add_metric([snap.model], snap.cpu_seconds_total)
            if snap.cpu_utilization_ratio is not None:
                share.add_metric([snap.model], snap.cpu_utilization_ratio)
            if snap.rss_bytes is not None:
                rss.add_metric([snap.model], snap.rss_bytes)
        yield from (cpu, share, rss)

    def _host(self) -> Iterator[Metric]:
        host = self._store.host
        cpu = self._gauge("host_cpu_utilization_ratio", "Host CPU in use (0..1).")
        total = self._gauge("host_memory_total_bytes", "Host memory.")
        used = self._gauge("host_memory_used_bytes", "Host memory in use.")
        if host is not None:
            cpu.add_metric([], host.cpu_utilization_ratio)
            total.add_metric([], host.memory_total_bytes)
            used.add_metric([], host.memory_used_bytes)
        yield from (cpu, total, used)

    def _polls(self, live: list[ModelSnapshot]) -> Iterator[Metric]:
        errors = self._counter(
            "poll_errors_total", "Failed reads of llama-server.", ["model", "endpoint", "reason"]
        )
        # Known label values start at 0 while a model is polled, so increase() and
        # dashboards see "no errors" instead of "no data".
        counts = {
            (snap.model, endpoint, reason): 0
            for snap in live
            for endpoint in POLL_ENDPOINTS
            for reason in POLL_REASONS
        }
        counts.update(self._store.poll_errors())
        for (model, endpoint, reason), count in sorted(counts.items()):
            errors.add_metric([model, endpoint, reason], count)
        duration = self._gauge("poll_duration_seconds", "Duration of the last poll.", ["model"])
        last = self._gauge("last_poll_timestamp_seconds", "Unix time of the last poll.", ["model"])
        for snap in live:
            poll = self._store.last_poll(snap.model)
            if poll is not None:
                duration.add_metric([snap.model], poll.duration_seconds)
                last.add_metric([snap.model], poll.timestamp)
        yield from (errors, duration, last)


def build_registry(
    *,
    store: MetricsStore,
    statuses: Callable[[], list[InstanceStatus]],
    counters: Callable[[str], Counters],
    models: Callable[[], Sequence[ModelInfo]],
    running: Callable[[], int],
    cap: Callable[[], int],
    histogram: StartDurationHistogram | None = None,
    host: str | None = None,
) -> CollectorRegistry:
    """A registry of our own (never the global one) with the collector and the histogram.

    host: the value of a `host` label on every series (None: no host label).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LlamaCollector(store, statuses, counters, models, running, cap, host))
    if histogram is not None:
        registry.register(histogram)
    return registry


_go_float: Callable[[float], str] = floatToGoString  # the value format generate_latest uses
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "unknown": "untyped"}


def _value(value: float) -> str:
    """floatToGoString, with a fast path for the common finite, short numbers."""
    if math.isfinite(value):
        text = repr(float(value))
        if value <= 0 or text.find(".") <= 6:
            return text
    return _go_float(value)


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of registry, byte for byte as generate_latest writes it.

    generate_latest re-validates every label name of every sample (about 12 us per
    sample); our names are fixed and valid, so only label values are escaped here.
    Families of other types than counter, gauge, histogram and untyped fall back to it.
    """
    families = list(registry.collect())
    if any(f.type not in _TYPES for f in families):
        return bytes(generate_latest(registry))
    out: list[str] = []
    append = out.append
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES[family.type]}\n")
        for sample in family.samples:
            labels = sample.labels
            if not labels:
                append(f"{sample.name} {_value(sample.value)}\n")
                continue
            pairs = sorted(labels.items()) if len(labels) > 1 else labels.items()
            body = ",".join([f'{k}="{_escape(v)}"' for k, v in pairs])
            append(f"{sample.name}{{{body}}} {_value(sample.value)}\n")
    return "".join(out).encode()
