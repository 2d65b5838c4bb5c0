"""Prometheus service discovery: file_sd / HTTP SD groups (pure) and their atomic files.

``llama-servers.json`` lists every ready llama-server (one group per model) for the
``llama-server`` job; ``llama-exporter.json`` lists the service itself.
"""

from __future__ import annotations

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
    """Keeps <dir>/llama-servers.json equal to the ready instances; writes the self target."""

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
        self._written: str | None = None

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
        if text == self._written:
            return
        try:
            write_atomic(self.servers_path, text)
        except OSError:
            log.exception("cannot write %s", self.servers_path)
            return
        self._written = text

    def write_self(self, host: str, port: int) -> None:
        """Write <dir>/llama-exporter.json with the service's address."""
        groups = render_self_target(self._address or host, port, self._labels)
        try:
            write_atomic(self.self_path, dumps(groups))
        except OSError:
            log.exception("cannot write %s", self.self_path)
