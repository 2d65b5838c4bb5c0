"""Every model's tracked instance: the one writer of state, its subscribers and read views.

All instance state changes go through ``Instances._set_state``, which checks the
transition and publishes an ``InstanceStatus``; the Supervisor (a subclass) and
``lifecycle.Lifecycle`` both change state through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from llama_exporter.config.settings import ModelConfig
from llama_exporter.states import (
    COUNTS_AGAINST_CAP,
    SETTLED,
    Conflict,
    InstanceCounters,
    InstanceStatus,
    State,
    UnknownModel,
    check_transition,
)
from llama_exporter.supervision.lifecycle import Entry
from llama_exporter.supervision.model_source import ModelSource

log = logging.getLogger(__name__)


class Instances:
    """The instances' state by model: entries, checked transitions, statuses, counters."""

    def __init__(self, models: ModelSource, clock: Callable[[], float]) -> None:
        self.models = models
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._subscribers: list[Callable[[InstanceStatus], None]] = []
        self._created = clock()

    def restarting(self, name: str) -> bool:
        """True while restart() stops the model to start it again (STOPPING, then STARTING)."""
        entry = self._entries.get(name)
        return entry is not None and entry.restarting and not entry.stop_asked

    def launched(self, name: str) -> ModelConfig | None:
        """The settings the model's current (or last) process was started with."""
        entry = self._entries.get(name)
        return entry.launched if entry is not None else None

    def _pinned(self, name: str) -> bool:
        try:
            return self.models.get(name).pinned
        except KeyError:
            return False

    @property
    def running_count(self) -> int:
        """Instances in a state that counts against the cap."""
        return len(self.running_models())

    def running_models(self) -> list[str]:
        """Names of the instances that count against the cap."""
        return [n for n, e in self._entries.items() if e.status.state in COUNTS_AGAINST_CAP]

    def _model(self, name: str) -> ModelConfig:
        try:
            return self.models.get(name)
        except UnknownModel:
            raise
        except KeyError:
            raise UnknownModel(name) from None

    def _entry(self, name: str) -> Entry:
        """The entry of a model start() checked; created on its first start."""
        entry = self._entries.get(name)
        if entry is None:
            entry = Entry(self._never_started(name))
            self._entries[name] = entry
        return entry

    def status(self, name: str) -> InstanceStatus:
        """The model's current status (STOPPED if it was never started)."""
        entry = self._entries.get(name)
        if entry is None:
            self._model(name)  # UnknownModel for a name nobody knows
            return self._never_started(name)
        return entry.status

    def _never_started(self, name: str) -> InstanceStatus:
        return InstanceStatus(model=name, state=State.STOPPED, since=self._created)

    def statuses(self) -> list[InstanceStatus]:
        """Status of every known model and of every instance still tracked."""
        names = list(dict.fromkeys([*self.models.names(), *self._entries]))
        return [e.status if (e := self._entries.get(n)) else self._never_started(n) for n in names]

    def counters(self, name: str) -> InstanceCounters:
        """Restart, failure and rejection counters of one model."""
        entry = self._entries.get(name)
        return entry.counters if entry else InstanceCounters()

    def lifecycle_counts(self, name: str) -> tuple[dict[str, int], dict[str, int]]:
        """(loads by trigger, unloads by reason) of one model since the service started."""
        entry = self._entries.get(name)
        if entry is None:
            return {}, {}
        return dict(entry.loads), dict(entry.unloads)

    def subscribe(self, callback: Callable[[InstanceStatus], None]) -> Callable[[], None]:
        """Call callback (sync, on the loop) with every new status; returns unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def forget(self, name: str) -> None:
        """Drop what is tracked of a model removed from the registry (it must not run)."""
        entry = self._entries.get(name)
        if entry is None:
            return
        if entry.status.state in COUNTS_AGAINST_CAP:
            raise Conflict(f"model {name!r} is {entry.status.state}: stop it first")
        del self._entries[name]

    async def wait_settled(self, name: str, timeout: float | None = None) -> InstanceStatus:  # noqa: ASYNC109
        """Wait until the model is READY, FAILED or STOPPED; returns that status."""
        entry = self._entries.get(name)
        if entry is None:  # never started: STOPPED, or UnknownModel (no entry is made)
            return self.status(name)
        async with asyncio.timeout(timeout):
            while entry.status.state not in SETTLED:
                await entry.changed.wait()
        return entry.status

    # --- the one writer -----------------------------------------------------------

    def _set_state(self, entry: Entry, state: State, **fields: Any) -> InstanceStatus:
        """Change state (checked; same state = field update) and publish the new status."""
        old = entry.status
        if state is not old.state:
            check_transition(old.state, state)
            fields.setdefault("since", self._clock())
        entry.status = dataclasses.replace(old, state=state, **fields)
        entry.changed.set()
        entry.changed = asyncio.Event()
        for callback in list(self._subscribers):
            try:
                callback(entry.status)
            except Exception:
                log.exception("status subscriber %r failed", callback)
        return entry.status

    def _count(self, entry: Entry, **delta: int) -> None:
        c = entry.counters
        entry.counters = dataclasses.replace(c, **{k: getattr(c, k) + v for k, v in delta.items()})
