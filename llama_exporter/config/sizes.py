"""Pure: memory sizes ("12GiB", "512 MB", bytes) and shares ("10 %", 0.1), read and written."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_SHARE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")


def parse_size(value: object) -> int:
    """A size in bytes from an integer or a string such as "12GiB" or "1.5 GB"; ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size such as 12GiB, got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ValueError(f"must be a size such as 12GiB or 512MiB, got {value!r}")
    if unit not in _UNITS:
        raise ValueError(
            f"unknown unit {unit!r} in {value!r}: use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)"
        )
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"must be more than 0 bytes, got {value!r}")
    return int(size)


def parse_share(value: object) -> float:
    """A share 0 <= x < 1 from "10 %" / "10%" or a fraction such as 0.1; ValueError says why."""
    if isinstance(value, str) and (match := _SHARE_RE.fullmatch(value)):
        share = float(match.group(1)) / 100
    elif isinstance(value, int | float) and not isinstance(value, bool):
        share = float(value)
        if share >= 1:
            raise ValueError(f"{value!r} reads as {value}00 %: write a percentage such as 10%")
    else:
        raise ValueError(f"must be a percentage such as 10%, got {value!r}")
    if not 0 <= share < 1:
        raise ValueError(f"must be at least 0 % and below 100 %, got {value!r}")
    return share


def format_size(n: float) -> str:
    """Bytes for people, binary units: 1.2 GiB, 512 MiB, 300 B."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
