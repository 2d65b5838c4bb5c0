"""Prometheus text exposition written directly, byte for byte as generate_latest writes it.

generate_latest builds a Metric object per family and re-validates every label name
of every sample (about 12 us per sample); our names are fixed and valid, so only
label values are escaped here. The collector keeps each model's lines as cached
text (see collector.py) and a scrape only joins them; ``render`` also serves any
other collector registered in the same registry, through its families.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "unknown": "untyped"}


def go_float(value: float) -> str:
    """A value as generate_latest writes it (Go's 'g' format for big positive numbers).

    Our own copy of what prometheus_client does in a private helper: the version range
    in pyproject.toml is the one the byte-for-byte parity tests pass with (0.26 writes
    a two-digit exponent, 1e+10; older releases wrote 1e+010).
    """
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def value_text(value: float) -> str:
    """go_float, with fast paths for the common small integers and short numbers."""
    if type(value) is int and -(10**15) < value < 10**6:  # what repr(float(value)) writes
        return f"{value}.0"
    if math.isfinite(value):
        text = repr(float(value))
        if value <= 0 or text.find(".") <= 6:
            return text
    return go_float(value)


def escape(value: str) -> str:
    """A label value escaped as in the text format."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def header(name: str, kind: str, doc: str) -> str:
    """The HELP and TYPE lines of a family (name as exposed, e.g. with _total)."""
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {TYPES[kind]}\n"


def labels_text(labels: Sequence[tuple[str, str]]) -> str:
    """'{name="value",...}' sorted by name as generate_latest writes it ('' for none)."""
    if not labels:
        return ""
    pairs = sorted(labels) if len(labels) > 1 else labels
    return "{" + ",".join([f'{k}="{escape(v)}"' for k, v in pairs]) + "}"


def sample(name: str, labels: Sequence[tuple[str, str]], value: float) -> str:
    """One sample line; labels in any order."""
    return f"{name}{labels_text(labels)} {value_text(value)}\n"


def exposed_name(family: Metric) -> str:
    """The family name as written in HELP/TYPE (counters get _total)."""
    return f"{family.name}_total" if family.type == "counter" else family.name


def families_text(families: Iterable[Metric]) -> str | None:
    """The text of metric families, or None if one has a type only generate_latest writes."""
    out: list[str] = []
    append = out.append
    for family in families:
        if family.type not in TYPES:
            return None
        append(header(exposed_name(family), family.type, family.documentation))
        for s in family.samples:
            append(sample(s.name, tuple(s.labels.items()), s.value))
    return "".join(out)


@runtime_checkable
class TextCollector(Protocol):
    """A collector that can write its own exposition text (the same as its families')."""

    def exposition(self) -> str:
        """The text generate_latest would write for this collector alone."""
        ...


class OrderedRegistry(CollectorRegistry):
    """A CollectorRegistry that remembers its collectors in order, for ``render``."""

    def __init__(self) -> None:
        super().__init__(auto_describe=False)
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        """Register as CollectorRegistry does, and remember the order."""
        super().register(collector)
        self.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        """Unregister as CollectorRegistry does."""
        super().unregister(collector)
        self.collectors.remove(collector)


def _collector_text(collector: Collector) -> str:
    if isinstance(collector, TextCollector):
        return collector.exposition()
    text = families_text(collector.collect())
    if text is None:  # e.g. info or stateset families: let prometheus_client write them
        alone = CollectorRegistry(auto_describe=False)
        alone.register(collector)
        return bytes(generate_latest(alone)).decode()
    return text


def render(registry: CollectorRegistry) -> bytes:
    """The exposition of registry, byte for byte as generate_latest(registry) writes it.

    An OrderedRegistry joins each collector's text (cached blocks for ours); any other
    registry goes through its families.
    """
    if isinstance(registry, OrderedRegistry):
        return "".join([_collector_text(c) for c in registry.collectors]).encode()
    text = families_text(registry.collect())
    return bytes(generate_latest(registry)) if text is None else text.encode()
