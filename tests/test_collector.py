"""Tests for metrics.collector: names and labels as in the contract, promtool-clean."""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from promstack import missing

from llama_exporter.metrics import families
from llama_exporter.metrics.collector import StartDurationHistogram, build_registry
from llama_exporter.metrics.exposition import render, value_text
from llama_exporter.monitoring.derive import (
    ModelDeriver,
    ModelSnapshot,
    ProcessSample,
    TokenCounter,
    parse_slots,
)
from llama_exporter.monitoring.store import HostSample, MetricsStore
from llama_exporter.states import InstanceCounters, InstanceStatus, State

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Info:
    """A plain model info."""

    name: str
    path: Path
    source: str = "config"
    architecture: str | None = "gemma3"
    quantization: str | None = "Q4_K_M"
    size_label: str | None = "270M"
    context_length: int | None = 32768
    file_size: int | None = 253_000_000


@dataclass
class World:
    """Everything the collector reads, as plain mutable values."""

    store: MetricsStore = field(default_factory=MetricsStore)
    statuses: list[InstanceStatus] = field(default_factory=list)
    counters: dict[str, InstanceCounters] = field(default_factory=dict)
    infos: list[Info] = field(default_factory=list)
    histogram: StartDurationHistogram = field(default_factory=StartDurationHistogram)
    host: str | None = None  # the host label on every series, if any
    registry: CollectorRegistry = field(init=False)

    def __post_init__(self) -> None:
        # One registry for the world's life, as in the service: its text cache is used.
        if self.host is not None:
            self.histogram = StartDurationHistogram(host=self.host)
        self.registry = build_registry(
            host=self.host,
            store=self.store,
            statuses=lambda: self.statuses,
            counters=lambda m: self.counters.get(m, InstanceCounters()),
            models=lambda: self.infos,
            running=lambda: sum(s.state is State.READY for s in self.statuses),
            cap=lambda: 4,
            histogram=self.histogram,
        )

    def render(self) -> str:
        """The exposition text (checked against generate_latest every time)."""
        text = render(self.registry)
        assert text == generate_latest(self.registry)
        return text.decode()


SLOTS: list[dict[str, Any]] = [
    {
        "id": 0,
        "n_ctx": 2048,
        "is_processing": True,
        "id_task": 3,
        "n_prompt_tokens": 68,
        "next_token": [{"n_decoded": 35}],
    },
    {"id": 1, "n_ctx": 2048, "is_processing": False},
]


def world() -> World:
    """Model a is ready and polled twice, b is stopped."""
    w = World()
    w.infos = [Info("a", Path("/m/a.gguf")), Info("b", Path("/m/b.gguf"), architecture=None)]
    w.statuses = [
        InstanceStatus("a", State.READY, since=10.0, pid=1234, port=18080, ready_at=10.0),
        InstanceStatus("b", State.STOPPED, since=5.0),
    ]
    w.counters = {"a": InstanceCounters(restarts_total=2, start_rejected_total=1)}
    generated, prompt = w.store.token_counters("a")
    deriver = ModelDeriver("a", generated, prompt, pid=1234)
    metrics = {"llamacpp:tokens_predicted_total": 100.0, "llamacpp:prompt_tokens_total": 50.0}
    slots = parse_slots(SLOTS)
    w.store.publish(deriver.update(metrics, slots, 100.0, ProcessSample(1.0, 300, 2)))
    later = parse_slots([{**SLOTS[0], "n_prompt_tokens": 93, "next_token": [{"n_decoded": 60}]}])
    w.store.publish(deriver.update(metrics, later + slots[1:], 101.0, ProcessSample(1.5, 300, 2)))
    w.store.record_poll("a", 0.004, 101.0)
    w.store.record_error("a", "slots", "timeout")
    w.store.host = HostSample(0.5, 8_000_000_000, 3_000_000_000)
    w.store.asyncio_tasks = 7
    w.histogram.observe("a", 1.2)
    return w


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def contract(section: str | None = None) -> dict[str, tuple[str, set[str]]]:
    """{full name: (type, labels)} from the tables in docs/ARCHITECTURE.md.

    section None: the collector's table (before "### Gateway metrics"); else the rows
    under the heading named section.
    """
    rows: dict[str, tuple[str, set[str]]] = {}
    lines = ARCHITECTURE.read_text().splitlines()
    if section is None:
        lines = lines[: lines.index("### Gateway metrics")]
    else:
        start = lines.index(section)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), None)
        lines = lines[start:end]
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[1] not in ("gauge", "counter", "histogram"):
            continue
        labels = {x.strip() for x in cells[2].split(",") if x.strip()}
        for name in cells[0].split(" / "):
            rows["llama_exporter_" + name.strip()] = (cells[1], labels)
    return rows


def test_every_contract_family_is_exported_with_its_labels() -> None:
    expected = contract()
    assert len(expected) >= 39  # the table had 39 names when this was written
    families = {f.name: f for f in text_string_to_metric_families(world().render())}
    for name, (kind, labels) in expected.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        assert family_name in families, name
        family = families[family_name]
        assert family.type == kind, name
        assert family.samples, f"{name} has no samples"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    exported = {f"{f.name}_total" if f.type == "counter" else f.name for f in families.values()}
    assert exported <= set(expected), exported - set(expected)


def test_values() -> None:
    values = parse(world().render())
    a = (("model", "a"),)
    assert values["llama_exporter_instance_state"][(("model", "a"), ("state", "ready"))] == 1
    assert values["llama_exporter_instance_state"][(("model", "a"), ("state", "stopped"))] == 0
    assert values["llama_exporter_instance_restarts_total"][a] == 2
    assert values["llama_exporter_instance_start_rejected_total"][a] == 1
    assert values["llama_exporter_tokens_generated_total"][a] == 160
    assert values["llama_exporter_slot_tokens_per_second"][(("model", "a"), ("slot", "0"))] == 25
    assert values["llama_exporter_time_per_token_seconds"][a] == pytest.approx(0.04)
    assert values["llama_exporter_prompt_tokens_total"][a] == 50
    assert values["llama_exporter_context_used_tokens"][a] == 93
    assert values["llama_exporter_slots"][a] == 2
    assert values["llama_exporter_slots_busy"][a] == 1
    assert values["llama_exporter_slot_busy"][(("model", "a"), ("slot", "1"))] == 0
    assert values["llama_exporter_process_cpu_utilization_ratio"][a] == pytest.approx(0.25)
    assert values["llama_exporter_instances_max"][()] == 4
    assert values["llama_exporter_instances_running"][()] == 1
    assert values["llama_exporter_asyncio_tasks"][()] == 7
    assert values["llama_exporter_host_sample_errors_total"][()] == 0
    info = values["llama_exporter_instance_info"]
    assert info == {(("model", "a"), ("pid", "1234"), ("port", "18080")): 1.0}
    assert values["llama_exporter_instance_start_duration_seconds_count"][a] == 1
    buckets = values["llama_exporter_instance_start_duration_seconds_bucket"]
    assert buckets[(("le", "1.0"), ("model", "a"))] == 0
    assert buckets[(("le", "2.0"), ("model", "a"))] == 1
    assert buckets[(("le", "+Inf"), ("model", "a"))] == 1
    errors = values["llama_exporter_poll_errors_total"]
    assert errors[(("endpoint", "slots"), ("model", "a"), ("reason", "timeout"))] == 1.0
    # the other known label values of a polled model start at 0
    assert errors[(("endpoint", "metrics"), ("model", "a"), ("reason", "connect"))] == 0.0
    assert len(errors) == 9


def test_stopped_model_has_state_and_counters_but_no_live_series() -> None:
    w = world()
    w.store.drop("a")
    w.statuses[0] = InstanceStatus("a", State.STOPPED, since=200.0)
    values = parse(w.render())
    for model in ("a", "b"):
        assert (
            values["llama_exporter_instance_state"][(("model", model), ("state", "stopped"))] == 1
        )
        assert values["llama_exporter_instance_up"][(("model", model),)] == 0
        assert (("model", model),) in values["llama_exporter_tokens_generated_total"]
    assert values["llama_exporter_tokens_generated_total"][(("model", "a"),)] == 160
    live = [
        "llama_exporter_slots",
        "llama_exporter_slot_busy",
        "llama_exporter_context_used_ratio",
        "llama_exporter_tokens_per_second",
        "llama_exporter_process_resident_memory_bytes",
        "llama_exporter_poll_duration_seconds",
    ]
    for name in live:
        assert name not in values, name
    assert "llama_exporter_instance_info" not in values
    assert "llama_exporter_instance_ready_since_timestamp_seconds" not in values


def test_forgotten_model_has_no_series() -> None:
    w = world()
    w.store.record_error("a", "metrics", "connect")
    w.store.drop("a")  # stopped, then deleted through the API
    w.store.forget("a")
    w.histogram.forget("a")
    w.statuses = [s for s in w.statuses if s.model != "a"]
    w.infos = [i for i in w.infos if i.name != "a"]
    text = w.render()
    assert 'model="a"' not in text
    assert 'model="b"' in text
    assert parse(text)["llama_exporter_instance_up"] == {(("model", "b"),): 0.0}


def generated_total(w: World) -> float:
    """The exported tokens_generated_total of model a."""
    return parse(w.render())["llama_exporter_tokens_generated_total"][(("model", "a"),)]


def test_counters_never_go_backwards_across_restarts() -> None:
    w = World()
    w.statuses = [InstanceStatus("a", State.READY, since=0.0, pid=1, port=1)]
    generated, prompt = w.store.token_counters("a")
    seen: list[float] = []
    for pid, readings in ((1, [10.0, 20.0, 30.0]), (2, [0.0, 5.0]), (3, [1.0])):
        deriver = ModelDeriver("a", generated, prompt, pid=pid)
        deriver.begin_process()
        for t, completed in enumerate(readings):
            snap = deriver.update({"llamacpp:tokens_predicted_total": completed}, [], float(t))
            w.store.publish(snap)
            seen.append(
                parse(w.render())["llama_exporter_tokens_generated_total"][(("model", "a"),)]
            )
        w.store.drop("a")
        seen.append(parse(w.render())["llama_exporter_tokens_generated_total"][(("model", "a"),)])
    assert seen == sorted(seen)
    assert seen[-1] == 36


def test_registry_is_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    before = {m.name for m in REGISTRY.collect()}
    world().render()
    assert {m.name for m in REGISTRY.collect()} == before
    assert not any(name.startswith("llama_exporter") for name in before)


def test_render_is_byte_identical_to_generate_latest() -> None:
    w = world()
    w.infos.append(Info("odd", Path('/m/we"ird\\path\nx.gguf'), size_label="1B é"))
    registry = build_registry(
        store=w.store,
        statuses=lambda: w.statuses,
        counters=lambda m: InstanceCounters(),
        models=lambda: w.infos,
        running=lambda: 1,
        cap=lambda: 4,
        histogram=w.histogram,
    )
    assert render(registry) == generate_latest(registry)


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.0, 0.1, 1e-9, 123456.0, 1234567.0, 1.5e20, -3e7, math.inf, -math.inf]
)
def test_value_format_matches_prometheus_client(value: float) -> None:
    w = World()
    w.store.token_counters("m")[0].update(value if math.isfinite(value) and value > 0 else 0)
    w.store.host = HostSample(value, 0, 0)
    registry = build_registry(
        store=w.store,
        statuses=lambda: [],
        counters=lambda m: InstanceCounters(),
        models=lambda: [],
        running=lambda: 0,
        cap=lambda: 0,
    )
    assert render(registry) == generate_latest(registry)


def test_no_colons_and_snake_case() -> None:
    for family in text_string_to_metric_families(world().render()):
        assert re.fullmatch(r"llama_exporter_[a-z_]+", family.name), family.name


def test_token_counter_starting_total_is_exported() -> None:
    w = World()
    w.store.token_counters("x")[0].update(7)
    assert isinstance(w.store.token_counters("x")[0], TokenCounter)
    assert parse(w.render())["llama_exporter_tokens_generated_total"][(("model", "x"),)] == 7


# --- the text cache: the same bytes through every change, one write per snapshot --------


class Lab:
    """A World driven by the events the service sees: polls, stops, restarts, deletes..."""

    def __init__(self, host: str | None = None) -> None:
        self.w = World(host=host)
        self.derivers: dict[str, ModelDeriver] = {}
        self.pids = itertools.count(100)
        self.t = 0.0

    def status(self, model: str) -> InstanceStatus | None:
        """The model's status, if the supervisor knows it."""
        return next((s for s in self.w.statuses if s.model == model), None)

    def set_status(self, status: InstanceStatus) -> None:
        """Replace (or add) the model's status."""
        self.w.statuses = [s for s in self.w.statuses if s.model != status.model] + [status]

    def start(self, model: str) -> None:
        """A new process becomes ready (a start or a restart): a new deriver."""
        self.w.store.drop(model)
        pid = next(self.pids)
        self.set_status(
            InstanceStatus(model, State.READY, self.t, pid=pid, port=pid, ready_at=self.t)
        )
        generated, prompt = self.w.store.token_counters(model)
        self.derivers[model] = ModelDeriver(model, generated, prompt, pid=pid)
        self.derivers[model].begin_process()

    def apply(self, op: str, model: str) -> None:
        """One event."""
        self.t += 1.0
        w = self.w
        status = self.status(model)
        if op == "poll":
            if status is None or status.state is not State.READY:
                self.start(model)
            readings = {
                "llamacpp:tokens_predicted_total": self.t * 3,
                "llamacpp:prompt_tokens_total": self.t,
            }
            slots = parse_slots(
                [{**SLOTS[0], "next_token": [{"n_decoded": int(self.t)}]}, SLOTS[1]]
            )
            sample = ProcessSample(self.t, 1000 + int(self.t), 2)
            w.store.record_poll(model, 0.001 * self.t, self.t)
            w.store.publish(self.derivers[model].update(readings, slots, self.t, sample))
        elif op == "restart":
            self.start(model)
        elif op == "stop":
            w.store.drop(model)
            self.set_status(InstanceStatus(model, State.STOPPED, self.t))
        elif op == "delete":
            w.store.drop(model)
            w.store.forget(model)
            w.histogram.forget(model)
            w.statuses = [s for s in w.statuses if s.model != model]
            w.infos = [i for i in w.infos if i.name != model]
            w.counters.pop(model, None)
        elif op == "error":
            w.store.record_error(model, "slots", "timeout")
        elif op == "counters":
            old = w.counters.get(model, InstanceCounters())
            w.counters[model] = InstanceCounters(restarts_total=old.restarts_total + 1)
        elif op == "metadata":
            w.infos = [i for i in w.infos if i.name != model]
            w.infos.append(Info(model, Path(f"/m/{model}.gguf"), size_label=f"{self.t:g}B"))
        elif op == "observe":
            w.histogram.observe(model, self.t / 10)


OPS = ("poll", "restart", "stop", "delete", "error", "counters", "metadata", "observe")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(("a", "b", "c"))), max_size=40),
    st.sampled_from([None, "box-a", 'we"ird\\host']),
)
def test_cached_text_is_what_generate_latest_writes_after_any_events(
    events: list[tuple[str, str]], host: str | None
) -> None:
    lab = Lab(host)
    for op, model in events:
        lab.apply(op, model)
        text = lab.w.render()  # asserts the bytes equal generate_latest's
        if op == "delete":
            assert f'model="{model}"' not in text
        status = lab.status(model)
        if status is not None and status.pid is not None:
            assert f'pid="{status.pid}"' in text  # a restart shows the new process


def test_restart_and_delete_replace_the_cached_text() -> None:
    lab = Lab()
    lab.apply("poll", "a")
    lab.apply("poll", "b")
    first = parse(lab.w.render())
    assert first["llama_exporter_slots"] == {(("model", "a"),): 2.0, (("model", "b"),): 2.0}
    lab.apply("restart", "a")  # ready again with a new pid, not polled yet: no live series
    text = lab.w.render()
    assert 'pid="102"' in text and 'pid="100"' not in text
    assert parse(text)["llama_exporter_slots"] == {(("model", "b"),): 2.0}
    lab.apply("delete", "b")
    text = lab.w.render()
    assert 'model="b"' not in text
    assert "llama_exporter_slots" not in parse(text)


def test_a_snapshot_is_written_once_in_the_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[ModelSnapshot] = []
    real = families.live_rows

    def counting(snap: ModelSnapshot | None) -> families.Rows:
        if snap is not None:
            written.append(snap)
        return real(snap)

    monkeypatch.setattr(families, "live_rows", counting)
    lab = Lab()
    lab.apply("poll", "a")
    assert len(written) == 1  # written when published, before any scrape
    texts = {render(lab.w.registry) for _ in range(3)}  # three scrapes join the cached text
    assert len(written) == 1 and len(texts) == 1
    lab.apply("poll", "a")
    assert len(written) == 2


def test_other_collectors_in_the_registry_are_rendered_too() -> None:
    class Extra(Collector):
        def collect(self) -> Iterator[Metric]:
            gauge = GaugeMetricFamily("extra_queue_length", "Queued.", labels=["model"])
            gauge.add_metric(["a"], 3)
            yield gauge
            yield InfoMetricFamily("extra_build", "Build.", value={"version": "1"})

    w = world()
    w.registry.register(Extra())
    text = w.render()  # asserts parity, including the info family only generate_latest writes
    assert 'extra_queue_length{model="a"} 3.0' in text and "extra_build_info" in text


@pytest.mark.prometheus
def test_promtool_check_metrics() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=world().render().encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_host_label_on_every_series_and_byte_identical() -> None:
    w = world()
    histogram = StartDurationHistogram(host="box-a")
    histogram.observe("a", 1.2)
    registry = build_registry(
        store=w.store,
        statuses=lambda: w.statuses,
        counters=lambda m: w.counters.get(m, InstanceCounters()),
        models=lambda: w.infos,
        running=lambda: sum(s.state is State.READY for s in w.statuses),
        cap=lambda: 4,
        histogram=histogram,
        host="box-a",
    )
    text = render(registry)
    assert text == generate_latest(registry)
    samples = [s for f in text_string_to_metric_families(text.decode()) for s in f.samples]
    assert len(samples) > 50
    assert all(s.labels.get("host") == "box-a" for s in samples), [
        s for s in samples if s.labels.get("host") != "box-a"
    ]
    # The same values as without the label: the host is added, nothing else changes.
    without = parse(w.render())
    with_host = parse(text.decode())
    assert {
        name: {tuple(kv for kv in key if kv[0] != "host"): v for key, v in series.items()}
        for name, series in with_host.items()
    } == without


class _OneGauge(Collector):
    def __init__(self, value: float) -> None:
        self.value = value

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("x", "x", value=self.value)


@given(st.one_of(st.integers(-(10**18), 10**18), st.floats(allow_nan=True)))
def test_value_text_is_what_generate_latest_writes(value: float) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneGauge(value))
    assert generate_latest(registry).decode().splitlines()[-1] == f"x {value_text(value)}"
