"""Prometheus collector: the store + the supervisor's view -> metric families, no I/O.

Names and labels are the contract in docs/ARCHITECTURE.md ("Service metrics").
Live series exist only while a model has a latest snapshot (it is ready); state,
counters and info series exist for every known model.

Each model's samples come in parts (its state, its info, its token totals, its
live values, its poll errors, its last poll), and each part is written once as
text and cached under the values it was written from: a new snapshot is written
when it is published (in the poll), so a scrape mostly joins cached text. The same
rows feed ``collect()``, so generate_latest writes the same bytes (a parity test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from llama_exporter.metrics.exposition import OrderedRegistry, header, sample
from llama_exporter.metrics.families import (
    CAP,
    HOST,
    HOST_ERRORS,
    LIVE_PART,
    ORDER,
    PARTS,
    POLL_PART,
    PREFIX,
    RUNNING,
    TASKS,
    TOKENS_PART,
    Family,
    Labels,
    ModelInfo,
    Part,
    Prefixes,
    Row,
    Rows,
    info_key,
    text_of,
)
from llama_exporter.metrics.kinds import Histogram
from llama_exporter.metrics.kinds import Labels as SeriesLabels
from llama_exporter.monitoring.derive import ModelSnapshot
from llama_exporter.monitoring.store import MetricsStore
from llama_exporter.states import InstanceStatus

START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Counters(Protocol):
    """Per-model supervisor counters (e.g. states.InstanceCounters)."""

    @property
    def restarts_total(self) -> int: ...
    @property
    def start_failures_total(self) -> int: ...
    @property
    def start_rejected_total(self) -> int: ...


class StartDurationHistogram(Collector):
    """instance_start_duration_seconds: spawn to /health 200, per model (no _created series)."""

    NAME = f"{PREFIX}instance_start_duration_seconds"
    DOC = "Seconds from spawn to /health 200."

    def __init__(self, buckets: Sequence[float] = START_BUCKETS, host: str | None = None) -> None:
        self._const: SeriesLabels = () if host is None else (host,)
        labels = [*(["host"] if host is not None else []), "model"]
        self._histogram = Histogram(self.NAME, self.DOC, labels, buckets)

    def set_host(self, host: str) -> None:
        """A reloaded host_label: every series carries it from the next scrape."""
        if self._const:
            self._const = (host,)
            self._histogram.relabel(lambda labels: (host, *labels[1:]))

    def observe(self, model: str, seconds: float) -> None:
        """Record one start that reached ready."""
        self._histogram.observe((*self._const, model), seconds)

    def forget(self, model: str) -> None:
        """Remove a deleted model's observations."""
        self._histogram.drop(lambda labels: labels[-1] == model)

    def _order(self) -> list[SeriesLabels]:
        return sorted(self._histogram.series(), key=lambda labels: labels[-1])

    def collect(self) -> Iterable[Metric]:
        """The histogram family (models sorted by name)."""
        yield self._histogram.family(self._order())

    def exposition(self) -> str:
        """The family as text; each model's lines are kept until its next observation."""
        return self._histogram.exposition(self._order())


@dataclass
class _Cached:
    key: object
    rows: Rows
    text: tuple[str, ...]


class LlamaCollector(Collector):
    """Yields every llama_exporter_* family from in-memory state; also writes it as text."""

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
        # The host label is on the series themselves (not only a Prometheus target
        # label), so a reader of /metrics without our service discovery sees the machine.
        self._const: Labels = () if host is None else (("host", host),)
        self._store = store
        self._statuses = statuses
        self._counters = counters
        self._models = models
        self._running = running
        self._cap = cap
        self._cache: dict[tuple[str, Part], _Cached] = {}
        self._prefixes: Prefixes = {}  # see text_of

    def set_host(self, host: str) -> None:
        """A reloaded host_label: the cached text is written again with it."""
        if self._const:
            self._const = (("host", host),)
            self._cache.clear()
            self._prefixes = {}

    def _keys(self) -> Iterator[tuple[str, tuple[object, ...]]]:
        """(model, one key per part of PARTS) for every known model, sorted by name."""
        statuses = {s.model: s for s in self._statuses()}
        infos = {m.name: m for m in self._models()}
        totals = self._store.token_totals()
        errors: dict[str, list[tuple[str, str, int]]] = {}
        for (model, endpoint, reason), count in sorted(self._store.poll_errors().items()):
            errors.setdefault(model, []).append((endpoint, reason, count))
        for model in sorted(set(statuses) | set(infos) | set(totals) | set(errors)):
            snap = self._store.latest(model)
            c = self._counters(model)
            counts = (c.restarts_total, c.start_failures_total, c.start_rejected_total)
            yield (
                model,
                (
                    (statuses.get(model), counts),
                    info_key(infos.get(model)),
                    totals.get(model),
                    snap,
                    (snap is not None, tuple(errors.get(model, ()))),
                    self._store.last_poll(model) if snap is not None else None,
                ),
            )

    def _host(self, family: Family) -> list[Row]:
        host = self._store.host
        if host is None:
            return []
        values = (host.cpu_utilization_ratio, host.memory_total_bytes, host.memory_used_bytes)
        return [((), values[HOST.index(family)])]

    def _global(self, family: Family) -> list[Row] | None:
        """Rows of a family without a model label (None for per-model families)."""
        if family is RUNNING:
            return [((), self._running())]
        if family is CAP:
            return [((), self._cap())]
        if family is HOST_ERRORS:
            return [((), self._store.host_errors)]
        if family is TASKS:
            tasks = self._store.asyncio_tasks
            return [] if tasks is None else [((), tasks)]
        return self._host(family) if family in HOST else None

    def collect(self) -> Iterator[Metric]:
        """All families (no I/O: everything was read by the poller and the supervisor)."""
        names = [name for name, _ in self._const]
        const = [value for _, value in self._const]
        metrics = {family: family.metric(names) for family in ORDER}
        for model, keys in self._keys():
            for part, key in zip(PARTS, keys, strict=True):
                for family, rows in zip(part.families, part.rows(model, key), strict=True):
                    for labels, value in rows:
                        metrics[family].add_metric([*const, *labels], value)
        for family, metric in metrics.items():
            for labels, value in self._global(family) or ():
                metric.add_metric([*const, *labels], value)
            yield metric

    def _written(self, model: str, part: Part, key: object) -> tuple[str, ...]:
        """The part's text for key: cached, or written now."""
        cached = self._cache.get((model, part))
        if cached is not None and (cached.key is key or cached.key == key):
            return cached.text
        rows = part.rows(model, key)
        before = (cached.rows, cached.text) if cached is not None else None
        text = text_of(part.families, rows, self._prefixes, before, self._const)
        self._cache[(model, part)] = _Cached(key, rows, text)
        return text

    def on_snapshot(self, snap: ModelSnapshot) -> None:
        """Store subscriber: write a new snapshot's parts in the poll, not in the scrape."""
        model = snap.model
        generated, prompt = self._store.token_counters(model)
        self._written(model, LIVE_PART, snap)
        self._written(model, TOKENS_PART, (generated.total, prompt.total))
        self._written(model, POLL_PART, self._store.last_poll(model))

    def exposition(self) -> str:
        """The text generate_latest writes for collect(), joined from cached parts."""
        written: list[list[tuple[str, ...]]] = [[] for _ in PARTS]  # per part, per model
        models = 0
        for model, keys in self._keys():
            models += 1
            for texts, part, key in zip(written, PARTS, keys, strict=True):
                texts.append(self._written(model, part, key))
        if len(self._cache) > models * len(PARTS):  # a model was deleted: drop its text
            known = {model for model, _ in self._keys()}
            self._cache = {k: v for k, v in self._cache.items() if k[0] in known}
            self._prefixes = {}
        lines: dict[Family, str] = {}
        for part, texts in zip(PARTS, written, strict=True):
            columns = zip(*texts, strict=True) if texts else [() for _ in part.families]
            for family, column in zip(part.families, columns, strict=True):
                lines[family] = "".join(column)
        out: list[str] = []
        for family in ORDER:
            out.append(header(family.exposed, family.kind, family.doc))
            rows = self._global(family)
            if rows is None:
                out.append(lines[family])
            else:
                out.extend(sample(family.exposed, self._const, value) for _, value in rows)
        return "".join(out)


class WithHost(Collector):
    """Another collector's families with host="..." added to every sample.

    For collectors that do not know the host (the gateway's): every series the
    service exports carries it. Costs a copy of each sample per scrape, so our own
    collectors write the label into their cached text instead.
    """

    def __init__(self, inner: Collector, host: str) -> None:
        self._inner = inner
        self._host = host

    def set_host(self, host: str) -> None:
        """A reloaded host_label."""
        self._host = host

    def collect(self) -> Iterator[Metric]:
        """The inner collector's families, relabelled."""
        for family in self._inner.collect():
            family.samples = [
                s._replace(labels={**s.labels, "host": self._host}) for s in family.samples
            ]
            yield family


def relabel_host(registry: CollectorRegistry, host: str) -> None:
    """A reloaded host_label on every collector of registry that writes one."""
    for collector in getattr(registry, "collectors", ()):
        if isinstance(collector, LlamaCollector | StartDurationHistogram | WithHost):
            collector.set_host(host)


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

    host: the value of a `host` label on every series (None: no host label); give the
    histogram the same host.

    The collector subscribes to the store, so each new snapshot is written as text
    once, when it is published.
    """
    registry = OrderedRegistry()
    collector = LlamaCollector(store, statuses, counters, models, running, cap, host)
    store.subscribe(collector.on_snapshot)
    registry.register(collector)
    if histogram is not None:
        registry.register(histogram)
    return registry
