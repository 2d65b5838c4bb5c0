"""Unloading for the gateway: eviction to make room, and idle models past their TTL.

Which model goes is policy.py's (pure); the stop itself is the Supervisor's
(reason "evicted" or "idle"). What this module owns is which models are being
unloaded, so that admission sends no request to them until their stop ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from llama_exporter.config.settings import GatewayConfig
from llama_exporter.gateway import policy
from llama_exporter.gateway.usage import LIVE, UseCounts
from llama_exporter.states import State
from llama_exporter.supervision.supervisor import Supervisor

log = logging.getLogger(__name__)

IDLE_CHECK_INTERVAL = 0.5  # seconds between idle checks (a TTL is honoured within this)


class Unloader:
    """Asks the Supervisor to stop models: evicted for the queue or an explicit start, or idle."""

    def __init__(
        self,
        supervisor: Supervisor,
        config: GatewayConfig,
        usage: UseCounts,
        *,
        stopped: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._sup = supervisor
        self.config = config
        self._usage = usage
        self._stopped = stopped  # called after every stop of ours (the queue may go on)
        self._clock = clock
        self._evicting: set[str] = set()
        self._unloading: dict[str, asyncio.Task[None]] = {}  # eviction or idle stop, by model
        self._tasks: set[asyncio.Task[None]] = set()

    def unloading(self, model: str) -> asyncio.Task[None] | None:
        """The stop of model picked for eviction or idle unload, while it has not ended."""
        task = self._unloading.get(model)
        return None if task is None or task.done() else task

    def residents(self) -> list[policy.Resident]:
        """The models holding a place under the cap, as the eviction policy sees them."""
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
                    in_flight=self._usage.busy(name),
                    pinned=pinned,
                    last_used=self._usage.last_use(status),
                    abandoned=self._usage.abandoned(name),
                )
            )
        return residents

    def make_room(self) -> str | None:
        """With when_full: evict, start evicting one model for the queue (one at a time).

        Returns the model picked, if any.
        """
        if self.config.when_full == "evict" and not self._evicting:
            victim = policy.pick_victim(self.residents(), self._evicting)
            if victim is not None:
                log.info("gateway: evicting %s to make room for the queue", victim)
                self._unload(victim, "evicted")
                return victim
        return None

    async def evict_for(self, model: str) -> None:
        """Evict one model (if any may go) for an explicit start of model, and wait for it."""
        victim = policy.pick_victim(self.residents(), self._evicting)
        if victim is None:
            return
        log.info("gateway: evicting %s for an explicit start of %s", victim, model)
        self._evicting.add(victim)
        try:
            await self._sup.stop(victim, reason="evicted")
        finally:
            self._evicting.discard(victim)

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
            usage.append(
                policy.Usage(
                    status.model,
                    self._usage.last_use(status),
                    model.idle_ttl,
                    self._usage.busy(status.model),
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
        """Cancel the stop tasks still running (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _unload(self, model: str, reason: str) -> None:
        """Stop model in a task; until the task ends, unloading(model) returns it."""
        self._evicting.add(model)
        task: asyncio.Task[None] = asyncio.ensure_future(self._stop(model, reason))
        self._unloading[model] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(self, model: str, reason: str) -> None:
        try:
            await self._sup.stop(model, reason=reason)
        except Exception:
            log.exception("gateway: stopping %s (%s) failed", model, reason)
        finally:
            self._evicting.discard(model)
            self._unloading.pop(model, None)
            self._stopped()
