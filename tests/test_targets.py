"""Tests for llama_exporter.targets: pure rendering and atomic rewrites."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from llama_exporter.states import InstanceStatus, State
from llama_exporter.targets import (
    TargetsWriter,
    host_port,
    render_file_sd,
    render_self_target,
)


def status(model: str, state: State, port: int | None = 18080) -> InstanceStatus:
    """A status of model in state on 127.0.0.1:port."""
    return InstanceStatus(model=model, state=state, since=0.0, pid=1, port=port)


def test_only_ready_instances_sorted_by_model() -> None:
    statuses = [
        status("zeta", State.READY, 18081),
        status("alpha", State.READY, 18080),
        status("starting", State.STARTING),
        status("stopping", State.STOPPING),
        status("failed", State.FAILED),
        status("backoff", State.BACKOFF),
        status("noport", State.READY, None),
    ]
    groups = render_file_sd(statuses, labels={"env": "lab"}, address=None)
    assert groups == [
        {"targets": ["127.0.0.1:18080"], "labels": {"env": "lab", "model": "alpha"}},
        {"targets": ["127.0.0.1:18081"], "labels": {"env": "lab", "model": "zeta"}},
    ]


def test_address_overrides_host_and_model_label_wins() -> None:
    groups = render_file_sd(
        [status("m", State.READY)], labels={"model": "x"}, address="box.example"
    )
    assert groups == [{"targets": ["box.example:18080"], "labels": {"model": "m"}}]


@pytest.mark.parametrize(
    ("host", "expected"),
    [("10.0.0.1", "10.0.0.1:9"), ("0.0.0.0", "127.0.0.1:9"), ("::1", "[::1]:9"), ("h", "h:9")],
)
def test_host_port(host: str, expected: str) -> None:
    assert host_port(host, 9) == expected


def test_self_target() -> None:
    assert render_self_target("127.0.0.1", 9777, {"env": "lab"}) == [
        {"targets": ["127.0.0.1:9777"], "labels": {"env": "lab"}}
    ]


def read(path: Path) -> list[dict[str, object]]:
    """The parsed targets file."""
    data: list[dict[str, object]] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("leaving", [State.STOPPING, State.BACKOFF, State.FAILED])
def test_instance_leaves_the_file(tmp_path: Path, leaving: State) -> None:
    current = {"a": status("a", State.READY), "b": status("b", State.READY, 18081)}
    writer = TargetsWriter(tmp_path, {}, None, lambda: list(current.values()))
    writer.on_status(None)
    assert [g["labels"] for g in read(writer.servers_path)] == [{"model": "a"}, {"model": "b"}]
    # the event arrives before statuses() shows it: the event wins
    writer.on_status(status("a", leaving))
    current["a"] = status("a", leaving)
    assert [g["labels"] for g in read(writer.servers_path)] == [{"model": "b"}]
    current["b"] = status("b", State.STOPPED, None)
    writer.on_status(current["b"])
    assert read(writer.servers_path) == []


def test_rewrites_only_when_content_changes(tmp_path: Path) -> None:
    writer = TargetsWriter(tmp_path, {}, None, lambda: [status("a", State.READY)])
    writer.on_status(None)
    first = writer.servers_path.stat().st_mtime_ns
    writer.servers_path.write_text("sentinel")  # a rewrite would replace this
    writer.on_status(status("a", State.READY))
    assert writer.servers_path.read_text() == "sentinel"
    assert first > 0


def test_write_self_uses_configured_address(tmp_path: Path) -> None:
    writer = TargetsWriter(tmp_path, {"env": "lab"}, "box", lambda: [])
    writer.write_self("0.0.0.0", 9777)
    assert read(writer.self_path) == [{"targets": ["box:9777"], "labels": {"env": "lab"}}]
    TargetsWriter(tmp_path, {}, None, lambda: []).write_self("0.0.0.0", 9777)
    assert read(writer.self_path) == [{"targets": ["127.0.0.1:9777"], "labels": {}}]


def test_reader_never_sees_invalid_json(tmp_path: Path) -> None:
    current: dict[str, InstanceStatus] = {}
    writer = TargetsWriter(tmp_path, {"env": "lab"}, None, lambda: list(current.values()))
    writer.on_status(None)
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                data = json.loads(writer.servers_path.read_bytes())
            except (OSError, ValueError) as exc:
                problems.append(repr(exc))
                continue
            reads += 1
            if not isinstance(data, list):
                problems.append(f"not a list: {data!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            name = f"m{i % 7}"
            state = State.READY if name not in current else State.STOPPING
            current[name] = status(name, state, 18000 + i % 7)
            writer.on_status(current[name])
            if state is State.STOPPING:
                del current[name]
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads > 0
