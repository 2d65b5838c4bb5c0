"""Pure admission (memory.admission): plain values, no event loop, hypothesis where inputs vary."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llama_exporter.memory.admission import (
    Decision,
    Holder,
    Verdict,
    decide,
    eviction_order,
    reserved,
)
from llama_exporter.memory.figure import HOST, DeviceNeed, MemoryFigure

GiB = 1024**3


def fig(cpu: int = 0, gpu: int = 0, *, weights: int = 0, key: str | None = None) -> MemoryFigure:
    """A figure of cpu bytes (weights of them on the host, shared by key) and gpu bytes."""
    devices = {HOST: DeviceNeed(weights=weights, kv=cpu - weights)}
    if gpu:
        devices["cuda0"] = DeviceNeed(weights=gpu)
    return MemoryFigure(devices, shared_weights_key=key)


def h(name: str, cpu: int, last_used: float = 0.0, **kw: object) -> Holder:
    return Holder(name, fig(cpu), last_used=last_used, **kw)  # type: ignore[arg-type]


# --- plain examples ----------------------------------------------------------------------


def test_fits_starts() -> None:
    d = decide([h("a", 3 * GiB)], "b", fig(4 * GiB), {HOST: 8 * GiB}, cap=4)
    assert d == Decision(Verdict.START)


def test_no_budget_counts_only_the_cap() -> None:
    holders = [h("a", 100 * GiB), h("b", 100 * GiB)]
    assert decide(holders, "c", fig(100 * GiB), {}, cap=3).verdict is Verdict.START
    capped = decide(holders, "c", fig(1), {}, cap=2)
    assert capped.verdict is Verdict.EVICT and capped.evict == ("a",) and capped.cap_full
    assert capped.shortfall is None


def test_bigger_than_the_whole_budget_is_refused_at_once() -> None:
    d = decide([], "huge", fig(9 * GiB), {HOST: 8 * GiB}, cap=4)
    assert d.verdict is Verdict.TOO_BIG
    assert d.shortfall is not None and d.shortfall.device == HOST
    assert "9.0 GiB" in d.reason and "8.0 GiB" in d.reason and "memory_budget.cpu" in d.reason


def test_a_gpu_budget_binds_too() -> None:
    holders = [Holder("a", fig(GiB, 10 * GiB), last_used=1.0)]
    d = decide(holders, "b", fig(GiB, 10 * GiB), {HOST: 64 * GiB, "cuda0": 16 * GiB}, cap=4)
    assert d.verdict is Verdict.EVICT and d.evict == ("a",)
    assert d.shortfall is not None and d.shortfall.device == "cuda0"


def test_evicts_least_recently_used_and_no_more_than_needed() -> None:
    holders = [h("old", 2 * GiB, 1.0), h("mid", 2 * GiB, 2.0), h("new", 2 * GiB, 3.0)]
    d = decide(holders, "c", fig(3 * GiB), {HOST: 8 * GiB}, cap=9)
    assert d.verdict is Verdict.EVICT and d.evict == ("old",)
    d = decide(holders, "c", fig(5 * GiB), {HOST: 8 * GiB}, cap=9)
    assert d.evict == ("old", "mid")


def test_a_small_old_model_is_not_evicted_when_a_bigger_one_alone_is_needed() -> None:
    # LRU first: tiny goes, then big; big alone would do, so tiny stays.
    holders = [h("tiny", GiB // 2, 1.0), h("big", 6 * GiB, 2.0)]
    d = decide(holders, "c", fig(4 * GiB), {HOST: 8 * GiB}, cap=9)
    assert d.evict == ("big",)


def test_never_evicts_pinned_busy_or_wanted_loads() -> None:
    holders = [
        h("pinned", 3 * GiB, 0.0, pinned=True),
        h("busy", 3 * GiB, 0.0, busy=1),
        h("loading", GiB, 0.0, ready=False),
    ]
    d = decide(holders, "c", fig(2 * GiB), {HOST: 8 * GiB}, cap=9)
    assert d.verdict is Verdict.FULL
    assert d.shortfall is not None
    assert (d.shortfall.need, d.shortfall.free) == (2 * GiB, GiB)
    assert "pinned" in d.reason and "busy" in d.reason and "1.0 GiB free" in d.reason
    assert d.shortfall.holders == (("busy", 3 * GiB), ("pinned", 3 * GiB), ("loading", GiB))


def test_an_abandoned_load_goes_first() -> None:
    holders = [h("lru", GiB, 0.0), h("orphan", GiB, 9.0, ready=False, abandoned=True)]
    assert decide(holders, "c", fig(1), {}, cap=2).evict == ("orphan",)


def test_waits_for_models_already_stopping() -> None:
    holders = [h("going", 4 * GiB, 0.0, leaving=True), h("idle", 2 * GiB, 1.0)]
    d = decide(holders, "c", fig(4 * GiB), {HOST: 8 * GiB}, cap=9)
    assert d.verdict is Verdict.WAIT and d.evict == ()
    d = decide(holders, "c", fig(7 * GiB), {HOST: 8 * GiB}, cap=9)
    assert d.verdict is Verdict.EVICT and d.evict == ("idle",)


def test_host_weights_of_one_file_count_once() -> None:
    a = Holder("a", fig(3 * GiB, weights=2 * GiB, key="/m/gemma.gguf"))
    assert reserved([a.figure, a.figure]) == {HOST: 4 * GiB}
    # a second instance of the same file needs only its own KV (1 GiB) beside a
    assert decide([a], "b", a.figure, {HOST: 4 * GiB}, cap=9).verdict is Verdict.START
    other = fig(3 * GiB, weights=2 * GiB, key="/m/other.gguf")
    assert decide([a], "b", other, {HOST: 4 * GiB}, cap=9).verdict is Verdict.EVICT


def test_lru_order() -> None:
    holders = [
        h("a", 1, 30.0),
        h("b", 1, 10.0),
        h("c", 1, 5.0, busy=1),
        h("d", 1, 1.0, pinned=True),
    ]
    assert [x.name for x in eviction_order(holders)] == ["b", "a"]


# --- properties ------------------------------------------------------------------------

names = [f"m{i}" for i in range(7)]
sizes = st.integers(0, 8).map(lambda n: n * GiB // 2)


@st.composite
def holder(draw: st.DrawFn, name: str) -> Holder:
    cpu = draw(sizes)
    shared = draw(st.sampled_from([None, "f1", "f2"]))
    weights = draw(st.integers(0, cpu)) if shared else 0
    return Holder(
        name,
        fig(cpu, draw(st.sampled_from([0, GiB, 2 * GiB])), weights=weights, key=shared),
        leaving=draw(st.booleans()),
        ready=draw(st.booleans()),
        busy=draw(st.sampled_from([0, 0, 1])),
        pinned=draw(st.booleans()),
        last_used=draw(st.floats(0, 100)),
        abandoned=draw(st.booleans()),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Holder], MemoryFigure, dict[str, int], int]:
    count = draw(st.integers(0, 6))
    holders = [draw(holder(n)) for n in names[:count]]
    cand = draw(holder("cand")).figure
    budgets = {HOST: draw(st.integers(1, 16)) * GiB // 2}
    if draw(st.booleans()):
        budgets["cuda0"] = draw(st.integers(1, 6)) * GiB
    return holders, cand, budgets, draw(st.integers(1, 8))


def _fits(holders: list[Holder], cand: MemoryFigure, budgets: dict[str, int], cap: int) -> bool:
    after = reserved([*(x.figure for x in holders), cand])
    return len(holders) < cap and all(after.get(d, 0) <= b for d, b in budgets.items())


@settings(max_examples=400)
@given(situations())
def test_decisions_keep_reserved_within_budget_and_evict_only_what_is_needed(
    s: tuple[list[Holder], MemoryFigure, dict[str, int], int],
) -> None:
    holders, cand, budgets, cap = s
    d = decide(holders, "cand", cand, budgets, cap)
    alone = reserved([cand])
    if any(alone.get(dev, 0) > b for dev, b in budgets.items()):
        assert d.verdict is Verdict.TOO_BIG
        return
    if d.verdict is Verdict.START:  # reserved after the start is never above a budget
        assert _fits(holders, cand, budgets, cap)
        return
    assert not _fits(holders, cand, budgets, cap)
    staying = [x for x in holders if not x.leaving]
    if d.verdict is Verdict.WAIT:
        assert _fits(staying, cand, budgets, cap)
        return
    if d.verdict is Verdict.FULL:  # even with every evictable model gone it does not fit
        assert not _fits([x for x in staying if not x.evictable], cand, budgets, cap)
        return
    assert d.verdict is Verdict.EVICT and d.evict
    by_name = {x.name: x for x in holders}
    for victim in d.evict:  # never pinned, busy, leaving or a wanted load
        assert by_name[victim].evictable
    rest = [x for x in staying if x.name not in d.evict]
    assert _fits(rest, cand, budgets, cap)
    for victim in d.evict:  # as few as needed: keeping any one of them does not fit
        assert not _fits([*rest, by_name[victim]], cand, budgets, cap)


@given(st.integers(1, 6), st.integers(0, 6), st.lists(st.floats(0, 100), min_size=6, max_size=6))
def test_equal_models_evict_exactly_the_least_recently_used(
    fit: int, running: int, used: list[float]
) -> None:
    """With equal figures, the k least recently used idle models go, k as small as can be."""
    holders = [h(names[i], GiB, used[i]) for i in range(running)]
    d = decide(holders, "cand", fig(GiB), {HOST: fit * GiB}, cap=99)
    need = max(0, running + 1 - fit)
    if need == 0:
        assert d.verdict is Verdict.START
        return
    assert d.verdict is Verdict.EVICT
    lru = sorted(holders, key=lambda x: (x.last_used, x.name))[:need]
    assert d.evict == tuple(x.name for x in lru)
