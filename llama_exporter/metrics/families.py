"""The exported families (the contract in docs/ARCHITECTURE.md) and each model's rows.

Pure: rows are written from plain values (a status, counts, a snapshot...), so the
collector can cache each model's text under the values it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from llama_exporter.metrics.exposition import labels_text, value_text
from llama_exporter.monitoring.derive import ModelSnapshot
from llama_exporter.monitoring.store import PollInfo
from llama_exporter.states import InstanceStatus, State

PREFIX = "llama_exporter_"


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


POLL_ENDPOINTS = ("metrics", "slots", "props")
POLL_REASONS = ("timeout", "connect", "parse")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: each is a singleton
class Family:
    """One exported family: name without the prefix, type, help, label names."""

    name: str
    kind: str  # "gauge" or "counter" (counters are named without _total here)
    doc: str
    labels: tuple[str, ...] = ()

    @property
    def exposed(self) -> str:
        """The name in the exposition (prefixed; counters end in _total)."""
        return f"{PREFIX}{self.name}_total" if self.kind == "counter" else PREFIX + self.name

    def metric(self, const: Sequence[str] = ()) -> CounterMetricFamily | GaugeMetricFamily:
        """An empty prometheus_client family for collect(); const: extra label names first."""
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return kind(PREFIX + self.name, self.doc, labels=[*const, *self.labels])


def _g(name: str, doc: str, *labels: str) -> Family:
    return Family(name, "gauge", doc, labels)


def _c(name: str, doc: str, *labels: str) -> Family:
    return Family(name, "counter", doc, labels)


M, MS = ("model",), ("model", "slot")
INSTANCE = (
    _g("instance_state", "1 for the current state.", "model", "state"),
    _g("instance_up", "1 when ready.", *M),
    _g("instance_info", "1 while a process exists.", "model", "pid", "port"),
    _c("instance_restarts", "Restarts after a crash/hang.", *M),
    _c("instance_start_failures", "Starts not ready.", *M),
    _c("instance_start_rejected", "Starts refused: cap.", *M),
    _g("instance_ready_since_timestamp_seconds", "Unix time it became ready.", *M),
)
RUNNING = _g("instances_running", "Instances counted against the cap.")
CAP = _g("instances_max", "The cap on instances.")
MODEL_INFO = (
    _g(
        "model_info",
        "1 per known model.",
        "model",
        "path",
        "source",
        "architecture",
        "quantization",
        "size_label",
    ),
    _g("model_trained_context_tokens", "Trained context length.", *M),
    _g("model_file_size_bytes", "GGUF file size.", *M),
)
TOKENS = (
    _c("tokens_generated", "Tokens generated: completed + in flight.", *M),
    _c("prompt_tokens", "Prompt tokens processed.", *M),
)
LIVE_VALUES: tuple[tuple[Family, Callable[[ModelSnapshot], float | None]], ...] = (
    (_g("slots", "Slots (-np).", *M), lambda s: s.slots_total),
    (_g("slots_busy", "Slots processing.", *M), lambda s: s.slots_busy),
    (_g("requests_waiting", "Requests deferred.", *M), lambda s: s.requests_waiting),
    (_g("context_size_tokens", "Context, summed.", *M), lambda s: s.context_size_tokens),
    (_g("context_used_tokens", "Context in use.", *M), lambda s: s.context_used_tokens),
    (_g("context_used_ratio", "Context in use (0..1).", *M), lambda s: s.context_used_ratio),
    (_g("tokens_per_second", "Generation rate.", *M), lambda s: s.tokens_per_second),
    (
        _g("tokens_per_second_smoothed", "Generation rate, smoothed (~5 s).", *M),
        lambda s: s.tokens_per_second_smoothed,
    ),
    (
        _g("time_per_token_seconds", "Mean seconds per generated token over generating slots.", *M),
        lambda s: s.time_per_token_seconds,
    ),
)
SLOTS = (
    _g("slot_busy", "1 when processing.", *MS),
    _g("slot_context_size_tokens", "Slot context.", *MS),
    _g("slot_context_used_tokens", "Slot context in use.", *MS),
    _g("slot_context_used_ratio", "Slot context in use (0..1).", *MS),
    _g("slot_tokens_per_second", "Slot generation rate.", *MS),
    _g("slot_time_per_token_seconds", "Seconds per token.", *MS),
)
PROCESS = (
    _c("process_cpu_seconds", "llama-server CPU seconds.", *M),
    _g("process_cpu_utilization_ratio", "Share of host CPU (0..1).", *M),
    _g("process_resident_memory_bytes", "llama-server RSS.", *M),
    _g("process_resident_memory_anonymous_bytes", "llama-server RSS not backed by a file.", *M),
    _g("process_resident_memory_file_bytes", "llama-server RSS backed by files (the GGUF).", *M),
)
LIVE = (*(f for f, _ in LIVE_VALUES), *SLOTS, *PROCESS)
HOST = (
    _g("host_cpu_utilization_ratio", "Host CPU in use (0..1)."),
    _g("host_memory_total_bytes", "Host memory."),
    _g("host_memory_used_bytes", "Host memory in use."),
)
HOST_ERRORS = _c("host_sample_errors", "Failed samples of host CPU and memory.")
TASKS = _g("asyncio_tasks", "The service's own asyncio tasks (at the last host sample).")
ERRORS = (_c("poll_errors", "Failed reads of llama-server.", "model", "endpoint", "reason"),)
POLL = (
    _g("poll_duration_seconds", "Duration of the last poll.", *M),
    _g("last_poll_timestamp_seconds", "Unix time of the last poll.", *M),
)

Row = tuple[tuple[str, ...], float]  # label values (in the family's label order), value
Rows = tuple[list[Row], ...]  # one list per family of a part


def instance_rows(model: str, status: InstanceStatus | None, counts: tuple[int, int, int]) -> Rows:
    """The INSTANCE families' rows of one model (counts: restarts, failures, rejected)."""
    rows: Rows = tuple([] for _ in INSTANCE)
    state, up, info, restarts, failures, rejected, since = rows
    current = status.state if status is not None else State.STOPPED
    for candidate in State:
        state.append(((model, candidate.value), 1.0 if candidate is current else 0.0))
    up.append(((model,), 1.0 if current is State.READY else 0.0))
    if status is not None and status.pid is not None:
        port = "" if status.port is None else str(status.port)
        info.append(((model, str(status.pid), port), 1.0))
    restarts.append(((model,), counts[0]))
    failures.append(((model,), counts[1]))
    rejected.append(((model,), counts[2]))
    if status is not None and current is State.READY and status.ready_at is not None:
        since.append(((model,), status.ready_at))
    return rows


def info_key(m: ModelInfo | None) -> tuple[object, ...] | None:
    """The values model_info rows are written from (None: no info)."""
    if m is None:
        return None
    return (
        m.name,
        str(m.path),
        m.source,
        m.architecture,
        m.quantization,
        m.size_label,
        m.context_length,
        m.file_size,
    )


def info_rows(key: tuple[object, ...] | None) -> Rows:
    """The MODEL_INFO families' rows of one model, from info_key()."""
    rows: Rows = tuple([] for _ in MODEL_INFO)
    if key is None:
        return rows
    name, path, source, arch, quant, size_label, context, size = key
    labels = (str(name), str(path), str(source), *(str(v or "") for v in (arch, quant, size_label)))
    rows[0].append((labels, 1.0))
    if isinstance(context, int):
        rows[1].append(((str(name),), context))
    if isinstance(size, int):
        rows[2].append(((str(name),), size))
    return rows


def token_rows(model: str, totals: tuple[float, float] | None) -> Rows:
    """The TOKENS families' rows (0 for a model never polled)."""
    generated, prompt = totals if totals is not None else (0.0, 0.0)
    return [((model,), generated)], [((model,), prompt)]


def live_rows(snap: ModelSnapshot | None) -> Rows:
    """The LIVE families' rows of a ready model's latest snapshot (none without one)."""
    rows: Rows = tuple([] for _ in LIVE)
    if snap is None:
        return rows
    key = (snap.model,)
    for index, (_, value) in enumerate(LIVE_VALUES):
        v = value(snap)
        if v is not None:
            rows[index].append((key, v))
    busy, size, used, used_ratio, rate, per_token = rows[len(LIVE_VALUES) : -len(PROCESS)]
    for slot in snap.slots:
        labels = (snap.model, str(slot.id))
        busy.append((labels, 1.0 if slot.busy else 0.0))
        size.append((labels, slot.n_ctx))
        used.append((labels, slot.context_used_tokens))
        used_ratio.append((labels, slot.context_used_ratio))
        rate.append((labels, slot.tokens_per_second))
        if slot.time_per_token_seconds is not None:
            per_token.append((labels, slot.time_per_token_seconds))
    cpu, share, rss, anon, file = rows[-len(PROCESS) :]
    if snap.cpu_seconds_total is not None:
        cpu.append((key, snap.cpu_seconds_total))
    if snap.cpu_utilization_ratio is not None:
        share.append((key, snap.cpu_utilization_ratio))
    if snap.rss_bytes is not None:
        rss.append((key, snap.rss_bytes))
    if snap.rss_anon_bytes is not None:
        anon.append((key, snap.rss_anon_bytes))
    if snap.rss_file_bytes is not None:
        file.append((key, snap.rss_file_bytes))
    return rows


def error_rows(model: str, polled: bool, errors: Sequence[tuple[str, str, int]]) -> Rows:
    """poll_errors_total rows of one model: its counts, plus 0 for the known labels if polled."""
    # Known label values start at 0 while a model is polled, so increase() and
    # dashboards see "no errors" instead of "no data".
    counts: dict[tuple[str, str], int] = {}
    if polled:
        counts = {(e, r): 0 for e in POLL_ENDPOINTS for r in POLL_REASONS}
    counts.update({(e, r): n for e, r, n in errors})
    return ([((model, e, r), n) for (e, r), n in sorted(counts.items())],)


def poll_rows(model: str, poll: PollInfo | None) -> Rows:
    """poll_duration_seconds and last_poll_timestamp_seconds of a polled model."""
    if poll is None:
        return [], []
    return [((model,), poll.duration_seconds)], [((model,), poll.timestamp)]


Labels = tuple[tuple[str, str], ...]  # (name, value) pairs
Prefixes = dict[tuple[Family, tuple[str, ...]], str]


def text_of(
    families: Sequence[Family],
    rows: Rows,
    prefixes: Prefixes,
    before: tuple[Rows, tuple[str, ...]] | None = None,
    const: Labels = (),
) -> tuple[str, ...]:
    """Each family's sample lines of one part; const labels (the host) on every sample.

    before: the rows and text written last time; a family whose rows are equal keeps
    its text (a busy snapshot changes about half of its families). prefixes keeps
    'name{labels} ' per (family, label values) between calls.
    """
    texts: list[str] = []
    for index, (family, family_rows) in enumerate(zip(families, rows, strict=True)):
        if before is not None and before[0][index] == family_rows:
            texts.append(before[1][index])
            continue
        lines: list[str] = []
        for labels, value in family_rows:
            prefix = prefixes.get((family, labels))
            if prefix is None:
                pairs = (*const, *zip(family.labels, labels, strict=True))
                prefix = prefixes[(family, labels)] = f"{family.exposed}{labels_text(pairs)} "
            lines.append(f"{prefix}{value_text(value)}\n")
        texts.append("".join(lines))
    return tuple(texts)


@dataclass(frozen=True, eq=False)
class Part:
    """Families of one model written from one key (the values the rows come from)."""

    name: str
    families: tuple[Family, ...]
    rows: Callable[[str, Any], Rows]  # (model, key) -> rows


PARTS = (
    Part("instance", INSTANCE, lambda model, key: instance_rows(model, *key)),
    Part("info", MODEL_INFO, lambda _, key: info_rows(key)),
    Part("tokens", TOKENS, token_rows),
    Part("live", LIVE, lambda _, key: live_rows(key)),
    Part("errors", ERRORS, lambda model, key: error_rows(model, *key)),
    Part("poll", POLL, poll_rows),
)
INSTANCE_PART, INFO_PART, TOKENS_PART, LIVE_PART, ERRORS_PART, POLL_PART = PARTS
ORDER = (
    *INSTANCE,
    RUNNING,
    CAP,
    *MODEL_INFO,
    *TOKENS,
    *LIVE,
    *HOST,
    HOST_ERRORS,
    TASKS,
    *ERRORS,
    *POLL,
)
