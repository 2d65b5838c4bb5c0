"""All llama-server instances: the parallel cap, start and stop, status and subscribers.

The Supervisor is the only writer of instance state: every change goes through
``_set_state``, which checks the transition and publishes an ``InstanceStatus``.
Each instance's life (spawn, ready, watch, restarts with back-off) runs in
``lifecycle.Lifecycle``, which changes state through that same ``_set_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from llama_exporter.config.settings import Config, ModelConfig
from llama_exporter.states import (
    COUNTS_AGAINST_CAP,
    SETTLED,
    CapExceeded,
    Conflict,
    InstanceCounters,
    InstanceStatus,
    ShuttingDown,
    State,
    UnknownModel,
    check_transition,
)
from llama_exporter.supervision.command import reader_key
from llama_exporter.supervision.instance_key import InstanceKey
from llama_exporter.supervision.lifecycle import WATCHDOG_INTERVAL, Entry, Lifecycle
from llama_exporter.supervision.logfile import rotated_log, tail_file
from llama_exporter.supervision.process import SpawnFn

log = logging.getLogger(__name__)

# (model, seconds, unload reason): waits until the model has no request in flight or the
# time is up; requests still running then are cut off by the stop.
DrainFn = Callable[[str, float, str], Awaitable[None]]


class ModelSource(Protocol):
    """Where the supervisor looks up models (the registry satisfies it via an adapter)."""

    def get(self, name: str) -> ModelConfig:
        """The model's config; raises KeyError (ideally UnknownModel) when unknown."""
        ...

    def names(self) -> list[str]:
        """All known model names."""
        ...


class StaticModels:
    """A ModelSource over a fixed list of models (tests, benchmarks, embedding)."""

    def __init__(self, models: Iterable[ModelConfig]) -> None:
        self._models = {m.name: m for m in models}

    def get(self, name: str) -> ModelConfig:
        """The model's config; UnknownModel when there is none of that name."""
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(name) from None

    def names(self) -> list[str]:
        """The names, in the order given."""
        return list(self._models)


class Supervisor:
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
        instance_key: InstanceKey | None = None,
        learn: Callable[[ModelConfig, Sequence[str]], None] | None = None,
    ) -> None:
        self.config = config
        self._learn = learn  # memory.book.MemoryBook.learn_lines: blocking, run in a thread
        self.models = models
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._subscribers: list[Callable[[InstanceStatus], None]] = []
        self._shutting_down = False
        self._created = clock()
        self._drain: DrainFn | None = None
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
            instance_key=instance_key,
            on_loaded=self._learned if learn is not None else None,
        )
        self._host = instance_host  # readers connect to it (see _launch)

    async def _learned(self, model: ModelConfig, lines: list[str]) -> None:
        """A load is ready: record what it allocated (file write: in a thread)."""
        assert self._learn is not None
        await asyncio.to_thread(self._learn, model, lines)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: the cap, timeouts and restart policy apply from now on."""
        self.config = self._lifecycle.config = config

    def restarting(self, name: str) -> bool:
        """True while restart() stops the model to start it again (STOPPING, then STARTING)."""
        entry = self._entries.get(name)
        return entry is not None and entry.restarting and not entry.stop_asked

    def launched(self, name: str) -> ModelConfig | None:
        """The settings the model's current (or last) process was started with."""
        entry = self._entries.get(name)
        return entry.launched if entry is not None else None

    def set_drain(self, drain: DrainFn | None) -> None:
        """Who an explicit stop asks to let requests in flight finish (the gateway)."""
        self._drain = drain

    # --- reading ------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        """True once shutdown() began: no new starts."""
        return self._shutting_down

    @property
    def cap(self) -> int:
        """max_parallel: instances that may count against the cap at once."""
        return self.config.max_parallel

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

    # --- start / stop -------------------------------------------------------------

    async def start(self, name: str, *, trigger: str = "api") -> InstanceStatus:
        """Start the model's instance (idempotent while starting or ready); trigger says why."""
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
        # No await between the cap check and the transition to STARTING.
        if self.running_count >= self.cap:
            self._count(entry, start_rejected_total=1)
            raise CapExceeded(name, tuple(self.running_models()), self.cap)
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
