"""Pure gateway policy: who is next in the queue, which models are idle.

Which models to evict is admission's (memory.admission), asked through the Supervisor.

Everything here takes plain values and the time; nothing awaits or reads a clock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueuePlan:
    """What to do with the queue now: which waiters may go, which model needs a place next."""

    go: frozenset[str]  # models whose waiters can proceed without a new place under the cap
    head: str | None  # the first queued model that still needs a place, if any


def plan_queue(waiting: Sequence[str], live: Collection[str]) -> QueuePlan:
    """Plan for a FIFO queue of model names, given the models loaded or loading.

    Waiters for a live model go at once, wherever they stand. The head is the model of
    the oldest remaining waiter; every waiter for it goes when it gets a place, so the
    order A A B A loads A once.
    """
    go = frozenset(m for m in waiting if m in live)
    head = next((m for m in waiting if m not in live), None)
    return QueuePlan(go, head)


@dataclass(frozen=True)
class Usage:
    """A ready model, as the idle policy sees it."""

    name: str
    last_used: float  # unix time of its last request or explicit start (or ready time)
    idle_ttl: float  # seconds; 0 = never unload
    in_flight: int
    pinned: bool


def is_idle(last_used: float, idle_ttl: float, now: float) -> bool:
    """True when a model unused since last_used has outlived its idle_ttl (0 = never)."""
    return idle_ttl > 0 and now - last_used >= idle_ttl


def idle_models(models: Iterable[Usage], now: float) -> list[str]:
    """Names of the models to unload for idleness: past their TTL, nothing in flight, unpinned."""
    return [
        m.name
        for m in models
        if not m.pinned and m.in_flight == 0 and is_idle(m.last_used, m.idle_ttl, now)
    ]


def ttl_left(last_used: float, idle_ttl: float, now: float) -> float | None:
    """Seconds until the model counts as idle (never below 0), or None when it never does."""
    if idle_ttl <= 0:
        return None
    return max(0.0, last_used + idle_ttl - now)
