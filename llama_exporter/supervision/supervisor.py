"""All llama-server instances: the parallel cap, start and stop, status and subscribers.

The Supervisor is the only writer of instance state: every change goes through
``Instances._set_state`` (instances.py, its base class), which checks the transition
and publishes an ``InstanceStatus``. Each instance's life (spawn, ready, watch,
restarts with back-off) runs in ``lifecycle.Lifecycle``, which changes state through
that same ``_set_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from llama_exporter.config.settings import Config, ModelConfig
from llama_exporter.memory.admission import Decision, Verdict
from llama_exporter.memory.budgets import BudgetError
from llama_exporter.states import (
    CapExceeded,
    Conflict,
    InstanceStatus,
    ShuttingDown,
    State,
    UnknownModel,
)
from llama_exporter.supervision.command import reader_key
from llama_exporter.supervision.instance_key import InstanceKey
from llama_exporter.supervision.instances import Instances
from llama_exporter.supervision.ledger import FigureSource, Ledger, MemoryFull, ModelTooBig
from llama_exporter.supervision.lifecycle import WATCHDOG_INTERVAL, Entry, Lifecycle
from llama_exporter.supervision.logfile import rotated_log, tail_file
from llama_exporter.supervision.model_source import ModelSource
from llama_exporter.supervision.process import SpawnFn

log = logging.getLogger(__name__)

# (model, seconds, unload reason): waits until the model has no request in flight or the
# time is up; requests still running then are cut off by the stop.
DrainFn = Callable[[str, float, str], Awaitable[None]]


class Supervisor(Instances):
    """Starts and stops one llama-server per model under the cap; sole owner of their state."""

    def __init__(
        self,
        config: Config,
        models: ModelSource,
        *,
        spawn: SpawnFn | None = None,
        observe_start_duration: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        instance_host: str = "127.0.0.1",
        watchdog_interval: float = WATCHDOG_INTERVAL,
        memory: FigureSource | None = None,
        budgets: Mapping[str, int] | None = None,
        instance_key: InstanceKey | None = None,
        learn: Callable[[ModelConfig, Sequence[str]], None] | None = None,
    ) -> None:
        super().__init__(models, clock)
        self.config = config
        self._learn = learn  # memory.book.MemoryBook.learn_lines: blocking, run in a thread
        self._shutting_down = False
        self._drain: DrainFn | None = None
        self.ledger = Ledger(memory, budgets, self._entries, self._pinned)
        self._lifecycle = Lifecycle(
            config,
            self._entries,
            set_state=self._set_state,
            count=self._count,
            spawn=spawn,
            observe_start_duration=observe_start_duration,
            clock=clock,
            instance_host=instance_host,
            watchdog_interval=watchdog_interval,
            on_oom=self.ledger.after_oom,
            instance_key=instance_key,
            on_loaded=self._learned if learn is not None else None,
        )
        self._host = instance_host  # readers connect to it (see _launch)

    async def _learned(self, model: ModelConfig, lines: list[str]) -> None:
        """A load is ready: record what it allocated (file write: in a thread)."""
        assert self._learn is not None
        await asyncio.to_thread(self._learn, model, lines)
        await self.ledger.prepare(model)  # the next admission reads the learned figure

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: the cap, budgets, timeouts and restart policy apply from now."""
        self.config = self._lifecycle.config = config
        try:
            self.ledger.resolve(config.memory_budget, config.memory_headroom)
        except BudgetError as exc:  # the reload goes on; the budgets stay as they were
            log.error("config reload: memory budgets unchanged: %s", exc)

    def set_drain(self, drain: DrainFn | None) -> None:
        """Who an explicit stop asks to let requests in flight finish (the gateway)."""
        self._drain = drain

    async def refresh_figures(self) -> None:
        """Read every known model's estimate and learned figure in a thread (for people)."""
        models = []
        for name in self.models.names():
            with contextlib.suppress(KeyError):
                models.append(self.models.get(name))
        await asyncio.to_thread(self.ledger.read_all, models)

    async def prepare(self, name: str) -> None:
        """Read the model's memory figure in a thread, for the next admission of it."""
        await self.ledger.prepare(self._model(name))

    def admission(self, name: str, *, leaving: Collection[str] = ()) -> Decision:
        """Would a start of name fit now (START), after evictions, or not; leaving = going."""
        model = self._model(name)
        holders = self.ledger.holders(leaving)
        return self.ledger.decide(name, self.ledger.figure_now(model), holders, self.cap)

    @property
    def shutting_down(self) -> bool:
        """True once shutdown() began: no new starts."""
        return self._shutting_down

    @property
    def cap(self) -> int:
        """max_parallel: instances that may count against the cap at once."""
        return self.config.max_parallel

    def log_tail(self, name: str, n: int = 50) -> list[str]:
        """Last n lines of the model's log file (all runs); the in-memory tail if unreadable.

        Reads the file from its end, so call it off the event loop for large n.
        """
        path = self._lifecycle.log_path(name)
        try:
            lines = tail_file(path, n)
        except OSError:
            entry = self._entries.get(name)
            proc = (entry.proc or entry.last_proc) if entry else None
            return proc.tail(n) if proc is not None else []
        if len(lines) < n:  # just rotated: the rest is in <log>.1
            with contextlib.suppress(OSError):
                lines = tail_file(rotated_log(path), n - len(lines)) + lines
        return lines

    # --- start / stop -------------------------------------------------------------

    async def start(self, name: str, *, trigger: str = "api") -> InstanceStatus:
        """Start the model's instance (idempotent while starting or ready); trigger says why."""
        await self.prepare(name)
        return self.launch(name, trigger=trigger)

    def launch(self, name: str, *, trigger: str = "api") -> InstanceStatus:
        """start() without awaiting: the caller's cap decision and the launch are one step."""
        model = self._model(name)
        if self._shutting_down:
            raise ShuttingDown("the service is shutting down: no new instances")
        entry = self._entry(name)
        state = entry.status.state
        if state in (State.STARTING, State.READY):
            return entry.status
        if state is State.STOPPING:
            raise Conflict(f"{name!r} is stopping; start it again once it has stopped")
        if state is State.BACKOFF:  # the user asks now: skip the rest of the wait
            if entry.task is not None:
                entry.task.cancel()
            return self._launch(entry, model, trigger, automatic=True)
        # No await between the admission check and the transition to STARTING.
        decision = self.admission(name)
        if decision.verdict is Verdict.TOO_BIG:
            self._count(entry, start_failures_total=1)
            self._set_state(entry, State.FAILED, last_error=decision.reason, next_retry_at=None)
            raise ModelTooBig(name, decision)
        if decision.verdict is not Verdict.START:
            self._count(entry, start_rejected_total=1)
            running = tuple(self.running_models())
            if decision.shortfall is None:
                raise CapExceeded(name, running, self.cap)
            raise MemoryFull(name, running, self.cap, decision)
        entry.figure = self.ledger.figure_now(model)
        return self._launch(entry, model, trigger, automatic=False, retries=0)

    def _launch(
        self,
        entry: Entry,
        model: ModelConfig,
        trigger: str,
        *,
        automatic: bool,
        retries: int | None = None,
    ) -> InstanceStatus:
        entry.loads[trigger] = entry.loads.get(trigger, 0) + 1
        fields: dict[str, Any] = {"next_retry_at": None, "pid": None, "port": None}
        # Readers connect over loopback when instances listen on every interface.
        reach = "127.0.0.1" if self._host in ("0.0.0.0", "::", "") else self._host
        # Readers send the model's own api_key if it has one, else the service's key.
        fields.update(api_key=reader_key(model, self._lifecycle.instance_key), host=reach)
        if retries is not None:
            fields.update(retries=retries, last_error=None, ready_at=None)
        entry.launched, entry.stop_asked = model, False
        status = self._set_state(entry, State.STARTING, **fields)
        entry.task = asyncio.create_task(self._lifecycle.run(entry, model, automatic))
        return status

    async def stop(
        self, name: str, *, reason: str = "api", drain_for: float | None = None
    ) -> InstanceStatus:
        """Stop the model's instance: drain, SIGTERM, grace, SIGKILL; FAILED becomes STOPPED.

        reason (api, evicted, idle, shutdown, reload) is counted in model_unloads_total. A
        ready instance first gets up to drain_for (default: the model's stop_drain) seconds
        for requests in flight.
        """
        entry = self._entries.get(name)
        if entry is None:  # never started: nothing to stop, or UnknownModel
            return self.status(name)
        state = entry.status.state
        if state is State.STOPPING:
            entry.stop_asked = True  # a reload's restart ends in STOPPED, not STARTING
            return await self.wait_settled(name)
        if state in (State.STOPPED,):
            return entry.status
        if state in (State.FAILED, State.BACKOFF):
            # STOPPED first, with no await before it: a start() racing this stop then
            # begins from STOPPED instead of being overwritten by it.
            task, entry.task = entry.task, None
            status = self._set_state(
                entry, State.STOPPED, last_error=None, next_retry_at=None, pid=None, port=None
            )
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return status
        await self._drain_and_stop(entry, name, reason, drain_for)
        return self._set_state(
            entry, State.STOPPED, pid=None, port=None, ready_at=None, last_error=None
        )

    async def restart(self, name: str, *, reason: str = "reload") -> InstanceStatus:
        """Drain and stop a starting or ready instance, then start it with its current config.

        It keeps its place under the cap (STOPPING goes straight to STARTING), so requests
        arriving meanwhile wait for the new instance as for any load. A stopped, failed or
        stopping model is left as it is; one in back-off is started now.
        """
        entry = self._entries.get(name)
        state = entry.status.state if entry is not None else State.STOPPED
        if entry is None or state in (State.STOPPED, State.FAILED, State.STOPPING):
            return self.status(name)
        if state is State.BACKOFF:
            return self.launch(name, trigger=reason)
        entry.restarting = True
        try:
            await self._drain_and_stop(entry, name, reason, None)
        finally:
            entry.restarting = False
        if self._shutting_down or entry.stop_asked or entry.status.state is not State.STOPPING:
            # stop() or shutdown() came meanwhile and waits for this stop to settle
            return self._set_state(entry, State.STOPPED, pid=None, port=None, ready_at=None)
        try:
            model = self._model(name)
        except UnknownModel:
            return self._set_state(entry, State.STOPPED, pid=None, port=None, ready_at=None)
        log.info("%s: starting again with its new settings (%s)", name, reason)
        return self._launch(entry, model, reason, automatic=False, retries=0)

    async def _drain_and_stop(
        self, entry: Entry, name: str, reason: str, drain_for: float | None
    ) -> None:
        """STOPPING, let requests drain (ready only), end the life task and the process."""
        was_ready = entry.status.state is State.READY
        entry.unloads[reason] = entry.unloads.get(reason, 0) + 1
        self._set_state(entry, State.STOPPING, next_retry_at=None)
        if was_ready and self._drain is not None:
            # STOPPING first: the gateway sends this instance no new request meanwhile.
            if drain_for is None:
                try:
                    drain_for = self._model(name).stop_drain
                except UnknownModel:
                    drain_for = 0.0
            await self._drain(name, drain_for, reason)
        await self._cancel_task(entry)
        proc = entry.proc
        if proc is not None:
            rc = await proc.stop(self.config.stop_grace)
            log.info("%s: llama-server pid %d stopped (status %d)", name, proc.pid, rc)
            self._lifecycle.forget_proc(entry)

    async def _cancel_task(self, entry: Entry) -> None:
        task, entry.task = entry.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def shutdown(self) -> None:
        """Refuse new starts and stop every instance concurrently."""
        self._shutting_down = True
        names = [n for n, e in self._entries.items() if e.status.state is not State.STOPPED]
        stops = (self.stop(n, reason="shutdown") for n in names)
        results = await asyncio.gather(*stops, return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, UnknownModel):
                continue  # removed by a config reload meanwhile: nothing left to stop
            if isinstance(result, BaseException):
                log.error("shutdown: stopping %s failed", name, exc_info=result)
        try:
            await self._lifecycle.instances.flush()
        except Exception:
            log.exception("shutdown: cannot write %s", self._lifecycle.instances.path)

    async def start_autostart(self) -> list[str]:
        """Start the autostart models in order while under the cap; returns those started."""
        started: list[str] = []
        for name in self.models.names():
            model = self._model(name)
            if not model.autostart:
                continue
            try:
                await self.start(name, trigger="autostart")
            except CapExceeded as exc:
                log.warning("autostart: skipping %s: %s", name, exc)
                continue
            started.append(name)
        return started

    async def recover(self) -> list[int]:
        """Kill llama-servers a previous run recorded that are still alive; returns their pids."""
        killed = await self._lifecycle.instances.recover()
        self._lifecycle.persist()
        return killed
