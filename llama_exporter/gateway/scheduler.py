"""Gets a model ready for a request: admission (shared loads, waits, the cap), release, drain.

The scheduler never changes instance state itself: it asks the Supervisor to start
(trigger "request"), and its Unloader (unload.py) asks it to stop (reason "evicted" or
"idle"). The queue for the cap is waitqueue.py; the counts of use (requests in flight,
last use) are usage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llama_exporter.config.settings import GatewayConfig
from llama_exporter.gateway.metrics import RequestMetrics
from llama_exporter.gateway.unload import IDLE_CHECK_INTERVAL, Unloader
from llama_exporter.gateway.usage import LIVE, UseCounts
from llama_exporter.gateway.waitqueue import WaitQueue
from llama_exporter.states import COUNTS_AGAINST_CAP, InstanceStatus, ShuttingDown, State
from llama_exporter.supervision.supervisor import Supervisor

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class GatewayError(Exception):
    """A request the gateway answers itself, in OpenAI's error format."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}


@dataclass
class Admission:
    """What admission did for one request, filled in as it goes (kept when it fails too)."""

    queue_wait: float = 0.0  # seconds queued for a place under the cap
    load_wait: float = 0.0  # seconds waiting for the model to load
    triggered_load: bool = False  # this request started the model's load
    evicted: list[str] = field(default_factory=list)  # models stopped to make room for it


class Lease:
    """A request's hold on a ready model: counted in flight until released."""

    def __init__(
        self,
        scheduler: Scheduler,
        model: str,
        status: InstanceStatus,
        *,
        queue_wait: float = 0.0,
        load_wait: float = 0.0,
    ) -> None:
        self.model = model
        self.status = status  # the ready instance (its base_url and api_key)
        self.queue_wait = queue_wait  # seconds queued for a place under the cap
        self.load_wait = load_wait  # seconds waiting for the model to load
        self._scheduler = scheduler
        self._open = True

    def release(self) -> None:
        """The request is over (idempotent)."""
        if self._open:
            self._open = False
            self._scheduler._release(self.model)


class Scheduler:
    """Admission for gateway requests: load on demand, queue when full, evict, unload idle."""

    def __init__(
        self,
        supervisor: Supervisor,
        config: GatewayConfig,
        metrics: RequestMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sup = supervisor
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._mono = monotonic
        self._usage = UseCounts(clock)
        # The counts' own dicts, not copies: the routes and the poller read them.
        self.in_flight = self._usage.in_flight
        self.last_used = self._usage.last_used
        self._unloader = Unloader(supervisor, config, self._usage, stopped=self._pump, clock=clock)
        self._queue = WaitQueue(
            supervisor, self._usage, start=self._start, make_room=self._unloader.make_room
        )
        self._drained: dict[str, asyncio.Event] = {}
        supervisor.subscribe(self._on_status)
        supervisor.set_drain(self.drain)

    def reconfigure(self, config: GatewayConfig) -> None:
        """A reloaded gateway section; the queue moves at once if the cap was raised."""
        self.config = self._unloader.config = config
        self._pump()

    # -- reading ---------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Requests waiting for a place under the cap."""
        return len(self._queue)

    def queued(self, model: str) -> int:
        """Requests for model waiting in the queue."""
        return self._queue.queued(model)

    def in_flight_of(self, model: str) -> int:
        """Gateway requests running on model."""
        return self.in_flight.get(model, 0)

    def touch(self, model: str) -> None:
        """Record a use of model now (a gateway request or an explicit start)."""
        self._usage.touch(model)

    # -- admission -------------------------------------------------------------------

    async def acquire(self, model: str, admission: Admission | None = None) -> Lease:
        """Wait until model is ready under the cap (loading it if needed) and hold it.

        admission, when given, is filled in with the waits, the load and the evictions.
        """
        note = admission if admission is not None else Admission()
        self.touch(model)
        deadline: float | None = None
        # Seconds queued and waiting for a load, observed for every admitted request (0 when
        # it did not wait), like vLLM's request_queue_time_seconds: the panels show the
        # distribution in normal use, not "No data".
        queued = loading = 0.0
        while True:
            unloading = self._unloader.unloading(model)
            if unloading is not None:
                # Picked for eviction or idle unload, its stop perhaps not begun (still
                # READY): a request must not run on it. Wait until it is gone, then load it.
                await asyncio.wait({unloading})
                continue
            if self._sup.shutting_down:
                raise ShuttingDown("the service is shutting down")
            status = self._sup.status(model)
            state = status.state
            if state is State.READY:
                self.in_flight[model] = self.in_flight.get(model, 0) + 1
                self.touch(model)
                if self.metrics is not None:
                    self.metrics.queue_wait.observe((model,), queued)
                    self.metrics.load_wait.observe((model,), loading)
                note.queue_wait, note.load_wait = queued, loading  # the figures observed
                return Lease(self, model, status, queue_wait=queued, load_wait=loading)
            if state is State.STARTING or (
                state is State.STOPPING and self._sup.restarting(model)
            ):  # a reload's restart is waited on like a load: it ends with the new instance
                loading += await self._wait_load(model, note)
            elif state is State.STOPPING:
                await self._sup.wait_settled(model)
            elif state is State.BACKOFF or (  # a BACKOFF model keeps its place: restart it now
                not self._queue and self._sup.running_count < self._sup.cap
            ):
                self._start(model)
                note.triggered_load = True
            else:
                if self.config.when_full == "reject":
                    self._reject(model, "queue_full")
                    raise self._full_error(model, "the cap is full and gateway.when_full is reject")
                if deadline is None:
                    deadline = self._mono() + self.config.queue_timeout
                queued += await self._wait_in_queue(model, deadline, note)

    async def start_for_api(self, model: str, *, evict: bool) -> InstanceStatus:
        """An explicit start (counts as use); with evict, make room like a request would."""
        self.touch(model)
        status = self._sup.status(model)
        full = self._sup.running_count >= self._sup.cap
        if evict and full and status.state not in LIVE and status.state is not State.BACKOFF:
            await self._unloader.evict_for(model)
        return await self._sup.start(model, trigger="api")

    def _start(self, model: str) -> None:
        # Marked after launch: the STARTING it publishes pumps the queue, and with the mark
        # the load would look abandoned (its request is not counted as waiting for it yet).
        self._sup.launch(model, trigger="request")
        self._usage.requested_loads.add(model)

    async def _wait_load(self, model: str, note: Admission) -> float:
        """Wait for model's load to end; returns the seconds waited (raises if it failed)."""
        began = self._mono()
        waited_before = note.load_wait
        waiters = self._usage.load_waiters
        waiters[model] = waiters.get(model, 0) + 1
        try:
            status = await self._sup.wait_settled(model)
        except asyncio.CancelledError:
            self._reject(model, "cancelled")
            raise
        finally:
            waiters[model] -= 1
            note.load_wait = waited_before + self._mono() - began
            if self._usage.abandoned(model):
                self._pump()  # perhaps an abandoned load now: it may make room for the queue
        waited = self._mono() - began
        if status.state is State.FAILED:
            raise GatewayError(
                503,
                f"model {model!r} failed to load: {status.last_error or 'unknown reason'}",
                "server_error",
                "model_load_failed",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if status.state is State.STOPPED:
            if self._sup.shutting_down:
                raise ShuttingDown("the service is shutting down")
            raise GatewayError(
                503,
                f"model {model!r} was stopped while loading; send the request again",
                "server_error",
                "model_stopped",
                headers={"Retry-After": "1"},
            )
        return waited

    async def _wait_in_queue(self, model: str, deadline: float, note: Admission) -> float:
        """Wait for a place under the cap; returns the seconds waited."""
        if len(self._queue) >= self.config.max_queue:
            self._reject(model, "queue_full")
            raise self._full_error(model, f"the queue is full ({self.config.max_queue} waiting)")
        waiter = self._queue.join(model, self._mono())
        try:
            async with asyncio.timeout(max(0.0, deadline - self._mono())):
                await asyncio.shield(waiter.released)
        except TimeoutError:
            if waiter.released.done():  # let go just as time ran out: take the place
                self._usage.unclaim(model)
                return self._mono() - waiter.since
            self._reject(model, "timeout")
            raise GatewayError(
                503,
                f"model {model!r} waited {self.config.queue_timeout:g} s for a place under the "
                f"cap ({self._sup.cap} models, all busy or pinned): try again later, or raise "
                "max_parallel or gateway.queue_timeout",
                "server_error",
                "queue_timeout",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except asyncio.CancelledError:
            if waiter.released.done():
                self._usage.unclaim(model)
            self._reject(model, "cancelled")
            raise
        finally:
            self._queue.leave(waiter)
            note.queue_wait += self._mono() - waiter.since  # (the exact figure on admission)
            # The queue credits the head with the load it started and what it evicted.
            note.triggered_load = note.triggered_load or waiter.triggered_load
            note.evicted += waiter.evicted
        self._usage.unclaim(model)
        return self._mono() - waiter.since

    def _reject(self, model: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.inc((model, reason))

    def _full_error(self, model: str, why: str) -> GatewayError:
        running = ", ".join(self._sup.running_models())
        return GatewayError(
            429,
            f"cannot load model {model!r}: {why}; running: {running} (cap {self._sup.cap})",
            "rate_limit_error",
            "queue_full",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    # -- the queue (waitqueue.py) -------------------------------------------------------

    def _pump(self) -> None:
        self._queue.pump()

    def _on_status(self, status: InstanceStatus) -> None:
        if status.state is not State.STARTING:
            self._usage.requested_loads.discard(status.model)
        if status.state is State.READY and status.model not in self.last_used:
            self.last_used[status.model] = status.ready_at or self._clock()
        if (
            status.state not in COUNTS_AGAINST_CAP
            or status.state in LIVE
            or self._sup.shutting_down  # the first stop of a shutdown answers the queue
        ):
            self._pump()

    # -- release and drain ---------------------------------------------------------------

    def _release(self, model: str) -> None:
        left = self.in_flight.get(model, 0) - 1
        self.in_flight[model] = max(0, left)
        self.touch(model)
        if left <= 0:
            event = self._drained.pop(model, None)
            if event is not None:
                event.set()
            if self._queue:
                self._pump()

    async def drain(self, model: str, seconds: float, reason: str) -> None:
        """Wait up to seconds for model's requests in flight (the supervisor's stop calls it)."""
        if self.in_flight.get(model, 0) == 0:
            return
        event = self._drained.setdefault(model, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
        left = self.in_flight.get(model, 0)
        if left and self.metrics is not None:
            log.warning(
                "gateway: %s stopped (%s) with %d requests still running", model, reason, left
            )
            self.metrics.cut_off.inc((model, reason), left)

    # -- unloading (unload.py) ---------------------------------------------------------

    def idle_check(self) -> list[str]:
        """Ask the supervisor to unload every model idle past its TTL; returns their names."""
        return self._unloader.idle_check()

    async def run_idle_loop(self, interval: float = IDLE_CHECK_INTERVAL) -> None:
        """Check for idle models every interval seconds until cancelled."""
        await self._unloader.run_idle_loop(interval)

    async def close(self) -> None:
        """Cancel the scheduler's own stop tasks (at shutdown)."""
        await self._unloader.close()
