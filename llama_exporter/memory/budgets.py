"""Budgets per device: the config's sizes, and `auto` = the device's total less the headroom.

resolve_budgets is pure; device_totals reads the host's total (psutil) and each GPU's
through NVML (the optional extra `nvidia-ml-py`, module pynvml) when it initialises.
Call device_totals off the event loop: NVML's first call can take a second.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import psutil

from llama_exporter.memory.figure import HOST

log = logging.getLogger(__name__)

_CUDA_RE = re.compile(r"cuda([0-9]+)")


class BudgetError(Exception):
    """A budget that cannot be resolved (auto on a device whose total nobody can read)."""


def resolve_budgets(
    spec: Mapping[str, int | None], headroom: float, totals: Mapping[str, int]
) -> dict[str, int]:
    """device -> bytes: written sizes as they are, auto as total x (1 - headroom)."""
    budgets: dict[str, int] = {}
    for device, size in spec.items():
        if size is not None:
            budgets[device] = size
            continue
        total = totals.get(device)
        if total is None:
            raise BudgetError(_no_total(device))
        budgets[device] = int(total * (1.0 - headroom))
    return budgets


def _no_total(device: str) -> str:
    if device == HOST:
        return "memory_budget.cpu: auto, but the host's memory total cannot be read"
    if _CUDA_RE.fullmatch(device):
        return (
            f"memory_budget.{device}: auto needs NVML to read the GPU's total, and NVML did "
            f"not initialise (install the extra: pip install 'llama-exporter[nvidia]', and "
            f"check the NVIDIA driver), or write a size such as {device}: 22GiB"
        )
    return (
        f"memory_budget.{device}: auto cannot read the total of {device} (only cpu and cudaN "
        f"can be read): write a size such as {device}: 8GiB"
    )


def host_total() -> int:
    """The host's physical memory in bytes."""
    return int(psutil.virtual_memory().total)


def load_nvml() -> ModuleType | None:
    """pynvml, initialised, or None when it is not installed or cannot initialise."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded...
        log.info("NVML did not initialise (%s): GPU budgets must be written", exc)
        return None
    return nvml


def gpu_totals(nvml: Any) -> dict[str, int]:
    """cudaN -> total bytes of each GPU NVML sees, in NVML's index order."""
    totals: dict[str, int] = {}
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        totals[f"cuda{index}"] = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    return totals


def device_totals(
    devices: Iterable[str],
    *,
    every_gpu: bool = False,
    nvml: Any | None = None,
    host: int | None = None,
) -> dict[str, int]:
    """The totals auto needs for the devices named (every GPU NVML sees with every_gpu).

    Blocking: call it in a thread.
    """
    wanted = set(devices)
    totals: dict[str, int] = {}
    if HOST in wanted:
        totals[HOST] = host_total() if host is None else host
    if every_gpu or any(_CUDA_RE.fullmatch(d) for d in wanted):
        module = nvml if nvml is not None else load_nvml()
        if module is not None:
            try:
                gpus = gpu_totals(module)
            except Exception as exc:
                log.warning("NVML: cannot read GPU memory totals: %s", exc)
                gpus = {}
            totals.update({d: t for d, t in gpus.items() if every_gpu or d in wanted})
    return totals


def auto_devices(spec: Mapping[str, int | None]) -> list[str]:
    """The devices whose budget is auto."""
    return [d for d, size in spec.items() if size is None]


def budgets_for(
    spec: Mapping[str, int | None], headroom: float, *, nvml: Any | None = None
) -> dict[str, int]:
    """Resolve the config's budgets, reading the totals auto needs (blocking); BudgetError."""
    return resolve_budgets(spec, headroom, device_totals(auto_devices(spec), nvml=nvml))
