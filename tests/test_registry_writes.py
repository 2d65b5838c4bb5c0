"""The registry's models.json writes off the loop: in order, whole, never parted from memory."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from waiting import async_wait_until

from llama_exporter.catalog.models_file import ModelsFile
from llama_exporter.catalog.registry import ModelConflict, Registry
from llama_exporter.config.settings import Config, ModelConfig, ModelDefaults
from llama_exporter.testing.gguf_writer import write_minimal_gguf


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_minimal_gguf(folder / f"{name}.gguf")
    return folder


def make_config(tmp_path: Path, models: tuple[ModelConfig, ...] = ()) -> Config:
    return Config(
        source=tmp_path / "config.yaml",
        models=models,
        state_dir=tmp_path / "state",
        defaults=ModelDefaults(ctx_size=1024, parallel=2),
    )


def stored_names(registry: Registry) -> list[str]:
    return [m["name"] for m in json.loads(registry.file.path.read_text())["models"]]


def api_names(registry: Registry) -> list[str]:
    return [m.name for m in registry.all() if m.source == "api"]


class GatedWrites:
    """ModelsFile.write wrapped: records each write's thread and names, and can be held."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
        self.threads: list[threading.Thread] = []
        self.written: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        original = ModelsFile.write

        def write(file: ModelsFile, models: Iterable[ModelConfig]) -> None:
            models = list(models)
            self.threads.append(threading.current_thread())
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
            if self.fail:
                raise OSError(28, "No space left on device")
            original(file, models)
            self.written.append([m.name for m in models])

        monkeypatch.setattr(registry.file, "write", write.__get__(registry.file))


@pytest.fixture
def registry(tmp_path: Path, files: Path) -> Iterator[Registry]:
    registry = Registry(make_config(tmp_path, (ModelConfig("conf", files / "a.gguf"),)))
    registry.load()
    yield registry


async def test_aadd_and_removal_write_in_a_worker_thread(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = GatedWrites(monkeypatch, registry)
    await registry.aadd("m", files / "b.gguf")
    await registry.begin_remove("m")
    assert len(writes.threads) == 2
    assert all(t is not threading.main_thread() for t in writes.threads)
    assert writes.written == [["m"], []]
    assert stored_names(registry) == [] and "m" not in registry


async def test_aload_reads_in_a_worker_thread(
    tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, (ModelConfig("conf", files / "a.gguf"),))
    first = Registry(config)
    first.load()
    first.add("api", files / "b.gguf")
    readers: list[threading.Thread] = []
    original = ModelsFile.read

    def read(file: ModelsFile, defaults: ModelDefaults) -> object:
        readers.append(threading.current_thread())
        return original(file, defaults)

    monkeypatch.setattr(ModelsFile, "read", read)
    second = Registry(config)
    await second.aload()
    assert second.names() == ["conf", "api"]
    assert readers and readers[0] is not threading.main_thread()


async def test_removals_are_written_in_call_order(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        registry.add(name, files / "b.gguf")
    writes = GatedWrites(monkeypatch, registry)
    writes.gate.clear()
    first = registry.begin_remove("a")
    await async_wait_until(writes.entered.is_set, "the first write began")
    rest = [registry.begin_remove("c"), registry.begin_remove("b")]
    writes.gate.set()
    await asyncio.gather(first, *rest)
    assert writes.written == [["b", "c"], ["b"], []]


async def test_concurrent_changes_lose_nothing(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registry.aadd("old", files / "c.gguf")
    writes = GatedWrites(monkeypatch, registry)
    writes.gate.clear()  # the first write waits until every change has been asked for
    adds = [asyncio.ensure_future(registry.aadd(n, files / "b.gguf")) for n in ("x", "y")]
    await async_wait_until(writes.entered.is_set, "the first write began")
    removal = registry.begin_remove("old")
    assert "old" not in registry  # gone at once, before its write
    third = asyncio.ensure_future(registry.aadd("z", files / "c.gguf"))
    writes.gate.set()
    await asyncio.gather(*adds, removal, third)
    # The header reads decide whether y or the removal queues first; either way each
    # write holds what the ones before it wrote plus its own change: nothing lost.
    assert writes.written[0] in (["old", "x"], ["old", "y"]) and len(writes.written) == 4
    for before, after in zip(writes.written, writes.written[1:], strict=False):
        assert set(before) - set(after) <= {"old"}
    # The order of x, y and z is the order their header reads finished: the file and the
    # API agree on it, and all three are there.
    assert stored_names(registry) == api_names(registry)
    assert sorted(stored_names(registry)) == ["x", "y", "z"]


async def test_a_failed_write_changes_nothing(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registry.aadd("keep", files / "b.gguf")
    writes = GatedWrites(monkeypatch, registry)
    writes.fail = True
    with pytest.raises(OSError, match="No space"):
        await registry.aadd("new", files / "c.gguf")
    assert "new" not in registry
    with pytest.raises(OSError, match="No space"):
        await registry.begin_remove("keep")
    assert "keep" in registry  # back, as the file still holds it
    assert stored_names(registry) == api_names(registry) == ["keep"]


async def test_a_cancelled_caller_does_not_part_file_and_memory(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = GatedWrites(monkeypatch, registry)
    writes.gate.clear()
    adding = asyncio.ensure_future(registry.aadd("m", files / "b.gguf"))
    await async_wait_until(writes.entered.is_set, "the write began")
    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adding
    writes.gate.set()
    await async_wait_until(lambda: "m" in registry, "the write finished and m was added")
    assert stored_names(registry) == ["m"]


async def test_the_same_name_twice_at_once_is_one_conflict(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = GatedWrites(monkeypatch, registry)
    writes.gate.clear()
    first = asyncio.ensure_future(registry.aadd("m", files / "b.gguf"))
    await async_wait_until(writes.entered.is_set, "the first write began")
    second = asyncio.ensure_future(registry.aadd("m", files / "c.gguf"))
    writes.gate.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert results[0] == registry.get("m")
    assert isinstance(results[1], ModelConflict) and results[1].status == 409
    assert writes.written == [["m"]]
    assert registry.get("m").path == files / "b.gguf"


async def test_a_name_being_removed_is_not_free_yet(
    registry: Registry, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registry.aadd("m", files / "b.gguf")
    writes = GatedWrites(monkeypatch, registry)
    writes.gate.clear()
    removal = registry.begin_remove("m")
    await async_wait_until(writes.entered.is_set, "the removal's write began")
    with pytest.raises(ModelConflict, match="already exists"):
        await registry.aadd("m", files / "c.gguf")
    writes.gate.set()
    await removal
    await registry.aadd("m", files / "c.gguf")
    assert stored_names(registry) == ["m"]
