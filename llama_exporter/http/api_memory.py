"""The API's memory views: each device's budget, reservation and holders; each model's
figure before and after a load (what `ps`, `models` and the page show)."""

from __future__ import annotations

from typing import Any

from llama_exporter.memory.figure import MemoryFigure
from llama_exporter.supervision.ledger import Ledger


def _totals(figure: MemoryFigure | None) -> dict[str, int]:
    return {} if figure is None else {d: n.total for d, n in sorted(figure.devices.items())}


def model_memory_json(ledger: Ledger, name: str) -> dict[str, Any]:
    """A model's estimate and reported (learned) total in bytes, and each per device."""
    estimate = ledger.estimates.get(name)
    reported = ledger.reported.get(name)
    return {
        "estimate_bytes": None if estimate is None else sum(_totals(estimate).values()),
        "reported_bytes": None if reported is None else sum(_totals(reported).values()),
        "estimate_devices": _totals(estimate),
        "reported_devices": _totals(reported),
    }


def memory_json(ledger: Ledger) -> dict[str, Any]:
    """Per device: the budget (None: not budgeted), bytes reserved, and by which model."""
    budgets = ledger.active_budgets
    reserved = ledger.reserved()
    held = ledger.held()
    return {
        "devices": {
            device: {
                "budget_bytes": budgets.get(device),
                "reserved_bytes": reserved.get(device, 0),
                "models": held.get(device, {}),
            }
            for device in sorted({*budgets, *reserved})
        }
    }
