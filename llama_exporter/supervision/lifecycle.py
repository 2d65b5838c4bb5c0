"""The life of one instance: pick a port, spawn, wait ready, watch, restart with back-off.

``Lifecycle`` runs each instance's life task for the Supervisor. It changes an
instance's status only through the Supervisor's ``set_state`` (the one writer), and
keeps the OS side: ports, log files, and the record of children in instances.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_exporter.config.settings import Config, ModelConfig, RestartPolicy
from llama_exporter.memory.figure import MemoryFigure
from llama_exporter.states import (
    TRANSITIONS,
    InstanceCounters,
    InstanceStatus,
    State,
    backoff_delay,
)
from llama_exporter.supervision.instance_key import InstanceKey
from llama_exporter.supervision.oom import is_out_of_memory
from llama_exporter.supervision.orphans import InstanceRecord, InstancesFile
from llama_exporter.supervision.process import (
    Instance,
    LlamaProcess,
    SpawnFn,
    StartError,
    hang_watch,
    port_bindable,
)

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL = 1.0  # seconds between /health probes of a ready instance
BIND_RETRIES = 3

SetState = Callable[..., InstanceStatus]  # instances.Instances._set_state(entry, state, **fields)
Count = Callable[..., None]  # instances.Instances._count(entry, **delta)


@dataclass
class Entry:
    """What the Supervisor tracks of one model: status, counters, process, life task."""

    status: InstanceStatus
    counters: InstanceCounters = dataclasses.field(default_factory=InstanceCounters)
    proc: Instance | None = None
    last_proc: Instance | None = None
    task: asyncio.Task[None] | None = None
    launched: ModelConfig | None = None  # the settings the current process was started with
    stop_asked: bool = False  # a stop() came during a restart's STOPPING: do not start again
    restarting: bool = False  # Supervisor.restart() is stopping it to start it again
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    loads: dict[str, int] = dataclasses.field(default_factory=dict)  # by trigger
    unloads: dict[str, int] = dataclasses.field(default_factory=dict)  # by reason
    figure: MemoryFigure | None = None  # what admission reserved for the current run


def restart_delay(
    policy: RestartPolicy, status: InstanceStatus, now: float
) -> tuple[float | None, int]:
    """(seconds before the next restart or None for FAILED, retries so far) after an end.

    A run that stayed ready for policy.stable_after seconds starts the count afresh.
    """
    retries = status.retries
    if status.ready_at is not None and now - status.ready_at >= policy.stable_after:
        retries = 0
    if not policy.enabled or retries >= policy.max_retries:
        return None, retries
    return backoff_delay(retries, policy.backoff_initial, policy.backoff_max), retries


LoadedFn = Callable[[ModelConfig, list[str]], Awaitable[None]]


class Lifecycle:
    """Runs every instance's life task; each status change goes through set_state."""

    def __init__(
        self,
        config: Config,
        entries: Mapping[str, Entry],
        *,
        set_state: SetState,
        count: Count,
        spawn: SpawnFn | None,
        observe_start_duration: Callable[[str, float], None] | None,
        clock: Callable[[], float],
        instance_host: str,
        watchdog_interval: float,
        on_oom: Callable[[ModelConfig], Awaitable[None]] | None = None,
        instance_key: InstanceKey | None = None,
        on_loaded: LoadedFn | None = None,
    ) -> None:
        self.config = config
        self._on_oom = on_oom
        self._on_loaded = on_loaded  # told each load's memory lines (memory learning)
        self._loaded_tasks: set[asyncio.Task[None]] = set()
        self._entries = entries  # the Supervisor's, read here
        self._set_state = set_state
        self._count = count
        self._spawn: SpawnFn = spawn or self._spawn_llama_server
        self._observe = observe_start_duration
        self._clock = clock
        self._host = instance_host
        self._watchdog_interval = watchdog_interval
        self.instance_key = instance_key  # every instance requires it (None: no key)
        self._port_cursor = 0
        self.instances = InstancesFile(config.state_dir / "instances.json")

    async def _spawn_llama_server(
        self, binary: Path, model: ModelConfig, host: str, port: int, log_file: Path
    ) -> Instance:
        return await LlamaProcess.spawn(
            binary,
            model,
            host,
            port,
            log_file,
            log_max_bytes=self.config.log_max_bytes,
            instance_key=self.instance_key,
        )

    async def run(self, entry: Entry, model: ModelConfig, automatic: bool) -> None:
        """The instance's life task; a bug in it fails the instance instead of freezing it."""
        try:
            await self._life(entry, model, automatic)
        except Exception as exc:
            log.exception("%s: supervisor error", model.name)
            if State.FAILED in TRANSITIONS[entry.status.state]:
                if entry.proc is not None:
                    entry.proc.kill()
                self._set_state(entry, State.FAILED, last_error=f"internal error: {exc!r}")

    async def _life(self, entry: Entry, model: ModelConfig, automatic: bool) -> None:
        """Launch, then watch until a crash or hang; restart per policy. Cancelled by stop()."""
        while True:
            reason = await self._bring_up(entry, model)
            if reason is not None:
                self._count(entry, start_failures_total=1)
            else:
                reason = await self._watch(entry)
                if entry.status.state is State.STOPPING:
                    return  # it ended while stop() let requests drain: stop() finishes
            delay, retries = None, entry.status.retries
            if is_out_of_memory(reason):
                # The same settings would fail the same way: no retry; the next start is
                # admitted against a larger figure.
                if self._on_oom is not None:
                    await self._on_oom(model)
            elif automatic or entry.status.ready_at:
                delay, retries = restart_delay(self.config.restart, entry.status, self._clock())
            gone: dict[str, Any] = {"last_error": reason, "pid": None, "port": None}
            if delay is None:
                log.error("%s: %s", model.name, reason)
                self._set_state(entry, State.FAILED, ready_at=None, retries=retries, **gone)
                return
            retry_at = self._clock() + delay
            log.warning("%s: %s; restarting in %g s", model.name, reason, delay)
            self._set_state(
                entry,
                State.BACKOFF,
                next_retry_at=retry_at,
                ready_at=None,
                retries=retries,
                **gone,
            )
            await asyncio.sleep(delay)
            automatic = True
            self._count(entry, restarts_total=1)
            entry.loads["restart"] = entry.loads.get("restart", 0) + 1
            self._set_state(
                entry,
                State.STARTING,
                next_retry_at=None,
                retries=entry.status.retries + 1,
                restarts=entry.status.restarts + 1,
            )

    async def _bring_up(self, entry: Entry, model: ModelConfig) -> str | None:
        """Spawn and wait for /health 200; None when READY, else the failure reason."""
        reason = "no free port"
        for _ in range(BIND_RETRIES):
            port = self._pick_port(entry)
            if port is None:
                first, last = self.config.ports.first, self.config.ports.last
                reason = f"no free port in {first}-{last}: widen ports or stop other services"
                break
            begun = time.monotonic()
            self._set_state(entry, State.STARTING, port=port, ready_at=None)
            spawning = asyncio.ensure_future(
                self._spawn(
                    self.config.llama_server, model, self._host, port, self.log_path(model.name)
                )
            )
            try:
                proc = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    entry.proc = await spawning  # stop() will stop it
                raise
            except OSError as exc:
                reason = (
                    f"cannot start {self.config.llama_server}: {exc} (check llama_server in the "
                    f"config, and that {self.config.log_dir} is writable)"
                )
                break
            entry.proc = entry.last_proc = proc
            self._set_state(entry, State.STARTING, pid=proc.pid, started_at=self._clock())
            self.persist()
            try:
                await proc.wait_ready(self.config.ready_timeout)
            except StartError as exc:
                reason = exc.reason
                proc.kill()
                await proc.wait()
                self.forget_proc(entry)
                lowered = reason.lower()
                if "couldn't bind" in lowered or "address already in use" in lowered:
                    continue  # another program took the port after our bind test
                break
            if self._observe is not None:
                self._observe(model.name, time.monotonic() - begun)
            self._set_state(entry, State.READY, ready_at=self._clock(), last_error=None)
            if self._on_loaded is not None:
                # off the start's path: learning writes a file (in a thread) and must
                # never delay READY or fail the instance
                task = asyncio.create_task(self._loaded(model, proc.load_lines()))
                self._loaded_tasks.add(task)
                task.add_done_callback(self._loaded_tasks.discard)
            return None
        return reason

    async def _loaded(self, model: ModelConfig, lines: list[str]) -> None:
        assert self._on_loaded is not None
        try:
            await self._on_loaded(model, lines)
        except Exception:
            log.exception("%s: cannot record the load's memory figure", model.name)

    async def _watch(self, entry: Entry) -> str:
        """Wait for the ready process to exit or hang; kill and reap it; return the reason."""
        proc = entry.proc
        assert proc is not None
        exited = asyncio.ensure_future(proc.wait())
        # The limit is read at every probe: a reload's hang_timeout applies to running ones.
        limit, every = (lambda: self.config.hang_timeout), self._watchdog_interval
        hung = asyncio.ensure_future(hang_watch(proc.health, limit, every))
        try:
            done, _ = await asyncio.wait({exited, hung}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung.cancel()
            exited.cancel()
        if exited in done:
            reason = await proc.describe_exit(during_load=False)
        else:
            reason = hung.result()
            proc.kill()
            await proc.wait()
        self.forget_proc(entry)
        return reason

    # --- ports, logs, instances.json ------------------------------------------------

    def _pick_port(self, entry: Entry) -> int | None:
        ports = self.config.ports
        used = {e.status.port for e in self._entries.values() if e is not entry}
        for i in range(ports.size):
            port = ports.first + (self._port_cursor + i) % ports.size
            if port not in used and port_bindable(self._host, port):
                self._port_cursor = (port - ports.first + 1) % ports.size
                return port
        return None

    def log_path(self, name: str) -> Path:
        """The model's llama-server log file (all runs; rotated to <log>.1)."""
        return self.config.log_dir / f"{name.replace('/', '_')}.log"

    def forget_proc(self, entry: Entry) -> None:
        """The entry's process is gone: drop it and its record in instances.json."""
        entry.proc = None
        self.persist()

    def persist(self) -> None:
        """Record the children still running in instances.json (written off the loop)."""
        self.instances.update(
            InstanceRecord(name, e.proc.pid, e.proc.create_time, e.proc.port)
            for name, e in self._entries.items()
            if e.proc is not None and e.proc.returncode is None
        )
