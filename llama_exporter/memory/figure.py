"""What one model instance needs in memory, per device (pure types, no I/O).

Shared by the estimate (before a load), the report parser (after a load), the learned
figures kept in state_dir, the budgets and the admission policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

HOST = "cpu"  # host memory's device name; GPUs are "cuda0", "vulkan0", "metal", ... (lower case)


@dataclass(frozen=True)
class DeviceNeed:
    """Bytes one instance needs on one device, by kind."""

    weights: int = 0
    kv: int = 0
    compute: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute


def _frozen(devices: Mapping[str, DeviceNeed]) -> Mapping[str, DeviceNeed]:
    return MappingProxyType(dict(devices))


@dataclass(frozen=True)
class MemoryFigure:
    """A model's need on every device it uses, and where the figure comes from.

    ``shared_weights_key`` names the GGUF file whose host weights are memory-mapped:
    instances of the same file share those pages, so the host counts them once.
    """

    devices: Mapping[str, DeviceNeed] = field(default_factory=lambda: _frozen({}))
    source: str = "estimate"  # "estimate" | "learned"
    shared_weights_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", _frozen(self.devices))

    def total(self, device: str) -> int:
        need = self.devices.get(device)
        return need.total if need is not None else 0
