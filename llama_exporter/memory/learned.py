"""Learned figures: what loads really took, kept in ``<state_dir>/memory-figures.json``.

Keyed by the GGUF file (resolved path, size, mtime) and the launch settings that change
memory (launch.Launch.key), so a changed file or a changed setting starts from the
estimate again. Reads and writes block (atomic write: temp file, fsync, rename): call
them from a thread, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from llama_exporter.atomic import write_atomic
from llama_exporter.memory.figure import DeviceNeed, MemoryFigure

log = logging.getLogger(__name__)

FILE_NAME = "memory-figures.json"
_VERSION = 1


def file_key(path: Path, launch_key: str) -> str:
    """The key of one file version with one set of memory settings (stats the file)."""
    resolved = Path(path).expanduser().resolve()
    st = resolved.stat()
    return f"{resolved}|{st.st_size}|{st.st_mtime_ns}|{launch_key}"


def _to_json(figure: MemoryFigure) -> dict[str, Any]:
    return {
        "devices": {
            device: {"weights": need.weights, "kv": need.kv, "compute": need.compute}
            for device, need in figure.devices.items()
        },
        "source": figure.source,
        "shared_weights_key": figure.shared_weights_key,
    }


def _from_json(data: Any) -> MemoryFigure:
    devices = {
        str(device): DeviceNeed(
            weights=int(need["weights"]), kv=int(need["kv"]), compute=int(need["compute"])
        )
        for device, need in data["devices"].items()
    }
    key = data.get("shared_weights_key")
    return MemoryFigure(
        devices=devices,
        source=str(data.get("source", "learned")),
        shared_weights_key=key if isinstance(key, str) else None,
    )


class LearnedFigures:
    """The learned figures of one state folder; thread-safe, read once, written whole."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._lock = threading.Lock()
        self._figures: dict[str, MemoryFigure] | None = None
        # the file's (inode, size, mtime_ns) when read: every atomic write is a new inode
        self._stamp: tuple[int, int, int] | None = None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _load(self) -> dict[str, MemoryFigure]:
        # read again when another writer (a second book on this folder) changed the file
        stamp = self._file_stamp()
        if self._figures is not None and stamp == self._stamp:
            return self._figures
        self._stamp = stamp
        figures: dict[str, MemoryFigure] = {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("version") == _VERSION:
                for key, data in raw["figures"].items():
                    figures[str(key)] = _from_json(data)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_suffix(".json.corrupt")
            log.warning("%s is unreadable (%s): moved to %s, starting empty", self.path, exc, aside)
            self.path.replace(aside)
        self._figures = figures
        return figures

    def get(self, key: str) -> MemoryFigure | None:
        """The learned figure under key, if any."""
        with self._lock:
            return self._load().get(key)

    def put(self, key: str, figure: MemoryFigure) -> None:
        """Keep figure under key and write the file (atomically)."""
        with self._lock:
            figures = self._load()
            figures[key] = figure
            text = json.dumps(
                {"version": _VERSION, "figures": {k: _to_json(f) for k, f in figures.items()}},
                indent=1,
                sort_keys=True,
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text)
            self._stamp = self._file_stamp()
