"""What the API answers for the supervisor's refusals: the memory a full start lacks."""

from __future__ import annotations

from llama_exporter.http.api_json import _error_for
from llama_exporter.memory.admission import Decision, Shortfall, Verdict
from llama_exporter.states import CapExceeded
from llama_exporter.supervision.ledger import MemoryFull, ModelTooBig

SHORT = Shortfall("cpu", need=3 << 30, free=1 << 30, budget=7 << 30, holders=(("a", 3 << 30),))


def test_memory_full_is_a_429_naming_needed_free_and_holders() -> None:
    exc = MemoryFull("b", ("a",), 4, Decision(Verdict.FULL, shortfall=SHORT, reason="no room"))
    err = _error_for(exc)
    assert err is not None and err.status == 429 and err.headers["Retry-After"]
    assert err.details["running"] == ["a"] and err.details["cap"] == 4
    assert err.details["memory"] == {
        "device": "cpu",
        "needed_bytes": 3 << 30,
        "free_bytes": 1 << 30,
        "budget_bytes": 7 << 30,
        "held_by": {"a": 3 << 30},
    }


def test_the_cap_alone_is_a_429_without_memory_details() -> None:
    err = _error_for(CapExceeded("b", ("a",), 1))
    assert err is not None and err.status == 429 and "memory" not in err.details
    assert err.details == {"running": ["a"], "cap": 1}


def test_too_big_is_a_400_with_the_memory_it_needs() -> None:
    err = _error_for(ModelTooBig("b", Decision(Verdict.TOO_BIG, shortfall=SHORT, reason="big")))
    assert err is not None and err.status == 400
    assert err.details["memory"]["needed_bytes"] == 3 << 30
