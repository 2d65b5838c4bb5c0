"""Pure admission: may a model start now, after which evictions, or why not.

One policy for every start (API, CLI, page, gateway): the Supervisor enforces it with
no await between the check and the state change; the gateway only asks it. It counts
both limits: max_parallel (instances) and each device's memory budget, where the
host's mapped weights of one GGUF file are counted once however many instances use it.
Everything here takes plain values; nothing awaits or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from llama_exporter.config.sizes import format_size
from llama_exporter.memory.figure import HOST, MemoryFigure


@dataclass(frozen=True)
class Holder:
    """An instance holding memory and a place under the cap, as admission sees it."""

    name: str
    figure: MemoryFigure
    leaving: bool = False  # stopping (or picked to stop): what it holds is on its way back
    ready: bool = True  # False: still loading, or waiting to be restarted
    busy: int = 0  # requests in flight, waiting on its load, or on their way to it
    pinned: bool = False
    last_used: float = 0.0  # unix time of its last use
    abandoned: bool = False  # a load started for requests that all left

    @property
    def evictable(self) -> bool:
        """May be stopped to make room: idle, unpinned, and ready (or an abandoned load)."""
        if self.leaving or self.pinned or self.busy > 0:
            return False
        return self.ready or self.abandoned


class Verdict(StrEnum):
    """What admission answers."""

    START = "start"  # fits now
    WAIT = "wait"  # fits once the instances already stopping are gone
    EVICT = "evict"  # fits once `evict` (and those stopping) are gone
    FULL = "full"  # does not fit even with every evictable model gone: queue or 429
    TOO_BIG = "too_big"  # larger than a whole budget: never fits


@dataclass(frozen=True)
class Shortfall:
    """The device a start does not fit on: what it needs, what is free, who holds the rest."""

    device: str
    need: int
    free: int
    budget: int
    holders: tuple[tuple[str, int], ...] = ()  # (model, bytes it holds there), largest first

    def describe(self) -> str:
        """'needs 1.2 GiB on cpu, 0.5 GiB free of 8.0 GiB, held by a (4.0 GiB), ...'."""
        held = ", ".join(f"{n} ({format_size(b)})" for n, b in self.holders) or "nobody"
        return (
            f"needs {format_size(self.need)} on {self.device}, {format_size(max(0, self.free))} "
            f"free of its {format_size(self.budget)} budget, held by {held}"
        )


@dataclass(frozen=True)
class Decision:
    """Admission's answer for one candidate."""

    verdict: Verdict
    evict: tuple[str, ...] = ()  # EVICT: stop these first (least recently used first)
    shortfall: Shortfall | None = None  # FULL / TOO_BIG / WAIT for memory: the tight device
    cap_full: bool = False  # the instance cap (max_parallel) binds
    reason: str = ""  # for people: why not now

    @property
    def fits_now(self) -> bool:
        return self.verdict is Verdict.START


def reserved(figures: Iterable[MemoryFigure]) -> dict[str, int]:
    """Bytes held per device; host weights of one shared file counted once (the largest)."""
    totals: dict[str, int] = {}
    shared: dict[str, int] = {}
    for figure in figures:
        for device, need in figure.devices.items():
            amount = need.total
            key = figure.shared_weights_key
            if device == HOST and key is not None:
                amount -= need.weights
                shared[key] = max(shared.get(key, 0), need.weights)
            totals[device] = totals.get(device, 0) + amount
    if shared:
        totals[HOST] = totals.get(HOST, 0) + sum(shared.values())
    return totals


def held_by(holders: Iterable[Holder], device: str) -> tuple[tuple[str, int], ...]:
    """(model, bytes on device) of each holder, largest first; shared weights not split."""
    rows = [(h.name, h.figure.total(device)) for h in holders if h.figure.total(device) > 0]
    return tuple(sorted(rows, key=lambda r: (-r[1], r[0])))


def _shortfall(
    holders: Sequence[Holder], candidate: MemoryFigure, budgets: Mapping[str, int]
) -> Shortfall | None:
    """The first budgeted device (by name) where holders + candidate exceed the budget."""
    before = reserved(h.figure for h in holders)
    after = reserved([*(h.figure for h in holders), candidate])
    for device in sorted(budgets):
        budget = budgets[device]
        if after.get(device, 0) > budget:
            need = after.get(device, 0) - before.get(device, 0)
            free = budget - before.get(device, 0)
            return Shortfall(device, need, free, budget, held_by(holders, device))
    return None


def _fits(
    holders: Sequence[Holder], candidate: MemoryFigure, budgets: Mapping[str, int], cap: int
) -> bool:
    return len(holders) < cap and _shortfall(holders, candidate, budgets) is None


def eviction_order(holders: Iterable[Holder]) -> list[Holder]:
    """The evictable holders, first to go first: abandoned loads, then least recently used."""
    return sorted(
        (h for h in holders if h.evictable),
        key=lambda h: (not h.abandoned, h.last_used, h.name),
    )


def decide(
    holders: Sequence[Holder],
    candidate: str,
    figure: MemoryFigure,
    budgets: Mapping[str, int],
    cap: int,
) -> Decision:
    """May candidate (needing figure) start beside holders, under budgets and cap?"""
    holders = [h for h in holders if h.name != candidate]
    alone = _shortfall([], figure, budgets)
    if alone is not None:
        return Decision(
            Verdict.TOO_BIG,
            shortfall=alone,
            reason=(
                f"{candidate!r} needs {format_size(alone.need)} on {alone.device}, more than "
                f"its whole budget of {format_size(alone.budget)}: raise memory_budget."
                f"{alone.device}, or lower the model's ctx_size, parallel or offload"
            ),
        )
    short = _shortfall(holders, figure, budgets)
    cap_full = len(holders) >= cap
    if short is None and not cap_full:
        return Decision(Verdict.START)
    why = _why(candidate, holders, short, cap_full, cap)
    staying = [h for h in holders if not h.leaving]
    if _fits(staying, figure, budgets, cap):
        going = ", ".join(h.name for h in holders if h.leaving)
        return Decision(Verdict.WAIT, (), short, cap_full, f"{why}; {going} stopping")
    victims: list[Holder] = []
    rest = list(staying)
    for victim in eviction_order(staying):
        rest.remove(victim)
        victims.append(victim)
        if _fits(rest, figure, budgets, cap):
            evict = _no_more_than_needed(victims, rest, figure, budgets, cap)
            return Decision(
                Verdict.EVICT, evict, short, cap_full, f"{why}; evicting {', '.join(evict)}"
            )
    stuck = [h.name for h in staying if not h.evictable]
    if stuck:
        why += f"; none of {', '.join(stuck)} may be evicted (busy, loading or pinned)"
    return Decision(Verdict.FULL, (), short, cap_full, why)


def _no_more_than_needed(
    victims: list[Holder],
    rest: list[Holder],
    figure: MemoryFigure,
    budgets: Mapping[str, int],
    cap: int,
) -> tuple[str, ...]:
    """Drop victims that are not needed after all (a big later one made room alone).

    The most recently used victims are tried first, so the ones that stay picked are
    the least recently used that suffice; the last one picked is always needed.
    """
    kept = list(rest)
    chosen = list(victims)
    for victim in reversed(victims[:-1]):
        if _fits([*kept, victim], figure, budgets, cap):
            kept.append(victim)
            chosen.remove(victim)
    return tuple(v.name for v in chosen)


def _why(
    candidate: str,
    holders: Sequence[Holder],
    short: Shortfall | None,
    cap_full: bool,
    cap: int,
) -> str:
    parts = []
    if short is not None:
        parts.append(f"{candidate!r} {short.describe()}")
    if cap_full:
        parts.append(f"{len(holders)} of {cap} instances are running (max_parallel)")
    return "; ".join(parts)
