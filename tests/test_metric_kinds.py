"""metrics/kinds.py: the one histogram and counter the collectors share, against generate_latest."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from llama_exporter.metrics.kinds import Counter, Histogram

BUCKETS = (0.0, 0.1, 1.0, 1e6, 1e10, 1e15)  # big bounds: Go's exponent form in le


class _Families(Collector):
    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def latest(*families: Metric) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(*families))
    return bytes(generate_latest(registry)).decode()


Seen = list[tuple[tuple[str, ...], float]]
observations = st.lists(
    st.tuples(
        st.sampled_from([("a", "x"), ("b", "x"), ('q"uote', "new\nline")]),
        st.one_of(st.floats(-1, 2e15, allow_nan=False), st.integers(0, 10**12)),
    ),
    max_size=40,
)


@given(observations)
def test_histogram_text_is_what_generate_latest_writes(
    seen: list[tuple[tuple[str, str], float]],
) -> None:
    histogram = Histogram("h_seconds", "A histogram.", ["model", "endpoint"], BUCKETS)
    texts = []
    for labels, value in seen:
        histogram.observe(labels, value)
        texts.append(histogram.exposition())  # cached lines are dropped on a change
    assert histogram.exposition() == latest(histogram.family())
    if seen:
        assert texts[-1] == histogram.exposition()
    for series in histogram.series():
        assert histogram.count(series) == sum(1 for k, _ in seen if k == series)


def test_histogram_counts_negative_values_as_zero_and_forgets_series() -> None:
    histogram = Histogram("h", "A histogram.", ["model"], (0.0, 1.0))
    histogram.observe(("a",), -3.0)
    histogram.observe(("b",), 0.5)
    assert '{le="0.0",model="a"} 1.0' in histogram.exposition()
    histogram.drop(lambda labels: labels == ("a",))
    assert histogram.series() == [("b",)]
    assert 'model="a"' not in histogram.exposition()
    histogram.relabel(lambda labels: ("c",))
    assert histogram.series() == [("c",)] and 'model="c"' in histogram.exposition()


def test_counter_family_is_what_generate_latest_writes() -> None:
    counter = Counter("c", "A counter.", ["model", "code"])
    counter.inc(("a", "200"))
    counter.inc(("a", "200"), 2)
    counter.inc(("b", "502"))
    text = latest(counter.family())
    assert 'c_total{code="200",model="a"} 3.0' in text
    assert 'c_total{code="502",model="b"} 1.0' in text
