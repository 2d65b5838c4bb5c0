"""The FIFO queue of requests waiting for a place under the cap, and its pump.

The pump follows policy.plan_queue: waiters for a loaded or loading model go at once,
the head's model is started when there is room, else the scheduler is asked to make
room. Starting and evicting are the caller's (given as functions): the queue itself
changes no instance state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from llama_exporter.gateway import policy
from llama_exporter.gateway.usage import LIVE, UseCounts
from llama_exporter.supervision.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Waiter:
    """One queued request: its model, when it joined, and the future that lets it go."""

    model: str
    since: float
    triggered_load: bool = False  # the queue started its model's load for it
    evicted: list[str] = field(default_factory=list)  # models evicted while it was the head
    released: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WaitQueue:
    """Requests for models that need a place under the cap, oldest first."""

    def __init__(
        self,
        supervisor: Supervisor,
        usage: UseCounts,
        *,
        start: Callable[[str], None],
        make_room: Callable[[], str | None],
    ) -> None:
        self._sup = supervisor
        self._usage = usage
        self._start = start
        self._make_room = make_room
        self._waiters: list[Waiter] = []
        self._pumping = False
        self._pump_again = False

    def __len__(self) -> int:
        return len(self._waiters)

    def queued(self, model: str) -> int:
        """Requests for model waiting in the queue."""
        return sum(1 for w in self._waiters if w.model == model)

    def join(self, model: str, now: float) -> Waiter:
        """Queue a request for model at the end, then pump (it may go at once)."""
        waiter = Waiter(model, now)
        self._waiters.append(waiter)
        self.pump()
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Take out a waiter that gave up before it was let go."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self.pump()

    def pump(self) -> None:
        """Let go every waiter that can go now; start or make room for the head's model."""
        if self._pumping:  # a start inside pump publishes a status that calls pump again
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
            self._let_go({w.model for w in self._waiters})
            return
        while self._waiters:
            # A model deleted while queued: its waiters go, and acquire() raises UnknownModel.
            self._let_go({w.model for w in self._waiters if not self._known(w.model)})
            if not self._waiters:
                return
            live = {w.model for w in self._waiters if self._sup.status(w.model).state in LIVE}
            plan = policy.plan_queue([w.model for w in self._waiters], live)
            self._let_go(plan.go)
            if plan.head is None:
                return
            head = next(w for w in self._waiters if w.model == plan.head)
            if self._sup.running_count < self._sup.cap:
                try:
                    self._start(plan.head)
                    head.triggered_load = True
                except Exception:
                    log.exception("gateway: starting %s failed", plan.head)
                self._let_go({plan.head})
                continue
            victim = self._make_room()
            if victim is not None:
                head.evicted.append(victim)
            return

    def _let_go(self, models: Collection[str]) -> None:
        if not models:
            return
        keep: list[Waiter] = []
        for waiter in self._waiters:
            if waiter.model in models:
                if not waiter.released.done():
                    waiter.released.set_result(None)
                    self._usage.claim(waiter.model)
            else:
                keep.append(waiter)
        self._waiters = keep

    def _known(self, model: str) -> bool:
        try:
            self._sup.models.get(model)
        except KeyError:  # UnknownModel is one
            return False
        return True
