"""Applying a config reload: validate, plan (plan.py), then ask each part to take its share.

The file goes through the same load_config as check-config and serve; any error, or a
key that needs a service restart, leaves the running config as it is. Otherwise the
registry takes the new model list, every part registered with ``on_config`` takes the
new Config, removed models are stopped after their drain and forgotten, models whose
launch settings changed are restarted by the Supervisor (the only writer of instance
state) after their requests in flight finish, and added autostart models start.
Reloads run one at a time; triggers that arrive during one are merged into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_exporter.catalog.registry import Registry
from llama_exporter.config.settings import Config, ConfigError, ModelConfig
from llama_exporter.reload.plan import Plan, launch_settings, plan
from llama_exporter.states import CapExceeded, Conflict, ShuttingDown, State, UnknownModel
from llama_exporter.supervision.supervisor import Supervisor

log = logging.getLogger(__name__)

RUNNING = frozenset({State.STARTING, State.READY, State.BACKOFF})


@dataclass(frozen=True)
class Outcome:
    """One reload's result: its plan when applied, else the error (file, key, fix)."""

    at: float  # wall-clock time it ended
    plan: Plan | None = None
    error: ConfigError | None = None
    duration: float = 0.0  # seconds from the trigger to applied (restarts go on after)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The outcome as the API, the WebSocket event and the CLI show it."""
        out: dict[str, Any] = {"ok": self.ok, "at": self.at, "duration_seconds": self.duration}
        if self.plan is not None:
            out.update(self.plan.summary())
        if self.error is not None:
            e = self.error
            out["error"] = {
                "message": str(e),
                "file": None if e.file is None else str(e.file),
                "key": e.key,
                "line": e.line,
                "fix": e.hint,
            }
        return out


@dataclass
class Counts:
    """What the reload metrics show."""

    started_at: float
    last_ok: bool = True  # the config the service started with was loaded fine
    last_success: float = 0.0
    success: int = 0
    failure: int = 0
    last: Outcome | None = None
    listeners: list[Callable[[Outcome], None]] = field(default_factory=list)


class Reloader:
    """Reloads the config file on request; the entry point of the reload package."""

    def __init__(
        self,
        config: Config,
        *,
        load: Callable[[], Config],
        registry: Registry,
        supervisor: Supervisor,
        check: Callable[[Config], ConfigError | None] | None = None,
        forget: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """load: read and validate the file (blocking: run in a thread), as check-config does.

        check: further checks of a valid file against how the service runs (its --host);
        forget: drop what other parts keep of a removed model (metrics, history).
        """
        self.config = config
        self._load = load
        self._registry = registry
        self._sup = supervisor
        self._check = check
        self._forget = forget
        self._clock = clock
        self._on_config: list[Callable[[Config], None]] = []
        self.counts = Counts(started_at=clock(), last_success=clock())
        self._lock = asyncio.Lock()
        self._queued: asyncio.Task[Outcome] | None = None
        self._converging: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on_config(self, take: Callable[[Config], None]) -> None:
        """take(new_config) is called, on the loop, when a reload is applied."""
        self._on_config.append(take)

    def on_outcome(self, hear: Callable[[Outcome], None]) -> None:
        """hear(outcome) is called after every reload, applied or not."""
        self.counts.listeners.append(hear)

    # -- triggers ------------------------------------------------------------------

    def trigger(self, why: str) -> asyncio.Task[Outcome]:
        """Reload soon (SIGHUP, a file change); one already waiting to run absorbs this one."""
        if self._queued is not None and not self._queued.done():
            return self._queued
        log.info("config reload requested (%s)", why)
        self._queued = self._spawn(self._run_queued())
        return self._queued

    async def _run_queued(self) -> Outcome:
        async with self._lock:
            self._queued = None  # a trigger from now on reads the file after this one
            return await self._reload()

    async def reload(self) -> Outcome:
        """Reload now (after any running reload) and return what happened."""
        async with self._lock:
            return await self._reload()

    # -- one reload ----------------------------------------------------------------

    async def _reload(self) -> Outcome:
        began = time.monotonic()
        planned: list[tuple[Plan, dict[str, ModelConfig]]] = []

        def accept(before: dict[str, ModelConfig], after: dict[str, ModelConfig]) -> bool:
            changes = plan(self.config, new, before, after)
            refused = changes.refusal(new.source)
            if refused is not None:
                raise refused
            planned.append((changes, before))
            return True

        try:
            new = await asyncio.to_thread(self._load)
            error = self._check(new) if self._check is not None else None
            if error is not None:
                raise error
            await self._registry.areload(new, accept)
        except ConfigError as exc:
            return self._done(Outcome(self._clock(), error=exc, duration=time.monotonic() - began))
        changes, before = planned[0]
        self.config = new
        for take in self._on_config:
            try:
                take(new)
            except Exception:  # one part failing must not leave the others on the old config
                log.exception("config reload: %r could not take the new config", take)
        self._apply_models(changes, before)
        return self._done(Outcome(self._clock(), changes, duration=time.monotonic() - began))

    def _done(self, outcome: Outcome) -> Outcome:
        c = self.counts
        c.last, c.last_ok = outcome, outcome.ok
        if outcome.ok:
            c.success += 1
            c.last_success = outcome.at
            assert outcome.plan is not None
            summary = outcome.plan.summary()
            said = "; ".join(f"{k} {', '.join(v)}" for k, v in summary.items() if v)
            log.info("config reloaded in %.3f s: %s", outcome.duration, said or "no change")
        else:
            c.failure += 1
            log.error("config reload failed, the running config stays: %s", outcome.error)
        for hear in list(c.listeners):
            try:
                hear(outcome)
            except Exception:
                log.exception("config reload listener %r failed", hear)
        return outcome

    # -- models ----------------------------------------------------------------------

    def _apply_models(self, changes: Plan, before: dict[str, ModelConfig]) -> None:
        m = changes.models
        for name in m.removed:
            self._spawn(self._remove(name, before[name].stop_drain))
        for name in m.restart:
            self.converge(name)
        for name in m.autostart:
            with contextlib.suppress(UnknownModel):
                if self._sup.status(name).state is State.STOPPED:
                    self._autostart(name)

    def _autostart(self, name: str) -> None:
        try:
            self._sup.launch(name, trigger="autostart")
        except (CapExceeded, ShuttingDown, Conflict) as exc:
            log.warning("config reload: not starting %s: %s", name, exc)

    def converge(self, name: str) -> asyncio.Task[None] | None:
        """Restart name until it runs with its current launch settings (one task per model)."""
        task = self._converging.get(name)
        if task is None or task.done():
            task = self._spawn(self._converge(name))
            self._converging[name] = task
        return task

    def needs_restart(self, name: str) -> bool:
        """True while name runs with launch settings other than its current ones."""
        model = self._registry.find(name)
        launched = self._sup.launched(name)
        if model is None or launched is None:
            return False
        try:
            state = self._sup.status(name).state
        except UnknownModel:
            return False
        return state in RUNNING and launch_settings(launched) != launch_settings(model.config)

    async def _converge(self, name: str) -> None:
        # Checked again after every restart: a reload that changed the model again while
        # it was restarting is caught here, and the last file wins.
        while self.needs_restart(name):
            try:
                await self._sup.restart(name, reason="reload")
            except Exception:
                log.exception("config reload: restarting %s failed", name)
                return

    async def _remove(self, name: str, drain: float) -> None:
        try:
            await self._sup.stop(name, reason="reload", drain_for=drain)
        except UnknownModel:
            pass  # never started: nothing runs
        except Exception:
            log.exception("config reload: stopping removed model %s failed", name)
            return
        if name in self._registry:
            return  # defined again by a later reload meanwhile
        with contextlib.suppress(Conflict):
            self._sup.forget(name)
            if self._forget is not None:
                self._forget(name)
        log.info("config reload: model %s removed", name)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel restarts and removals still running (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
