"""The schema's memory keys: memory_budget (device -> size or auto) and memory_headroom."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from llama_exporter.config.settings import DEFAULT_MEMORY_HEADROOM
from llama_exporter.config.sizes import parse_share, parse_size
from llama_exporter.config.values import Values, kind_of

# Device names as llama.cpp prints them, lower-cased: cpu, cuda0, vulkan1, metal, rocm0...
_DEVICE_RE = re.compile(r"[a-z][a-z_]*[0-9]*")


class MemorySchema(Values):
    """Reads memory_budget and memory_headroom; every failure is a ConfigError naming the key."""

    def budget(self, value: object) -> Mapping[str, int | None]:
        """device -> bytes, or None for auto."""
        if value is None:  # not in the file: the host is budgeted (auto); {} turns it off
            return MappingProxyType({"cpu": None})
        if not isinstance(value, dict):
            raise self.error(
                "memory_budget",
                f"must be a mapping of device to size, got {kind_of(value)}",
                "write it as memory_budget: {cpu: 12GiB, cuda0: auto}",
            )
        budget: dict[str, int | None] = {}
        for device, size in value.items():
            key = f"memory_budget.{device}"
            if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
                raise self.error(
                    key,
                    f"{device!r} is not a device name",
                    "use cpu for host memory and cuda0, cuda1, vulkan0, metal... for GPUs",
                )
            if size == "auto":
                budget[device] = None
                continue
            try:
                budget[device] = parse_size(size)
            except ValueError as exc:
                raise self.error(key, str(exc), "write a size such as 12GiB, or auto") from None
        return MappingProxyType(budget)

    def headroom(self, value: object) -> float:
        """The share of a device that auto leaves free."""
        if value is None:
            return DEFAULT_MEMORY_HEADROOM
        try:
            return parse_share(value)
        except ValueError as exc:
            raise self.error("memory_headroom", str(exc), "write it as 10%") from None
