"""What the poller read: latest snapshot and history per model, token totals, errors, host.

``MetricsStore`` is written by the poller and read by the collector, the API and
the WebSocket hub (subscribers get every new snapshot).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llama_exporter.monitoring.derive import ModelSnapshot, TokenCounter

log = logging.getLogger(__name__)

Subscriber = Callable[[ModelSnapshot], None]


@dataclass(frozen=True)
class HostSample:
    """The host's CPU and memory at one poll."""

    cpu_utilization_ratio: float  # 0..1 of all CPUs
    memory_total_bytes: int
    memory_used_bytes: int


@dataclass(frozen=True)
class PollInfo:
    """Timing of the last successful poll of one model."""

    duration_seconds: float
    timestamp: float  # unix time


class MetricsStore:
    """Latest snapshot + history per model, kept token totals, poll errors, host values."""

    def __init__(self, history: int = 120) -> None:
        self._history_size = max(1, history)
        self._latest: dict[str, ModelSnapshot] = {}
        self._history: dict[str, deque[ModelSnapshot]] = {}
        self._counters: dict[str, tuple[TokenCounter, TokenCounter]] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._polls: dict[str, PollInfo] = {}
        self._props: dict[str, dict[str, Any]] = {}
        self._subscribers: list[Subscriber] = []
        self.host: HostSample | None = None
        self.host_errors = 0  # host samples that failed
        self.asyncio_tasks: int | None = None  # the service's own tasks at the last host sample

    def resize_history(self, size: int) -> None:
        """Keep size samples per model from now on (a reload's poll.history)."""
        self._history_size = max(1, size)
        self._history = {m: deque(h, maxlen=self._history_size) for m, h in self._history.items()}

    def publish(self, snapshot: ModelSnapshot) -> None:
        """Record a new snapshot and tell the subscribers."""
        self._latest[snapshot.model] = snapshot
        ring = self._history.setdefault(snapshot.model, deque(maxlen=self._history_size))
        ring.append(snapshot)
        for callback in list(self._subscribers):
            try:
                callback(snapshot)
            except Exception:
                log.exception("metrics subscriber %r failed", callback)

    def latest(self, model: str) -> ModelSnapshot | None:
        """The last snapshot of a ready model, or None."""
        return self._latest.get(model)

    def history(self, model: str) -> list[ModelSnapshot]:
        """Snapshots of the current ready run, oldest first."""
        return list(self._history.get(model, ()))

    def live_models(self) -> list[str]:
        """Models with a latest snapshot, sorted."""
        return sorted(self._latest)

    def drop(self, model: str) -> None:
        """Forget the live values of a model that is no longer ready (token totals stay)."""
        self._latest.pop(model, None)
        self._history.pop(model, None)
        self._polls.pop(model, None)
        self._props.pop(model, None)

    def forget(self, model: str) -> None:
        """Remove everything kept about a deleted model (call it once it is not polled)."""
        self.drop(model)
        self._counters.pop(model, None)
        for key in [k for k in self._errors if k[0] == model]:
            del self._errors[key]

    def discard_latest(self, model: str) -> None:
        """Forget the latest snapshot only (its live values can no longer be trusted)."""
        self._latest.pop(model, None)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call callback (on the loop) with every new snapshot; returns an unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def token_counters(self, model: str) -> tuple[TokenCounter, TokenCounter]:
        """(generated, prompt) counters of a model, kept across stops and restarts."""
        if model not in self._counters:
            self._counters[model] = (TokenCounter(), TokenCounter())
        return self._counters[model]

    def token_totals(self) -> dict[str, tuple[float, float]]:
        """{model: (tokens generated, prompt tokens)} for every model ever polled."""
        return {m: (g.total, p.total) for m, (g, p) in self._counters.items()}

    def record_error(self, model: str, endpoint: str, reason: str) -> None:
        """Count one failed read."""
        key = (model, endpoint, reason)
        self._errors[key] = self._errors.get(key, 0) + 1

    def poll_errors(self) -> dict[tuple[str, str, str], int]:
        """{(model, endpoint, reason): count}; never reset."""
        return dict(self._errors)

    def record_poll(self, model: str, duration: float, timestamp: float) -> None:
        """Remember the timing of a successful poll."""
        self._polls[model] = PollInfo(duration, timestamp)

    def last_poll(self, model: str) -> PollInfo | None:
        """Timing of the model's last successful poll while ready."""
        return self._polls.get(model)

    def set_props(self, model: str, props: dict[str, Any]) -> None:
        """Keep the /props answer of the running instance."""
        self._props[model] = props

    def props(self, model: str) -> dict[str, Any] | None:
        """The /props answer of the running instance, if read."""
        return self._props.get(model)
