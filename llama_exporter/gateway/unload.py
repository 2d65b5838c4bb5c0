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
from llama_exporter.gateway.usage import UseCounts
from llama_exporter.memory.admission import Decision, Verdict
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

    def leaving(self) -> frozenset[str]:
        """Models picked for eviction or idle unload whose stop has not ended."""
        return frozenset(self._evicting)

    def make_room(self, decision: Decision) -> list[str]:
        """With when_full: evict, stop the models admission named for the queue's head.

        Returns the models picked now (not those already on their way out).
        """
        picked: list[str] = []
        if self.config.when_full != "evict" or decision.verdict is not Verdict.EVICT:
            return picked
        for victim in decision.evict:
            if victim not in self._evicting:
                log.info("gateway: evicting %s to make room for the queue", victim)
                self._unload(victim, "evicted")
                picked.append(victim)
        return picked

    async def evict_for(self, model: str, admission: Callable[[str], Decision]) -> None:
        """Make room for an explicit start of model as admission says, and wait for it."""
        decision = admission(model)
        if decision.verdict not in (Verdict.EVICT, Verdict.WAIT):
            return
        for victim in decision.evict:
            log.info("gateway: evicting %s for an explicit start of %s", victim, model)
            self._unload(victim, "evicted")
        going = [t for t in self._unloading.values() if not t.done()]
        stopping = [s.model for s in self._sup.statuses() if s.state is State.STOPPING]
        await asyncio.gather(*going, *(self._sup.wait_settled(n) for n in stopping))

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
