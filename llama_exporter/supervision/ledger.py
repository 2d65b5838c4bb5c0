"""The Supervisor's memory ledger: each model's figure, the budgets, and admission's inputs.

Figures are read (learned, else estimated) in a thread by ``prepare`` before a start;
the synchronous admission check then uses what is cached, so the Supervisor can decide
and change state with no await in between. The policy itself is memory.admission (pure).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from llama_exporter.config.settings import ModelConfig
from llama_exporter.memory.admission import Decision, Holder, decide, reserved
from llama_exporter.memory.budgets import resolve_budgets
from llama_exporter.memory.figure import MemoryFigure
from llama_exporter.memory.report import LoadReport
from llama_exporter.states import COUNTS_AGAINST_CAP, CapExceeded, InstanceStatus, State
from llama_exporter.supervision.lifecycle import Entry

log = logging.getLogger(__name__)

NO_FIGURE = MemoryFigure()


class FigureSource(Protocol):
    """Where figures come from (memory.book.MemoryBook): blocking reads, call in a thread."""

    def figure(self, model: ModelConfig) -> MemoryFigure:
        """The model's figure: learned from a past load, else estimated."""
        ...

    def estimate(self, model: ModelConfig) -> MemoryFigure:
        """The model's figure before any load (GGUF header and launch settings)."""
        ...

    def raise_after_oom(self, model: ModelConfig) -> None:
        """A load of model ran out of memory: its next figure must be larger."""
        ...

    def learn(self, model: ModelConfig, report: LoadReport) -> None:
        """Keep what a load really allocated (an empty report changes nothing)."""
        ...


@dataclass(frozen=True)
class Use:
    """What the gateway knows of a model's use (the supervisor knows only states)."""

    busy: int = 0
    last_used: float = 0.0
    abandoned: bool = False


UseFn = Callable[[InstanceStatus], Use]


class Ledger:
    """Figures by model, budgets by device, and admission decisions over the entries."""

    def __init__(
        self,
        book: FigureSource | None,
        budgets: Mapping[str, int] | None,
        entries: Mapping[str, Entry],
        pinned: Callable[[str], bool],
    ) -> None:
        self.book = book
        self._entries = entries  # the Supervisor's, read here
        self._pinned = pinned
        self.budgets: dict[str, int] = dict(budgets or {})
        self.figures: dict[str, MemoryFigure] = {}  # latest figure read, by model
        self.totals: dict[str, int] = {}  # each device's total, for auto budgets
        self.estimates: dict[str, MemoryFigure] = {}  # every known model's, for people
        self.reported: dict[str, MemoryFigure] = {}  # learned from a load (source "learned")
        self._usage: UseFn | None = None

    @property
    def counts_memory(self) -> bool:
        """True when memory is budgeted and figures are read."""
        return self.book is not None and bool(self.budgets)

    def set_totals(
        self, totals: Mapping[str, int], spec: Mapping[str, int | None], headroom: float
    ) -> None:
        """The devices' totals (read once, in a thread), and the budgets resolved from them."""
        self.totals = dict(totals)
        self.resolve(spec, headroom)

    def resolve(self, spec: Mapping[str, int | None], headroom: float) -> None:
        """Budgets from the config's sizes and auto over the known totals; BudgetError."""
        self.budgets = resolve_budgets(spec, headroom, self.totals)

    def set_usage(self, usage: UseFn | None) -> None:
        """Who tells how busy and how recently used each model is (the gateway)."""
        self._usage = usage

    async def prepare(self, model: ModelConfig) -> MemoryFigure:
        """Read the model's figure in a thread and keep it for the next admission."""
        if self.book is None:
            return NO_FIGURE
        try:
            figure = await asyncio.to_thread(self.book.figure, model)
        except Exception as exc:  # an unreadable GGUF: llama-server will say more
            log.warning("%s: no memory figure (%s); counted as 0 bytes", model.name, exc)
            figure = NO_FIGURE
        self.figures[model.name] = figure
        return figure

    def read_all(self, models: list[ModelConfig]) -> None:
        """Every model's estimate and learned figure (blocking: call it in a thread)."""
        if self.book is None:
            return
        estimates, reported = {}, {}
        for model in models:
            try:
                estimates[model.name] = self.book.estimate(model)
                figure = self.book.figure(model)
            except Exception as exc:  # unreadable file: no figure, said at debug level
                log.debug("%s: no memory figure (%s)", model.name, exc)
                continue
            if figure.source == "learned":
                reported[model.name] = figure
        self.estimates, self.reported = estimates, reported

    async def after_oom(self, model: ModelConfig) -> None:
        """A load ran out of memory: the book raises its figure; the next start reads it."""
        if self.book is None:
            return
        try:
            await asyncio.to_thread(self.book.raise_after_oom, model)
        except Exception:
            log.exception("%s: cannot raise the memory figure after out of memory", model.name)
        await self.prepare(model)

    def figure_now(self, model: ModelConfig) -> MemoryFigure:
        """The cached figure, else read here (blocking: only for starts nobody prepared)."""
        figure = self.figures.get(model.name)
        if figure is not None or self.book is None:
            return figure or NO_FIGURE
        log.debug("%s: figure read on the loop (start not prepared)", model.name)
        try:
            figure = self.book.figure(model)
        except Exception as exc:
            log.warning("%s: no memory figure (%s); counted as 0 bytes", model.name, exc)
            figure = NO_FIGURE
        self.figures[model.name] = figure
        return figure

    @property
    def active_budgets(self) -> dict[str, int]:
        """Memory budget per device (empty: memory is not counted)."""
        return dict(self.budgets) if self.counts_memory else {}

    def holders(self, leaving: Collection[str]) -> list[Holder]:
        """Every instance that holds a place, with the figure it was admitted with."""
        out = []
        for name, entry in self._entries.items():
            status = entry.status
            if status.state not in COUNTS_AGAINST_CAP:
                continue
            use = self._usage(status) if self._usage is not None else Use(last_used=status.since)
            out.append(
                Holder(
                    name=name,
                    figure=entry.figure or NO_FIGURE,
                    leaving=status.state is State.STOPPING or name in leaving,
                    ready=status.state is State.READY,
                    busy=use.busy,
                    pinned=self._pinned(name),
                    last_used=use.last_used,
                    abandoned=use.abandoned,
                )
            )
        return out

    def decide(
        self,
        name: str,
        figure: MemoryFigure,
        holders: list[Holder],
        cap: int,
    ) -> Decision:
        """Admission for name beside holders (budgets only when memory is counted)."""
        budgets = self.budgets if self.counts_memory else {}
        return decide(holders, name, figure, budgets, cap)

    def reserved(self) -> dict[str, int]:
        """Bytes reserved per device by the instances holding a place."""
        return reserved(
            e.figure
            for e in self._entries.values()
            if e.figure is not None and e.status.state in COUNTS_AGAINST_CAP
        )

    def held(self) -> dict[str, dict[str, int]]:
        """device -> model -> bytes its instance holds there (what the page's bars show)."""
        out: dict[str, dict[str, int]] = {}
        for name, entry in self._entries.items():
            if entry.figure is None or entry.status.state not in COUNTS_AGAINST_CAP:
                continue
            for device, need in entry.figure.devices.items():
                out.setdefault(device, {})[name] = need.total
        return out


class MemoryFull(CapExceeded):
    """The model does not fit beside the instances running now (429, or the gateway queues)."""

    def __init__(self, model: str, running: tuple[str, ...], cap: int, decision: Decision) -> None:
        super().__init__(model, running, cap)
        self.decision = decision
        self.args = (f"cannot start {model!r}: {decision.reason}",)

    def __str__(self) -> str:
        return str(self.args[0])


class ModelTooBig(Exception):
    """The model needs more than a whole device budget: it is never spawned (400)."""

    def __init__(self, model: str, decision: Decision) -> None:
        super().__init__(f"cannot start {model!r}: {decision.reason}")
        self.model = model
        self.decision = decision
