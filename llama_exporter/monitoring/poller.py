"""1 Hz reads of every ready llama-server (/metrics then /slots, /props once) + psutil.

``Poller`` runs one task per ready instance on a fixed monotonic schedule, so a
slow instance delays nobody, and puts what it read into the ``MetricsStore``
(store.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from llama_exporter.config.settings import Config
from llama_exporter.monitoring import procstat
from llama_exporter.monitoring.derive import (
    REQUESTS_PROCESSING,
    TOKENS_PREDICTED,
    USED_METRICS,
    ModelDeriver,
    ProcessSample,
    SlotSample,
    parse_metrics,
    parse_slots,
    ratio,
    select_samples,
)
from llama_exporter.monitoring.httpget import GetError, KeepAliveClient
from llama_exporter.monitoring.pollrate import is_idle, read_now
from llama_exporter.monitoring.store import HostSample, MetricsStore
from llama_exporter.states import InstanceStatus, State

log = logging.getLogger(__name__)


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
    idle: bool = False  # the last full read found nothing to do (see pollrate)
    last_read: float = -math.inf  # monotonic time of the last full read
    cpu: float | None = None  # the process's CPU seconds at the last tick
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
        in_flight: Callable[[str], int] | None = None,
    ) -> None:
        """in_flight: requests the gateway has running for a model (read idle ones now)."""
        self._config = config
        self._store = store
        self._in_flight = in_flight
        self._clock = clock
        self._monotonic = monotonic
        self._watches: dict[str, _Watch] = {}
        self._host_task: asyncio.Task[None] | None = None
        self._host_cpu: tuple[float, float] | None = None
        self._cpu_count = os.cpu_count() or 1
        self._closed = False

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: poll.* applies from each instance's next tick."""
        self._config = config
        self._store.resize_history(config.poll.history)

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
            log.info("polling %s (pid %s, port %s)", status.model, status.pid, status.port)
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
            log.info("no longer polling %s (pid %s)", model, watch.status.pid)
            watch.task.cancel()
            watch.client.close()
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
                if self._read_now(watch):
                    watch.last_read = self._monotonic()
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
                watch.idle = False
                self._store.record_error(model, "poll", "internal")
                watch.idle_slots = None  # read /slots again next time
                self._store.discard_latest(model)  # never export stale live values
            now = self._monotonic()
            if interval != (current := max(0.01, self._config.poll.interval)):
                interval, next_at = current, now  # reloaded: the new pace from now on
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
        watch.idle = False  # until a published snapshot says so
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
        watch.cpu = process.cpu_seconds if process is not None else None
        now = self._clock()
        snapshot = deriver.update(values, slots, now, process)
        if self._watches.get(status.model) is None:
            return
        self._store.record_poll(status.model, self._monotonic() - started, now)
        watch.idle = is_idle(snapshot)
        self._store.publish(snapshot)

    def _read_now(self, watch: _Watch) -> bool:
        """This tick's choice (pollrate.read_now), sampling an idle process's CPU time."""
        cpu_used = None
        if watch.idle:
            previous, watch.cpu = watch.cpu, self._cpu_seconds(watch.status.pid)
            if previous is not None and watch.cpu is not None:
                cpu_used = watch.cpu - previous
        poll = self._config.poll
        return read_now(
            idle=watch.idle,
            since_read=self._monotonic() - watch.last_read,
            interval=poll.interval,
            idle_interval=poll.idle_interval,
            cpu_used=cpu_used,
            in_flight=self._in_flight(watch.status.model) if self._in_flight else 0,
        )

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

    def _cpu_seconds(self, pid: int | None) -> float | None:
        """CPU seconds (user + system) of the instance's process, None if unknown."""
        sampled = self._sample_process(pid)
        return sampled.cpu_seconds if sampled is not None else None

    def _sample_process(self, pid: int | None) -> ProcessSample | None:
        """CPU seconds and RSS of the instance's process (None when it cannot be read)."""
        if pid is None:
            return None
        try:
            cpu, rss = procstat.sample(pid)
        except procstat.ProcessGone:
            return None
        return ProcessSample(cpu, rss, self._cpu_count)

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
            if interval != (current := max(0.01, self._config.poll.interval)):
                interval, next_at = current, now  # reloaded: the new pace from now on
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
