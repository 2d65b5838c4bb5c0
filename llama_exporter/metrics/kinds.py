"""The metric types our collectors keep themselves: a histogram and a counter family.

Both hold one series per label-value tuple and yield prometheus_client families
from ``family()``; neither has ``_created`` series. The collector's start-duration
histogram and the gateway's request metrics use these, and nothing else counts
by hand. A histogram also keeps each series' sample lines as text until that
series changes, for the collectors that write their own exposition.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from llama_exporter.metrics.exposition import header, sample, value_text

Labels = tuple[str, ...]


class Histogram:
    """One histogram family, a series per label tuple (negative values count as 0)."""

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self._bounds = sorted(float(b) for b in buckets if math.isfinite(b))
        self._le = [*map(value_text, self._bounds), "+Inf"]  # as generate_latest writes them
        self._counts: dict[Labels, list[int]] = {}  # per bucket, not cumulative; last is +Inf
        self._sums: dict[Labels, float] = {}
        self._text: dict[Labels, str] = {}  # a series' sample lines, until it changes

    def observe(self, labels: Labels, value: float) -> None:
        """Record one value in the series of labels."""
        value = max(0.0, value)
        counts = self._counts.get(labels)
        if counts is None:
            counts = self._counts[labels] = [0] * (len(self._bounds) + 1)
        counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sums[labels] = self._sums.get(labels, 0.0) + value
        self._text.pop(labels, None)

    def count(self, labels: Labels) -> int:
        """How many values were observed for labels."""
        return sum(self._counts.get(labels, ()))

    def series(self) -> list[Labels]:
        """The label tuples observed so far, in the order they were first seen."""
        return list(self._counts)

    def drop(self, which: Callable[[Labels], bool]) -> None:
        """Forget every series whose labels which() accepts."""
        for labels in [k for k in self._counts if which(k)]:
            del self._counts[labels], self._sums[labels]
            self._text.pop(labels, None)

    def relabel(self, change: Callable[[Labels], Labels]) -> None:
        """Give every series new label values (e.g. a reloaded host label)."""
        self._counts = {change(k): v for k, v in self._counts.items()}
        self._sums = {change(k): v for k, v in self._sums.items()}
        self._text.clear()

    def family(self, order: Iterable[Labels] | None = None) -> HistogramMetricFamily:
        """The family with the series of order (default: every series, as first seen)."""
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels in self._counts if order is None else order:
            cumulative, running = [], 0
            for le, n in zip(self._le, self._counts[labels], strict=True):
                running += n
                cumulative.append((le, running))
            family.add_metric(list(labels), cumulative, self._sums[labels])
        return family

    def exposition(self, order: Iterable[Labels] | None = None) -> str:
        """family(order) as text; each series' lines are written once per change."""
        out = [header(self.name, "histogram", self.doc)]
        for labels in self._counts if order is None else order:
            text = self._text.get(labels)
            if text is None:
                samples = self.family([labels]).samples
                text = "".join([sample(s.name, tuple(s.labels.items()), s.value) for s in samples])
                self._text[labels] = text
            out.append(text)
        return "".join(out)


class Counter:
    """One counter family, a value per label tuple."""

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, by: float = 1.0) -> None:
        """Add to the series of labels."""
        self.values[labels] = self.values.get(labels, 0.0) + by

    def family(self) -> CounterMetricFamily:
        """The family with every series seen so far."""
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family
