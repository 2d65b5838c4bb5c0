"""Gets a model ready for a request: shared loads, the FIFO queue for the cap, eviction, idle.

The scheduler never changes instance state itself: it asks the Supervisor to start
(trigger "request") and to stop (reason "evicted" or "idle"). What it owns is the
gateway's view of use: requests in flight, last use, and the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llama_exporter.config import GatewayConfig
from llama_exporter.gateway import policy
from llama_exporter.gateway.metrics import RequestMetrics
from llama_exporter.states import COUNTS_AGAINST_CAP, InstanceStatus, ShuttingDown, State
from llama_exporter.supervisor import Supervisor

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
IDLE_CHECK_INTERVAL = 0.5  # seconds between idle checks (a TTL is honoured within this)
LIVE = frozenset({State.STARTING, State.READY})


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


@dataclass(eq=False)
class _Waiter:
    model: str
    since: float
    released: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Lease:
    """A request's hold on a ready model: counted in flight until released."""

    def __init__(self, scheduler: Scheduler, model: str, status: InstanceStatus) -> None:
        self.model = model
        self.status = status  # the ready instance (its base_url and api_key)
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
        self.in_flight: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self._queue: list[_Waiter] = []
        self._load_waiters: dict[str, int] = {}
        self._claims: dict[str, int] = {}  # waiters let go that have not come back yet
        self._requested_loads: set[str] = set()  # loads a request started, not settled yet
        self._evicting: set[str] = set()
        self._unloading: dict[str, asyncio.Task[None]] = {}  # eviction or idle stop, by model
        self._drained: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pumping = False
        self._pump_again = False
        supervisor.subscribe(self._on_status)
        supervisor.set_drain(self.drain)

    # -- reading ---------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Requests waiting for a place under the cap."""
        return len(self._queue)

    def queued(self, model: str) -> int:
        """Requests for model waiting in the queue."""
        return sum(1 for w in self._queue if w.model == model)

    def in_flight_of(self, model: str) -> int:
        """Gateway requests running on model."""
        return self.in_flight.get(model, 0)

    def touch(self, model: str) -> None:
        """Record a use of model now (a gateway request or an explicit start)."""
        self.last_used[model] = self._clock()

    # -- admission -------------------------------------------------------------------

    async def acquire(self, model: str) -> Lease:
        """Wait until model is ready under the cap (loading it if needed) and hold it."""
        self.touch(model)
        deadline: float | None = None
        while True:
            unloading = self._unloading.get(model)
            if unloading is not None and not unloading.done():
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
                return Lease(self, model, status)
            if state is State.STARTING:
                await self._wait_load(model)
            elif state is State.STOPPING:
                await self._sup.wait_settled(model)
            elif state is State.BACKOFF or (  # a BACKOFF model keeps its place: restart it now
                not self._queue and self._sup.running_count < self._sup.cap
            ):
                self._start(model)
            else:
                if self.config.when_full == "reject":
                    self._reject(model, "queue_full")
                    raise self._full_error(model, "the cap is full and gateway.when_full is reject")
                if deadline is None:
                    deadline = self._mono() + self.config.queue_timeout
                await self._wait_in_queue(model, deadline)

    async def start_for_api(self, model: str, *, evict: bool) -> InstanceStatus:
        """An explicit start (counts as use); with evict, make room like a request would."""
        self.touch(model)
        status = self._sup.status(model)
        full = self._sup.running_count >= self._sup.cap
        if evict and full and status.state not in LIVE and status.state is not State.BACKOFF:
            victim = policy.pick_victim(self._residents(), self._evicting)
            if victim is not None:
                log.info("gateway: evicting %s for an explicit start of %s", victim, model)
                self._evicting.add(victim)
                try:
                    await self._sup.stop(victim, reason="evicted")
                finally:
                    self._evicting.discard(victim)
        return await self._sup.start(model, trigger="api")

    def _start(self, model: str) -> None:
        # Marked after launch: the STARTING it publishes pumps the queue, and with the mark
        # the load would look abandoned (its request is not counted as waiting for it yet).
        self._sup.launch(model, trigger="request")
        self._requested_loads.add(model)

    async def _wait_load(self, model: str) -> None:
        began = self._mono()
        self._load_waiters[model] = self._load_waiters.get(model, 0) + 1
        try:
            status = await self._sup.wait_settled(model)
        except asyncio.CancelledError:
            self._reject(model, "cancelled")
            raise
        finally:
            self._load_waiters[model] -= 1
            if self._busy(model) == 0 and model in self._requested_loads:
                self._pump()  # perhaps an abandoned load now: it may make room for the queue
        if self.metrics is not None:
            self.metrics.load_wait.observe((model,), self._mono() - began)
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

    async def _wait_in_queue(self, model: str, deadline: float) -> None:
        if len(self._queue) >= self.config.max_queue:
            self._reject(model, "queue_full")
            raise self._full_error(model, f"the queue is full ({self.config.max_queue} waiting)")
        waiter = _Waiter(model, self._mono())
        self._queue.append(waiter)
        self._pump()
        try:
            async with asyncio.timeout(max(0.0, deadline - self._mono())):
                await asyncio.shield(waiter.released)
        except TimeoutError:
            if waiter.released.done():  # let go just as time ran out: take the place
                self._unclaim(model)
                return
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
                self._unclaim(model)
            self._reject(model, "cancelled")
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
                self._pump()
        self._unclaim(model)
        if self.metrics is not None:
            self.metrics.queue_wait.observe((model,), self._mono() - waiter.since)

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

    # -- the queue ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Let go every waiter that can go now; start or make room for the head's model."""
        if self._pumping:  # a start inside _pump publishes a status that calls _pump again
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        if self._sup.shutting_down:  # nothing loads any more: every waiter is answered now
            self._let_go({w.model for w in self._queue})
            return
        while self._queue:
            # A model deleted while queued: its waiters go, and acquire() raises UnknownModel.
            self._let_go({w.model for w in self._queue if not self._known(w.model)})
            if not self._queue:
                return
            live = {w.model for w in self._queue if self._sup.status(w.model).state in LIVE}
            plan = policy.plan_queue([w.model for w in self._queue], live)
            self._let_go(plan.go)
            if plan.head is None:
                return
            if self._sup.running_count < self._sup.cap:
                try:
                    self._start(plan.head)
                except Exception:
                    log.exception("gateway: starting %s failed", plan.head)
                self._let_go({plan.head})
                continue
            if self.config.when_full == "evict" and not self._evicting:
                victim = policy.pick_victim(self._residents(), self._evicting)
                if victim is not None:
                    self._evict(victim)
            return

    def _let_go(self, models: set[str] | frozenset[str]) -> None:
        if not models:
            return
        keep: list[_Waiter] = []
        for waiter in self._queue:
            if waiter.model in models:
                if not waiter.released.done():
                    waiter.released.set_result(None)
                    self._claims[waiter.model] = self._claims.get(waiter.model, 0) + 1
            else:
                keep.append(waiter)
        self._queue = keep

    def _known(self, model: str) -> bool:
        try:
            self._sup.models.get(model)
        except KeyError:  # UnknownModel is one
            return False
        return True

    def _unclaim(self, model: str) -> None:
        self._claims[model] = max(0, self._claims.get(model, 0) - 1)

    def _busy(self, model: str) -> int:
        """Requests holding, loading, or on their way to model: it must not be evicted."""
        return (
            self.in_flight.get(model, 0)
            + self._load_waiters.get(model, 0)
            + self._claims.get(model, 0)
        )

    def _residents(self) -> list[policy.Resident]:
        residents = []
        for name in self._sup.running_models():
            status = self._sup.status(name)
            if status.state not in LIVE:
                continue
            try:
                pinned = self._sup.models.get(name).pinned
            except KeyError:
                pinned = False
            residents.append(
                policy.Resident(
                    name=name,
                    ready=status.state is State.READY,
                    in_flight=self._busy(name),
                    pinned=pinned,
                    last_used=self.last_used.get(name, status.ready_at or status.since),
                    abandoned=name in self._requested_loads and self._busy(name) == 0,
                )
            )
        return residents

    def _evict(self, victim: str) -> None:
        log.info("gateway: evicting %s to make room for the queue", victim)
        self._unload(victim, "evicted")

    async def _stop(self, model: str, reason: str) -> None:
        try:
            await self._sup.stop(model, reason=reason)
        except Exception:
            log.exception("gateway: stopping %s (%s) failed", model, reason)
        finally:
            self._evicting.discard(model)
            self._unloading.pop(model, None)
            self._pump()

    def _unload(self, model: str, reason: str) -> None:
        """Stop model in a task; until the task ends, acquire() sends nobody to it."""
        self._evicting.add(model)
        task: asyncio.Task[None] = asyncio.ensure_future(self._stop(model, reason))
        self._unloading[model] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_status(self, status: InstanceStatus) -> None:
        if status.state is not State.STARTING:
            self._requested_loads.discard(status.model)
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

    # -- idle unload -------------------------------------------------------------------

    def idle_check(self) -> list[str]:
        """Ask the supervisor to unload every model idle past its TTL; returns their names."""
        now = self._clock()
        usage = []
        for status in self._sup.statuses():
            if status.state is not State.READY or status.model in self._evicting:
                continue
            try:
                model = self._sup.models.get(status.model)
            except KeyError:
                continue
            last = self.last_used.get(status.model, status.ready_at or status.since)
            usage.append(
                policy.Usage(
                    status.model,
                    last,
                    model.idle_ttl,
                    self._busy(status.model),
                    model.pinned,
                )
            )
        idle = policy.idle_models(usage, now)
        for name in idle:
            log.info("gateway: unloading %s (idle)", name)
            self._unload(name, "idle")
        return idle

    async def run_idle_loop(self, interval: float = IDLE_CHECK_INTERVAL) -> None:
        """Check for idle models every interval seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.idle_check()
            except Exception:
                log.exception("gateway: idle check failed")

    async def close(self) -> None:
        """Cancel the scheduler's own stop tasks (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
