"""1 Hz reads of every ready llama-server (/metrics then /slots, /props once) + psutil.

``MetricsStore`` holds what was read: the latest snapshot and a short history per
model, poll errors, and the host's CPU and memory. ``Poller`` runs one task per
ready instance on a fixed monotonic schedule, so a slow instance delays nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from llama_exporter.config import Config
from llama_exporter.derive import (
    REQUESTS_PROCESSING,
    TOKENS_PREDICTED,
    USED_METRICS,
    ModelDeriver,
    ModelSnapshot,
    ProcessSample,
    SlotSample,
    TokenCounter,
    parse_metrics,
    parse_slots,
    ratio,
    select_samples,
)
from llama_exporter.httpget import GetError, KeepAliveClient
from llama_exporter.states import InstanceStatus, State

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


class _ReadError(Exception):
    """A failed read; ``reason`` becomes the poll_errors_total label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Watch:
    status: InstanceStatus
    task: asyncio.Task[None]
    client: KeepAliveClient  # one kept-alive connection per instance
    idle_slots: list[SlotSample] | None = None  # last /slots read, if no slot was processing
    metrics: tuple[str, dict[str, float]] = ("", {})  # last used /metrics lines, parsed


def host_cpu_ratio(previous: tuple[float, float] | None, current: tuple[float, float]) -> float:
    """Host CPU busy share from two (busy seconds, total seconds) readings of all CPUs."""
    if previous is None:
        return 0.0
    return ratio(current[0] - previous[0], current[1] - previous[1])


class Poller:
    """Polls every ready instance once per interval; fed by the supervisor's status events."""

    def __init__(
        self,
        config: Config,
        store: MetricsStore,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._watches: dict[str, _Watch] = {}
        self._processes: dict[int, psutil.Process] = {}
        self._host_task: asyncio.Task[None] | None = None
        self._host_cpu: tuple[float, float] | None = None
        self._cpu_count = os.cpu_count() or 1
        self._closed = False

    def polling(self) -> list[str]:
        """Models being polled now, sorted."""
        return sorted(self._watches)

    def start(self) -> None:
        """Start sampling the host (needs a running loop; on_status calls it too)."""
        if self._host_task is None and not self._closed:
            self._host_task = asyncio.get_running_loop().create_task(self._host_loop())

    def on_status(self, status: InstanceStatus) -> None:
        """Supervisor listener: poll an instance while it is ready, drop it when it leaves."""
        if self._closed:
            return
        current = self._watches.get(status.model)
        if status.state is State.READY and status.port is not None:
            if current is not None and _same_process(current.status, status):
                current.status = status
                return
            self._forget(status.model)
            self.start()
            task = asyncio.get_running_loop().create_task(self._run(status))
            client = KeepAliveClient(status.host, status.port)
            self._watches[status.model] = _Watch(status, task, client)
        elif status.state is not State.READY:
            self._forget(status.model)

    async def close(self) -> None:
        """Stop every task and close their connections."""
        self._closed = True
        tasks = [w.task for w in self._watches.values()]
        if self._host_task is not None:
            tasks.append(self._host_task)
        for model in list(self._watches):
            self._forget(model)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, model: str) -> None:
        watch = self._watches.pop(model, None)
        if watch is not None:
            watch.task.cancel()
            watch.client.close()
            if watch.status.pid is not None:
                self._processes.pop(watch.status.pid, None)
        self._store.drop(model)

    async def _run(self, status: InstanceStatus) -> None:
        """One instance's loop on a fixed schedule (missed ticks are skipped, not queued)."""
        model = status.model
        generated, prompt = self._store.token_counters(model)
        deriver = ModelDeriver(model, generated, prompt, pid=status.pid)
        deriver.begin_process()
        interval = max(0.01, self._config.poll.interval)
        have_props = False
        failing = False  # the previous tick raised: log a repeat at debug level only
        next_at = self._monotonic()
        while True:
            watch = self._watches.get(model)
            if watch is None or watch.task is not asyncio.current_task():
                return
            try:
                if not have_props:
                    have_props = await self._read_props(watch)
                await self._poll_once(watch, deriver)
                failing = False
            except Exception:  # a bug must not end polling (CancelledError is not caught)
                log.log(
                    logging.DEBUG if failing else logging.ERROR,
                    "model %s: poll failed unexpectedly; polling again at the next tick",
                    model,
                    exc_info=True,
                )
                failing = True
                self._store.record_error(model, "poll", "internal")
                watch.idle_slots = None  # read /slots again next time
                self._store.discard_latest(model)  # never export stale live values
            now = self._monotonic()
            next_at += interval
            if next_at <= now:  # fell behind: skip to the next tick in the future
                next_at += math.ceil((now - next_at) / interval + 1e-9) * interval
            await asyncio.sleep(next_at - now)

    async def _read_props(self, watch: _Watch) -> bool:
        status = watch.status
        try:
            body = await self._get(watch, "props")
            props = json.loads(body)
            if not isinstance(props, dict):
                raise _ReadError("parse")
        except _ReadError as exc:
            self._store.record_error(status.model, "props", exc.reason)
            return False
        except ValueError:
            self._store.record_error(status.model, "props", "parse")
            return False
        self._store.set_props(status.model, props)
        return True

    async def _poll_once(self, watch: _Watch, deriver: ModelDeriver) -> None:
        """/metrics first, then /slots (see TokenCounter), then psutil; publish if both read."""
        status = watch.status
        started = self._monotonic()
        values: dict[str, float] | None = None
        slots: list[SlotSample] | None = None
        try:
            body = await self._get(watch, "metrics")
            samples = select_samples(body.decode(), USED_METRICS)
            if samples != watch.metrics[0]:  # unchanged (often, even busy): parsed already
                parsed = parse_metrics(samples)
                if TOKENS_PREDICTED not in parsed:  # 0 would look like a restarted process
                    raise ValueError(f"no {TOKENS_PREDICTED} in /metrics")
                watch.metrics = (samples, parsed)
            values = watch.metrics[1]
        except _ReadError as exc:
            self._store.record_error(status.model, "metrics", exc.reason)
            if exc.reason in ("timeout", "connect"):
                return  # unreachable: do not spend another timeout on /slots
        except ValueError:
            self._store.record_error(status.model, "metrics", "parse")
        if (
            watch.idle_slots is not None
            and values is not None
            and (values.get(REQUESTS_PROCESSING) == 0.0)
        ):
            # Idle before and /metrics (read first) says no slot is processing: nothing is
            # in flight, so /slots would say what it said last time. Halves an idle poll.
            slots = watch.idle_slots
        else:
            try:
                slots = parse_slots(json.loads(await self._get(watch, "slots")))
            except _ReadError as exc:
                self._store.record_error(status.model, "slots", exc.reason)
            except ValueError:
                self._store.record_error(status.model, "slots", "parse")
            if slots is not None:
                watch.idle_slots = None if any(s.processing for s in slots) else slots
        if values is None or slots is None:
            return
        process = self._sample_process(status.pid)
        now = self._clock()
        snapshot = deriver.update(values, slots, now, process)
        if self._watches.get(status.model) is None:
            return
        self._store.record_poll(status.model, self._monotonic() - started, now)
        self._store.publish(snapshot)

    async def _get(self, watch: _Watch, endpoint: str) -> bytes:
        """GET /endpoint of the instance; raise _ReadError(timeout|connect|parse|http_<status>)."""
        api_key = watch.status.api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            async with asyncio.timeout(self._config.poll.timeout):
                response = await watch.client.get(f"/{endpoint}", headers)
        except TimeoutError as exc:
            raise _ReadError("timeout") from exc
        except GetError as exc:
            raise _ReadError(exc.reason) from exc
        if response.status != 200:
            raise _ReadError(f"http_{response.status}")
        return response.body

    def _sample_process(self, pid: int | None) -> ProcessSample | None:
        """CPU seconds and RSS of the instance's process (None when it cannot be read)."""
        if pid is None:
            return None
        try:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            with process.oneshot():
                cpu = process.cpu_times()
                rss = process.memory_info().rss
        except (psutil.Error, OSError):
            self._processes.pop(pid, None)
            return None
        return ProcessSample(cpu.user + cpu.system, rss, self._cpu_count)

    async def _host_loop(self) -> None:
        interval = max(0.01, self._config.poll.interval)
        next_at = self._monotonic()
        failing = False  # the previous tick raised: log a repeat at debug level only
        while True:
            try:
                self._store.asyncio_tasks = len(asyncio.all_tasks())
                self.sample_host()
                failing = False
            except Exception:  # a bug must not freeze the host gauges for good
                log.log(
                    logging.DEBUG if failing else logging.ERROR,
                    "host sample failed unexpectedly; sampling again at the next tick",
                    exc_info=True,
                )
                failing = True
                self._store.host_errors += 1
            now = self._monotonic()
            next_at += interval
            if next_at <= now:
                next_at += math.ceil((now - next_at) / interval + 1e-9) * interval
            await asyncio.sleep(next_at - now)

    def sample_host(self) -> None:
        """Read host CPU and memory into the store."""
        try:
            times = psutil.cpu_times()
            memory = psutil.virtual_memory()
        except (psutil.Error, OSError):
            log.exception("cannot read host CPU or memory")
            self._store.host_errors += 1
            return
        idle = times.idle + getattr(times, "iowait", 0.0)
        # guest time is already part of user time on Linux
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        current = (total - idle, total)
        cpu = host_cpu_ratio(self._host_cpu, current)
        self._host_cpu = current
        used = memory.total - memory.available
        self._store.host = HostSample(cpu, int(memory.total), int(used))


def _same_process(old: InstanceStatus, new: InstanceStatus) -> bool:
    return (old.pid, old.host, old.port) == (new.pid, new.host, new.port)
