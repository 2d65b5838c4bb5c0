"""Budgets: the config keys, sizes and shares, `auto` resolved from the host and from NVML.

There is no GPU on the machines that run these tests: the NVML path runs against a
stand-in module shaped like pynvml's real API (nvmlInit, nvmlDeviceGetCount,
nvmlDeviceGetHandleByIndex, nvmlDeviceGetMemoryInfo -> .total/.free/.used).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.config.loader import parse_config
from llama_exporter.config.settings import ConfigError
from llama_exporter.config.sizes import format_size, parse_share, parse_size
from llama_exporter.memory.budgets import (
    BudgetError,
    budgets_for,
    device_totals,
    load_nvml,
    resolve_budgets,
)
from llama_exporter.memory.figure import HOST

GiB = 1024**3


def parse(data: dict[str, object]) -> object:
    return parse_config(data, file=Path("/etc/le.yaml"), env={}, check_files=False)


def test_budget_keys_parse() -> None:
    cfg = parse({"memory_budget": {"cpu": "12GiB", "cuda0": "auto"}, "memory_headroom": "15 %"})
    assert dict(cfg.memory_budget) == {"cpu": 12 * GiB, "cuda0": None}  # type: ignore[attr-defined]
    assert cfg.memory_headroom == pytest.approx(0.15)  # type: ignore[attr-defined]


def test_by_default_the_host_is_budgeted_and_an_empty_mapping_turns_it_off() -> None:
    cfg = parse({})
    assert dict(cfg.memory_budget) == {"cpu": None}  # type: ignore[attr-defined]
    assert cfg.memory_headroom == pytest.approx(0.10)  # type: ignore[attr-defined]
    assert dict(parse({"memory_budget": {}}).memory_budget) == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"memory_budget": {"cpu": "12 GiBs"}}, "memory_budget.cpu", "unknown unit"),
        ({"memory_budget": {"cpu": -1}}, "memory_budget.cpu", "more than 0"),
        ({"memory_budget": {"cpu": True}}, "memory_budget.cpu", "size such as 12GiB"),
        ({"memory_budget": {"CUDA 0": "1GiB"}}, "memory_budget.CUDA 0", "not a device name"),
        ({"memory_budget": "12GiB"}, "memory_budget", "mapping of device to size"),
        ({"memory_headroom": 10}, "memory_headroom", "1000 %"),
        ({"memory_headroom": "100%"}, "memory_headroom", "below 100 %"),
        ({"memory_budgets": {}}, "memory_budgets", "unknown key"),
    ],
)
def test_bad_budget_keys_name_key_and_fix(data: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.key == key
    assert words in str(info.value)
    assert info.value.hint or "did you mean" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("12GiB", 12 * GiB),
        ("1.5 GiB", int(1.5 * GiB)),
        ("512MiB", 512 * 1024**2),
        ("2GB", 2 * 1000**3),
        ("4096", 4096),
        (1024, 1024),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@given(st.integers(1, 2**50))
def test_size_round_trip_in_bytes(n: int) -> None:
    assert parse_size(str(n)) == n == parse_size(n)


def test_shares_and_format() -> None:
    assert parse_share("10%") == pytest.approx(0.1)
    assert parse_share(0.25) == pytest.approx(0.25)
    assert format_size(1.2 * 1000**3) == "1.1 GiB"
    assert format_size(300) == "300 B"


def test_auto_is_the_total_less_the_headroom() -> None:
    spec = {HOST: None, "cuda0": 20 * GiB}
    assert resolve_budgets(spec, 0.1, {HOST: 10 * GiB}) == {HOST: 9 * GiB, "cuda0": 20 * GiB}


def test_auto_without_a_total_says_what_to_do() -> None:
    with pytest.raises(BudgetError, match=r"llama-exporter\[nvidia\].*cuda1: 22GiB"):
        resolve_budgets({"cuda1": None}, 0.1, {})
    with pytest.raises(BudgetError, match="vulkan0: 8GiB"):
        resolve_budgets({"vulkan0": None}, 0.1, {})


def test_host_total_is_the_machines() -> None:
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
    assert device_totals([HOST])[HOST] == kib * 1024


# --- NVML, on a stand-in shaped like pynvml ------------------------------------------------


@dataclass
class _MemInfo:
    total: int
    free: int
    used: int


class FakeNvml(types.ModuleType):
    """pynvml's calls the budgets use, over a list of GPU totals."""

    def __init__(self, totals: list[int], *, fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.totals, self.fail_init, self.inits = totals, fail_init, 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _MemInfo:
        total = self.totals[handle]
        return _MemInfo(total=total, free=total // 2, used=total - total // 2)


def test_gpu_auto_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([24 * GiB, 16 * GiB])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    budgets = budgets_for({"cuda1": None, "cuda0": 20 * GiB}, 0.25)
    assert budgets == {"cuda1": 12 * GiB, "cuda0": 20 * GiB}
    assert fake.inits == 1


def test_nvml_that_does_not_initialise_is_no_total(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([GiB], fail_init=True))
    assert load_nvml() is None
    with pytest.raises(BudgetError, match="NVML did not initialise"):
        budgets_for({"cuda0": None}, 0.1)


def test_no_pynvml_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert load_nvml() is None
    assert device_totals(["cuda0"]) == {}


def test_every_gpu_nvml_sees_is_read_for_later_reloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([8 * GiB, 4 * GiB]))
    totals = device_totals([HOST], every_gpu=True, host=GiB)
    assert totals == {HOST: GiB, "cuda0": 8 * GiB, "cuda1": 4 * GiB}
