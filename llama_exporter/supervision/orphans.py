"""Orphans: the record of running children in <state_dir>/instances.json.

Children are started with PR_SET_PDEATHSIG, so they die with a SIGKILLed service;
this record is the second line: the next start kills what is still alive of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from llama_exporter.atomic import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceRecord:
    """A llama-server child as recorded on disk: enough to find it again after a crash."""

    model: str
    pid: int
    create_time: float | None  # psutil create_time: tells a reused pid apart
    port: int


def write_records(path: Path, records: Sequence[InstanceRecord]) -> None:
    """Atomically replace path with the records."""
    data = {"instances": [dataclasses.asdict(r) for r in records]}
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_records(path: Path) -> list[InstanceRecord]:
    """Records from path; a missing or unreadable file gives none (logged)."""
    try:
        data = json.loads(path.read_text())
        return [
            InstanceRecord(str(r["model"]), int(r["pid"]), r.get("create_time"), int(r["port"]))
            for r in data["instances"]
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []


def same_process(pid: int, create_time: float | None) -> bool:
    """True when pid is alive (not a zombie) and is the process that was recorded."""
    if create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        return (
            abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


async def kill_recorded(records: Sequence[InstanceRecord], settle: float = 3.0) -> list[int]:
    """SIGKILL the recorded processes (and their groups) still alive; returns their pids."""
    killed: list[int] = []
    for record in records:
        if not same_process(record.pid, record.create_time):
            continue
        try:
            if os.getpgid(record.pid) == record.pid:
                os.killpg(record.pid, signal.SIGKILL)
            else:
                os.kill(record.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as exc:
            log.warning("cannot kill leftover pid %d: %s", record.pid, exc)
            continue
        killed.append(record.pid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    # Not our children: no exit to await, so poll briefly.
    while loop.time() < deadline and any(same_process(r.pid, r.create_time) for r in records):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return killed


class InstancesFile:
    """<state_dir>/instances.json: the children this service runs (written off the loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[InstanceRecord] | None = None
        self._writer: asyncio.Task[None] | None = None

    def update(self, records: Iterable[InstanceRecord]) -> None:
        """Record these children soon (writes are serialised; the latest wins)."""
        self._pending = list(records)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending is not None:
            records, self._pending = self._pending, None
            try:
                await asyncio.to_thread(write_records, self.path, records)
            except OSError as exc:
                log.warning("cannot record instances in %s: %s", self.path, exc)

    async def flush(self) -> None:
        """Wait until the last update is on disk."""
        if self._writer is not None:
            await self._writer

    async def recover(self) -> list[int]:
        """Kill recorded children of a previous run that are still alive; returns their pids."""
        records = await asyncio.to_thread(read_records, self.path)  # not on the loop
        killed = await kill_recorded(records)
        for r in records:
            if r.pid in killed:
                log.warning(
                    "%s: killed llama-server pid %d (port %d) left over from a previous run",
                    r.model,
                    r.pid,
                    r.port,
                )
        return killed
