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
from llama_exporter.memory.figure import MemoryFigure
from llama_exporter.states import COUNTS_AGAINST_CAP, CapExceeded, InstanceStatus, State
from llama_exporter.supervision.lifecycle import Entry

log = logging.getLogger(__name__)

NO_FIGURE = MemoryFigure()


class FigureSource(Protocol):
    """Where figures come from (memory.book.MemoryBook): blocking reads, call in a thread."""

    def figure(self, model: ModelConfig) -> MemoryFigure:
        """The model's figure: learned from a past load, else estimated."""
        ...

    def raise_after_oom(self, model: ModelConfig) -> None:
        """A load of model ran out of memory: its next figure must be larger."""
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

    def __init__(self, book: FigureSource | None, budgets: Mapping[str, int] | None) -> None:
        self.book = book
        self.budgets: dict[str, int] = dict(budgets or {})
        self.figures: dict[str, MemoryFigure] = {}  # latest figure read, by model
        self._usage: UseFn | None = None

    @property
    def counts_memory(self) -> bool:
        """True when memory is budgeted and figures are read."""
        return self.book is not None and bool(self.budgets)

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

    def holders(
        self, entries: Mapping[str, Entry], pinned: Callable[[str], bool], leaving: Collection[str]
    ) -> list[Holder]:
        """Every instance that holds a place, with the figure it was admitted with."""
        out = []
        for name, entry in entries.items():
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
                    pinned=pinned(name),
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

    def reserved(self, entries: Mapping[str, Entry]) -> dict[str, int]:
        """Bytes reserved per device by the instances holding a place."""
        return reserved(
            e.figure
            for e in entries.values()
            if e.figure is not None and e.status.state in COUNTS_AGAINST_CAP
        )


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
