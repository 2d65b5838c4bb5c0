"""Pure derivations: /slots + /metrics payloads (+ process samples) -> snapshot values.

Nothing here reads a clock or does I/O: the poller passes payloads and the time in.
llama-server's ``*_tokens_seconds`` gauges are never used: every reader of /metrics
resets them. Generation counts come from the completed-request counter plus the
``n_decoded`` of processing slots, read in that order (see TokenCounter).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

TOKENS_PREDICTED = "llamacpp:tokens_predicted_total"
PROMPT_TOKENS = "llamacpp:prompt_tokens_total"
REQUESTS_DEFERRED = "llamacpp:requests_deferred"
REQUESTS_PROCESSING = "llamacpp:requests_processing"
USED_METRICS = (TOKENS_PREDICTED, PROMPT_TOKENS, REQUESTS_DEFERRED, REQUESTS_PROCESSING)
SMOOTHING_SECONDS = 5.0  # time constant of tokens_per_second_smoothed


@dataclass(frozen=True)
class SlotSample:
    """One entry of llama-server's /slots, reduced to what we use."""

    id: int
    n_ctx: int
    processing: bool
    task_id: int | None = None
    n_prompt_tokens: int = 0  # includes the tokens generated so far
    n_decoded: int = 0


def _int(value: object, default: int = 0) -> int:
    """An int from a JSON value, or default when it is missing, not a number or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if isinstance(value, float) and not math.isfinite(value):
        return default  # json.loads accepts NaN and Infinity
    return int(value)


def gauge(metrics: Mapping[str, float], name: str) -> float | None:
    """A /metrics value, or None when it is missing or not finite (NaN, +-Inf: not read)."""
    value = metrics.get(name)
    return value if value is not None and math.isfinite(value) else None


def _next_token(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The next_token object: a list of one object (current builds) or a plain object."""
    value = entry.get("next_token")
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, Mapping) else {}


def parse_slots(payload: object) -> list[SlotSample]:
    """Parse a /slots JSON payload; raise ValueError if it is not a list of objects."""
    if not isinstance(payload, list):
        raise ValueError(f"/slots payload is {type(payload).__name__}, expected a list")
    slots: list[SlotSample] = []
    for index, entry in enumerate(payload):
        if not isinstance(entry, Mapping):
            raise ValueError(f"/slots entry {index} is {type(entry).__name__}, expected an object")
        processing = bool(entry.get("is_processing", False))
        task = entry.get("id_task")
        slots.append(
            SlotSample(
                id=_int(entry.get("id"), index),
                n_ctx=max(0, _int(entry.get("n_ctx"))),
                processing=processing,
                task_id=_int(task) if processing and task is not None else None,
                n_prompt_tokens=max(0, _int(entry.get("n_prompt_tokens"))) if processing else 0,
                n_decoded=max(0, _int(_next_token(entry).get("n_decoded"))) if processing else 0,
            )
        )
    return slots


def _metric_name(line: str) -> str:
    """The metric name of a sample line (up to the first brace, space or tab)."""
    end = len(line)
    for stop in ("{", " ", "\t"):
        found = line.find(stop, 0, end)
        if found != -1:
            end = found
    return line[:end]


def select_samples(text: str, only: Collection[str]) -> str:
    """The sample lines of text about the metric names in only (comments dropped)."""
    # HELP/TYPE lines cost the parser more than the samples, and startswith(tuple)
    # rejects the other lines in C before the exact name check.
    wanted = frozenset(only)
    prefixes = tuple(wanted)
    lines = (line for line in text.splitlines() if line.startswith(prefixes))
    return "\n".join(line for line in lines if _metric_name(line) in wanted) + "\n"


def parse_metrics(text: str, only: Collection[str] | None = None) -> dict[str, float]:
    """Parse Prometheus text into {sample name: value} (labels ignored, last one wins).

    With ``only``, lines about other metric names are dropped before parsing: the
    parser costs about a millisecond per llama-server /metrics page otherwise.
    """
    if only is not None:
        text = select_samples(text, only)
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = float(sample.value)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"/metrics is not valid Prometheus text: {exc}") from exc
    return values


def ratio(part: float, whole: float) -> float:
    """part / whole clamped to 0..1 (0 when whole is 0)."""
    if whole <= 0 or not math.isfinite(part):
        return 0.0
    return min(1.0, max(0.0, part / whole))


class TokenCounter:
    """An exact, never-decreasing count across llama-server processes of one model.

    ``update(completed, in_flight)`` takes the process's completed-request counter
    (from /metrics, read first) and the tokens of requests still running (from
    /slots, read second). A request ending between the two reads is missed for one
    poll (the clamp holds the total) and counted by the completed counter the next.
    A cancelled request never reaches the completed counter: the part of a drop that
    the next poll's counter increase cannot explain is credited (never more than the
    tokens really generated, so nothing is counted twice).
    """

    def __init__(self, total: float = 0.0) -> None:
        self._total = float(total)
        self._carried = float(total)  # counted before this process, plus credits
        self._last_completed = 0.0
        self._pending: tuple[float, float] | None = None  # (deficit, completed then)

    @property
    def total(self) -> float:
        """The count so far."""
        return self._total

    def begin_process(self) -> None:
        """A new llama-server process starts: its counters start again from 0."""
        self._carried = self._total
        self._last_completed = 0.0
        self._pending = None

    def update(self, completed: float | None, in_flight: float = 0.0) -> float:
        """Fold in one poll's readings (completed None: not read) and return the total."""
        if completed is None:
            completed = self._last_completed
        if not (math.isfinite(completed) and math.isfinite(in_flight)):
            return self._total
        if completed < self._last_completed:
            self.begin_process()  # the process counter went backwards: a restart we missed
        if self._pending is not None:
            deficit, completed_then = self._pending
            self._carried += max(0.0, deficit - (completed - completed_then))
        self._last_completed = completed
        raw = self._carried + completed + max(0.0, in_flight)
        self._pending = (self._total - raw, completed) if raw < self._total else None
        self._total = max(self._total, raw)
        return self._total


@dataclass(frozen=True)
class ProcessSample:
    """psutil readings of one llama-server process."""

    cpu_seconds: float  # user + system
    rss_bytes: int
    cpu_count: int = 1  # logical CPUs of the host
    rss_file_bytes: int | None = None  # file-backed (mapped weights) part of rss_bytes


def _anon(process: ProcessSample | None) -> int | None:
    if process is None or process.rss_file_bytes is None:
        return None
    return max(0, process.rss_bytes - process.rss_file_bytes)


@dataclass(frozen=True)
class SlotView:
    """Derived values of one slot."""

    id: int
    busy: bool
    task_id: int | None
    n_ctx: int
    context_used_tokens: int
    context_used_ratio: float
    n_decoded: int
    tokens_per_second: float
    time_per_token_seconds: float | None  # None unless generating

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (time per token in milliseconds)."""
        data = asdict(self)
        del data["time_per_token_seconds"]
        data["time_per_token_ms"] = _ms(self.time_per_token_seconds)
        return data


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything known about one ready instance after one poll."""

    model: str
    timestamp: float  # unix time of the poll
    interval_seconds: float  # time since the previous poll (0 on the first)
    pid: int | None
    slots_total: int
    slots_busy: int
    requests_waiting: int
    context_size_tokens: int
    context_used_tokens: int
    context_used_ratio: float
    tokens_generated_total: float
    prompt_tokens_total: float
    tokens_per_second: float
    tokens_per_second_smoothed: float
    time_per_token_seconds: float | None  # mean over generating slots; None when idle
    cpu_seconds_total: float | None
    cpu_utilization_ratio: float | None  # share of the whole host (0..1)
    cpu_percent: float | None  # percent of one core
    rss_bytes: int | None
    slots: tuple[SlotView, ...] = ()
    rss_anon_bytes: int | None = None  # anonymous part of rss_bytes (KV cache, buffers)
    rss_file_bytes: int | None = None  # file-backed part (the GGUF's mapped pages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (times per token in milliseconds, percent values in percent)."""
        data = asdict(self)
        del data["time_per_token_seconds"]
        data["time_per_token_ms"] = _ms(self.time_per_token_seconds)
        data["slots"] = [slot.to_dict() for slot in self.slots]
        return data


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def per_second(delta: float, dt: float) -> float:
    """delta / dt, or 0.0 when the interval is empty or so short the quotient overflows."""
    if dt <= 0:
        return 0.0
    rate = delta / dt
    # a denormal dt (hypothesis found 5e-324 s) gives inf, and inf - inf poisons the EWMA
    return rate if math.isfinite(rate) else 0.0


def _slot_rate(slot: SlotSample, previous: SlotSample | None, dt: float) -> float:
    """Tokens/s of one processing slot over the last interval."""
    if not slot.processing:
        return 0.0
    same_task = previous is not None and previous.processing and previous.task_id == slot.task_id
    before = previous.n_decoded if same_task and previous is not None else 0
    return per_second(max(0, slot.n_decoded - before), dt)


class ModelDeriver:
    """Pure state of one polled llama-server process: previous poll, rates, CPU deltas."""

    def __init__(
        self,
        model: str,
        tokens: TokenCounter | None = None,
        prompt_tokens: TokenCounter | None = None,
        *,
        pid: int | None = None,
        smoothing_seconds: float = SMOOTHING_SECONDS,
    ) -> None:
        self.model = model
        self.pid = pid
        self.tokens = tokens if tokens is not None else TokenCounter()
        self.prompt_tokens = prompt_tokens if prompt_tokens is not None else TokenCounter()
        self._tau = smoothing_seconds
        self._prev_time: float | None = None
        self._prev_total = self.tokens.total
        self._prev_slots: dict[int, SlotSample] = {}
        self._smoothed: float | None = None
        self._prev_cpu: tuple[float, float] | None = None  # (time, cpu seconds)

    def begin_process(self) -> None:
        """Tell the counters a new llama-server process starts (its counters are at 0)."""
        self.tokens.begin_process()
        self.prompt_tokens.begin_process()
        self._prev_total = self.tokens.total

    def update(
        self,
        metrics: Mapping[str, float],
        slots: Sequence[SlotSample],
        now: float,
        process: ProcessSample | None = None,
    ) -> ModelSnapshot:
        """Fold in one poll (/metrics read before /slots) taken at ``now``."""
        dt = 0.0 if self._prev_time is None else max(0.0, now - self._prev_time)
        busy = [s for s in slots if s.processing]
        # a missing counter means "not read", never "reset to 0" (that looks like a restart)
        total = self.tokens.update(
            gauge(metrics, TOKENS_PREDICTED), float(sum(s.n_decoded for s in busy))
        )
        prompt_total = self.prompt_tokens.update(gauge(metrics, PROMPT_TOKENS))
        rate = per_second(total - self._prev_total, dt)
        self._smooth(rate, dt)

        views = tuple(self._slot_view(s, dt) for s in slots)
        per_token = [v.time_per_token_seconds for v in views if v.time_per_token_seconds]
        size = sum(s.n_ctx for s in slots)
        used = sum(s.n_prompt_tokens for s in busy)
        cpu_total, cpu_ratio, cpu_percent = self._cpu(process, now)

        self._prev_time = now
        self._prev_total = total
        self._prev_slots = {s.id: s for s in slots}
        return ModelSnapshot(
            model=self.model,
            timestamp=now,
            interval_seconds=dt,
            pid=self.pid,
            slots_total=len(slots),
            slots_busy=len(busy),
            requests_waiting=max(0, int(gauge(metrics, REQUESTS_DEFERRED) or 0.0)),
            context_size_tokens=size,
            context_used_tokens=used,
            context_used_ratio=ratio(used, size),
            tokens_generated_total=total,
            prompt_tokens_total=prompt_total,
            tokens_per_second=rate,
            tokens_per_second_smoothed=self._smoothed if self._smoothed is not None else 0.0,
            time_per_token_seconds=sum(per_token) / len(per_token) if per_token else None,
            cpu_seconds_total=cpu_total,
            cpu_utilization_ratio=cpu_ratio,
            cpu_percent=cpu_percent,
            rss_bytes=process.rss_bytes if process is not None else None,
            slots=views,
            rss_anon_bytes=_anon(process),
            rss_file_bytes=process.rss_file_bytes if process is not None else None,
        )

    def _smooth(self, rate: float, dt: float) -> None:
        """EWMA with a time-aware weight (the first measured rate starts it)."""
        if dt <= 0:
            return
        if self._smoothed is None:
            self._smoothed = rate
            return
        alpha = 1.0 - math.exp(-dt / self._tau) if self._tau > 0 else 1.0
        self._smoothed += alpha * (rate - self._smoothed)

    def _slot_view(self, slot: SlotSample, dt: float) -> SlotView:
        rate = _slot_rate(slot, self._prev_slots.get(slot.id), dt)
        used = slot.n_prompt_tokens if slot.processing else 0
        return SlotView(
            id=slot.id,
            busy=slot.processing,
            task_id=slot.task_id,
            n_ctx=slot.n_ctx,
            context_used_tokens=used,
            context_used_ratio=ratio(used, slot.n_ctx),
            n_decoded=slot.n_decoded,
            tokens_per_second=rate,
            time_per_token_seconds=1.0 / rate if rate > 0 else None,
        )

    def _cpu(
        self, process: ProcessSample | None, now: float
    ) -> tuple[float | None, float | None, float | None]:
        """(cpu seconds total, share of the host 0..1, percent of one core)."""
        if process is None:
            return None, None, None
        previous, self._prev_cpu = self._prev_cpu, (now, process.cpu_seconds)
        if previous is None or now <= previous[0]:
            return process.cpu_seconds, 0.0, 0.0
        busy = max(0.0, process.cpu_seconds - previous[1]) / (now - previous[0])
        return process.cpu_seconds, ratio(busy, max(1, process.cpu_count)), busy * 100.0
