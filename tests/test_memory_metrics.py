"""Memory families and the API's memory views over a Supervisor with a figure book double."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_memory_scheduling import Book, GiB, setup

from llama_exporter.config.settings import ModelConfig
from llama_exporter.http.api_memory import memory_json, model_memory_json
from llama_exporter.memory.figure import HOST, DeviceNeed, MemoryFigure
from llama_exporter.metrics.memory import MemoryCollector
from llama_exporter.supervision.ledger import Ledger


class LearnedBook(Book):
    """Model "a" has a learned figure (weights 1, kv 2 GiB); estimates are 3 GiB of kv."""

    def figure(self, model: ModelConfig) -> MemoryFigure:
        if model.name == "a":
            need = DeviceNeed(weights=GiB, kv=2 * GiB, compute=GiB // 2)
            return MemoryFigure({HOST: need}, source="learned")
        return self.estimate(model)

    def estimate(self, model: ModelConfig) -> MemoryFigure:
        return MemoryFigure({HOST: DeviceNeed(kv=int(self.gib[model.name] * GiB))})


def samples(ledger: Ledger) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(
        MemoryCollector(
            lambda: ledger.estimates,
            lambda: ledger.reported,
            lambda: ledger.active_budgets,
            ledger.reserved,
        )
    )
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_families_and_views(tmp_path: Path) -> None:
    _, sup, _, _, _ = setup(tmp_path, {"a": 3, "b": 2}, budget=8)
    sup.ledger.book = LearnedBook({"a": 3, "b": 2})
    await sup.refresh_figures()
    await sup.start("a")
    got = samples(sup.ledger)
    p = "llama_exporter_"
    assert got[(p + "model_memory_estimated_bytes", (("device", "cpu"), ("model", "a")))] == 3 * GiB
    assert got[(p + "model_memory_estimated_bytes", (("device", "cpu"), ("model", "b")))] == 2 * GiB
    kv = (("device", "cpu"), ("kind", "kv"), ("model", "a"))
    assert got[(p + "model_memory_reported_bytes", kv)] == 2 * GiB
    assert not any(k[0].endswith("reported_bytes") and ("model", "b") in k[1] for k in got)
    assert got[(p + "memory_budget_bytes", (("device", "cpu"),))] == 8 * GiB
    assert got[(p + "memory_reserved_bytes", (("device", "cpu"),))] == 3.5 * GiB  # learned
    view = memory_json(sup.ledger)
    assert view == {
        "devices": {
            "cpu": {
                "budget_bytes": 8 * GiB,
                "reserved_bytes": int(3.5 * GiB),
                "models": {"a": int(3.5 * GiB)},
            }
        }
    }
    a = model_memory_json(sup.ledger, "a")
    assert a["estimate_bytes"] == 3 * GiB and a["reported_bytes"] == int(3.5 * GiB)
    b = model_memory_json(sup.ledger, "b")
    assert b["estimate_bytes"] == 2 * GiB and b["reported_bytes"] is None
    await sup.shutdown()


def test_memory_contract_in_architecture_matches_the_families(tmp_path: Path) -> None:
    """docs/ARCHITECTURE.md "### Memory metrics" names exactly what MemoryCollector writes."""
    from test_collector import contract

    expected = contract("### Memory metrics")
    ledger = Ledger(LearnedBook({"a": 1}), {HOST: GiB}, {}, lambda _: False)
    ledger.read_all([ModelConfig("a", tmp_path / "a.gguf")])
    families = {s[0] for s in samples(ledger)}
    assert families == set(expected)
