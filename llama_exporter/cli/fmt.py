"""Pure text for the client commands: durations, byte sizes, a model's idle column, tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO


def fmt_duration(seconds: float | None) -> str:
    """Seconds as 42s, 3m07s or 2h05m; None as -."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt_bytes(value: float | None) -> str:
    """A byte count in B, KB, MB or GB; None as -."""
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Write rows as left-aligned columns three spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def fmt_idle(st: dict[str, Any], now: float) -> str:
    """Time since the last gateway request or start, and the idle TTL left (or pinned)."""
    if st["state"] != "ready":
        return "-"
    if st.get("in_flight"):
        idle = "busy"
    elif st.get("last_used") is not None:
        idle = fmt_duration(max(0.0, now - st["last_used"]))
    else:
        idle = "unused"
    if st.get("pinned"):
        return f"{idle}, pinned"
    ttl = st.get("idle_ttl") or 0
    if ttl > 0 and st.get("last_used") is not None and not st.get("in_flight"):
        left = max(0.0, st["last_used"] + ttl - now)
        return f"{idle}, unload in {fmt_duration(left)}"
    return idle
