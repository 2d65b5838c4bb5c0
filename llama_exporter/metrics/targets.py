"""Prometheus service discovery: file_sd / HTTP SD groups (pure) and their atomic files.

``llama-servers.json`` lists every ready llama-server (one group per model) for the
``llama-server`` job; ``llama-exporter.json`` lists the service itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from llama_exporter.atomic import write_atomic
from llama_exporter.states import InstanceStatus, State

log = logging.getLogger(__name__)

SERVERS_FILE = "llama-servers.json"
SELF_FILE = "llama-exporter.json"
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}

TargetGroup = dict[str, Any]


def host_port(host: str, port: int) -> str:
    """host:port as Prometheus expects it (IPv6 in brackets, wildcards as loopback)."""
    if host in _WILDCARDS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def render_file_sd(
    statuses: Iterable[InstanceStatus], *, labels: Mapping[str, str], address: str | None
) -> list[TargetGroup]:
    """One target group per READY instance, sorted by model; address overrides the host."""
    groups: list[TargetGroup] = []
    for status in sorted(statuses, key=lambda s: s.model):
        if status.state is not State.READY or status.port is None:
            continue
        target = host_port(address or status.host, status.port)
        groups.append({"targets": [target], "labels": {**labels, "model": status.model}})
    return groups


def render_self_target(host: str, port: int, labels: Mapping[str, str]) -> list[TargetGroup]:
    """The target group of the service's own /metrics."""
    return [{"targets": [host_port(host, port)], "labels": dict(labels)}]


def dumps(groups: list[TargetGroup]) -> str:
    """Stable JSON text of target groups."""
    return json.dumps(groups, indent=2, sort_keys=True) + "\n"


class TargetsWriter:
    """Keeps <dir>/llama-servers.json equal to the ready instances; writes the self target.

    Rendering happens in the listener; the atomic write (two fsyncs) happens off the
    event loop, in one writer task that always writes the newest text: writes never
    overlap or reorder, a burst of changes costs at most one write after the current
    one, and the last state is what stays on disk.
    """

    def __init__(
        self,
        directory: Path,
        labels: Mapping[str, str],
        address: str | None,
        statuses: Callable[[], list[InstanceStatus]],
    ) -> None:
        self.directory = Path(directory)
        self._labels = dict(labels)
        self._address = address
        self._statuses = statuses
        self._latest: dict[Path, str] = {}  # newest text per file: on disk or on its way
        self._pending: dict[Path, str] = {}  # newest text per file not yet handed to a write
        self._writer: asyncio.Task[None] | None = None
        self._self_address: tuple[str, int] | None = None  # write_self's, for a reload
        self.writes = 0  # completed file writes (tests and benchmarks read it)

    def reconfigure(self, directory: Path, labels: Mapping[str, str], address: str | None) -> None:
        """A reload's targets settings or host label: both files rewritten (atomically).

        A new folder gets the files; the old folder's are emptied, so Prometheus does not
        keep scraping what they listed.
        """
        directory = Path(directory)
        if directory != self.directory:
            for old in (self.servers_path, self.self_path):
                if old in self._latest:
                    self._submit(old, dumps([]))
        self.directory, self._labels, self._address = directory, dict(labels), address
        self.on_status(None)
        if self._self_address is not None:
            self.write_self(*self._self_address)

    @property
    def servers_path(self) -> Path:
        """Path of the llama-server targets file."""
        return self.directory / SERVERS_FILE

    @property
    def self_path(self) -> Path:
        """Path of the service's own targets file."""
        return self.directory / SELF_FILE

    def on_status(self, status: InstanceStatus | None = None) -> None:
        """Supervisor listener (None: just re-check); rewrites the file when the set changes."""
        current = {s.model: s for s in self._statuses()}
        if status is not None:
            current[status.model] = status  # the event may be newer than statuses()
        text = dumps(render_file_sd(current.values(), labels=self._labels, address=self._address))
        self._submit(self.servers_path, text)

    def write_self(self, host: str, port: int) -> None:
        """Write <dir>/llama-exporter.json with the service's address."""
        self._self_address = (host, port)
        groups = render_self_target(self._address or host, port, self._labels)
        self._submit(self.self_path, dumps(groups))

    async def flush(self) -> None:
        """Wait until everything submitted so far is on disk (or failed and was logged)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    def _submit(self, path: Path, text: str) -> None:
        if self._latest.get(path) == text:
            return  # already written, being written, or waiting to be
        self._latest[path] = text
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): write here and now
            self._done(path, text, self._write(path, text))
            return
        self._pending[path] = text
        if self._writer is None:
            self._writer = loop.create_task(self._write_loop(), name="targets-writer")

    async def _write_loop(self) -> None:
        # The dicts are only touched on the loop; the worker thread only writes the file.
        try:
            while self._pending:
                path = next(iter(self._pending))
                text = self._pending.pop(path)
                self._done(path, text, await asyncio.to_thread(self._write, path, text))
        finally:
            self._writer = None

    def _done(self, path: Path, text: str, ok: bool) -> None:
        if ok:
            self.writes += 1
        elif self._latest.get(path) == text:
            del self._latest[path]  # not on disk: the next change tries again

    @staticmethod
    def _write(path: Path, text: str) -> bool:
        try:
            write_atomic(path, text)
        except Exception:
            log.exception("cannot write %s", path)
            return False
        return True
