"""Tests for llama_exporter.metrics.targets: pure rendering and atomic rewrites."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from llama_exporter.atomic import write_atomic
from llama_exporter.metrics import targets
from llama_exporter.metrics.targets import (
    SELF_FILE,
    SERVERS_FILE,
    TargetsWriter,
    dumps,
    host_port,
    render_file_sd,
    render_self_target,
)
from llama_exporter.states import InstanceStatus, State


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
async def test_instance_leaves_the_file(tmp_path: Path, leaving: State) -> None:
    current = {"a": status("a", State.READY), "b": status("b", State.READY, 18081)}
    writer = TargetsWriter(tmp_path, {}, None, lambda: list(current.values()))
    writer.on_status(None)
    await writer.flush()
    assert [g["labels"] for g in read(writer.servers_path)] == [{"model": "a"}, {"model": "b"}]
    # the event arrives before statuses() shows it: the event wins
    writer.on_status(status("a", leaving))
    current["a"] = status("a", leaving)
    await writer.flush()
    assert [g["labels"] for g in read(writer.servers_path)] == [{"model": "b"}]
    current["b"] = status("b", State.STOPPED, None)
    writer.on_status(current["b"])
    await writer.flush()
    assert read(writer.servers_path) == []


async def test_rewrites_only_when_content_changes(tmp_path: Path) -> None:
    writer = TargetsWriter(tmp_path, {}, None, lambda: [status("a", State.READY)])
    writer.on_status(None)
    await writer.flush()
    assert [g["labels"] for g in read(writer.servers_path)] == [{"model": "a"}]
    assert writer.writes == 1
    writer.servers_path.write_text("sentinel")  # a rewrite would replace this
    writer.on_status(status("a", State.READY))
    await writer.flush()
    assert writer.servers_path.read_text() == "sentinel"
    assert writer.writes == 1


def test_write_self_uses_configured_address(tmp_path: Path) -> None:
    # No event loop here: the writer writes at once.
    writer = TargetsWriter(tmp_path, {"env": "lab"}, "box", lambda: [])
    writer.write_self("0.0.0.0", 9777)
    assert read(writer.self_path) == [{"targets": ["box:9777"], "labels": {"env": "lab"}}]
    TargetsWriter(tmp_path, {}, None, lambda: []).write_self("0.0.0.0", 9777)
    assert read(writer.self_path) == [{"targets": ["127.0.0.1:9777"], "labels": {}}]


class RecordingWrite:
    """Stands in for write_atomic: records (thread, path, text), can hold the first write."""

    def __init__(self, hold_first: bool = False, fail_first: bool = False) -> None:
        self.calls: list[tuple[int, Path, str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_first = fail_first

    def __call__(self, path: Path, data: str) -> None:
        self.calls.append((threading.get_ident(), path, data))
        self.entered.set()
        if not self.release.wait(timeout=60):
            raise AssertionError("the test never released the write")
        if self.fail_first:
            self.fail_first = False
            raise OSError(28, "No space left on device")
        write_atomic(path, data)


async def test_writes_happen_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = RecordingWrite()
    monkeypatch.setattr(targets, "write_atomic", fake)
    writer = TargetsWriter(tmp_path, {}, None, lambda: [status("a", State.READY)])
    writer.on_status(None)
    writer.write_self("127.0.0.1", 9777)
    assert fake.calls == []  # the listener only renders and hands the text over
    await writer.flush()
    assert {p.name for _, p, _ in fake.calls} == {SERVERS_FILE, SELF_FILE}
    assert all(thread != threading.get_ident() for thread, _, _ in fake.calls)


async def test_a_burst_is_coalesced_in_order_and_the_last_state_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = RecordingWrite(hold_first=True)
    monkeypatch.setattr(targets, "write_atomic", fake)
    current: dict[str, InstanceStatus] = {}
    writer = TargetsWriter(tmp_path, {}, None, lambda: list(current.values()))
    current["m0"] = status("m0", State.READY, 18000)
    writer.on_status(current["m0"])
    await asyncio.to_thread(fake.entered.wait, 60)  # the first write is under way
    for i in range(1, 50):  # 49 changes while it is held
        current[f"m{i}"] = status(f"m{i}", State.READY, 18000 + i)
        writer.on_status(current[f"m{i}"])
    fake.release.set()
    await writer.flush()
    expected = dumps(render_file_sd(current.values(), labels={}, address=None))
    assert [text for _, _, text in fake.calls][1:] == [expected]  # one write for the burst
    assert len(read(writer.servers_path)) == 50
    assert writer.servers_path.read_text() == expected
    assert writer.writes == 2


async def test_a_failed_write_is_logged_and_retried_on_the_next_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = RecordingWrite(fail_first=True)
    monkeypatch.setattr(targets, "write_atomic", fake)
    current = {"a": status("a", State.READY)}
    writer = TargetsWriter(tmp_path, {}, None, lambda: list(current.values()))
    writer.on_status(None)
    await writer.flush()
    assert "No space left on device" in caplog.text
    assert not writer.servers_path.exists()
    writer.on_status(None)  # the same content: not on disk yet, so it is written now
    await writer.flush()
    assert [g["labels"] for g in read(writer.servers_path)] == [{"model": "a"}]


async def test_reader_never_sees_invalid_json(tmp_path: Path) -> None:
    current: dict[str, InstanceStatus] = {}
    writer = TargetsWriter(tmp_path, {"env": "lab"}, None, lambda: list(current.values()))
    writer.on_status(None)
    await writer.flush()
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
            if i % 3 == 0:
                await writer.flush()  # let writes land while the reader reads
        await writer.flush()
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads > 0
    assert writer.writes >= 50  # the reader raced many rewrites, not one
    final = dumps(render_file_sd(current.values(), labels={"env": "lab"}, address=None))
    assert writer.servers_path.read_text() == final
