"""The service learns each load's figure: the Supervisor hands a ready instance's memory
lines (captured from its output, -lv 4) to MemoryBook.learn_lines, in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from pathlib import Path

from waiting import async_wait_until

from llama_exporter.config.settings import Config, ModelConfig, PortRange
from llama_exporter.memory.book import MemoryBook
from llama_exporter.memory.report import MIB
from llama_exporter.states import State
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor


def _config(tmp_path: Path, binary: Path) -> Config:
    first = random.randrange(20000, 60000)
    return Config(
        source=None,
        llama_server=binary,
        state_dir=tmp_path / "state",
        ports=PortRange(first, first + 20),
    )


async def test_a_ready_instance_teaches_the_book(
    tmp_path: Path, fake_server_bin: Path, fake_gguf: Path
) -> None:
    model = ModelConfig("m", fake_gguf, ctx_size=2048, parallel=2)
    book = MemoryBook(tmp_path / "state", repack=frozenset())
    sup = Supervisor(
        _config(tmp_path, fake_server_bin), StaticModels([model]), learn=book.learn_lines
    )
    try:
        await sup.start("m")
        status = await sup.wait_settled("m", timeout=30)
        assert status.state is State.READY

        def learned() -> bool:
            return book.learned.get(book.key(model)) is not None

        await async_wait_until(learned, "the learned figure")
        figure = await asyncio.to_thread(book.figure, model)
        assert figure.source == "learned"
        # the fake's lines at -lv 4: 1.5 MiB mapped, 2 MiB KV (2048 / 1024), 2 + 0.5 MiB
        cpu = figure.devices["cpu"]
        assert (cpu.weights, cpu.kv, cpu.compute) == (
            round(1.5 * MIB),
            round(2.0 * MIB),
            round(2.0 * MIB) + round(0.5 * MIB),
        )
        # kept in state_dir: a new book (a restart) has it
        again = await asyncio.to_thread(MemoryBook(tmp_path / "state").figure, model)
        assert again == figure
    finally:
        pid = sup.status("m").pid
        await sup.shutdown()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_failing_book_does_not_fail_the_instance(
    tmp_path: Path, fake_server_bin: Path, fake_gguf: Path
) -> None:
    calls: list[list[str]] = []

    def broken(model: ModelConfig, lines: object) -> None:
        calls.append(list(lines))  # type: ignore[call-overload]
        raise OSError("disk full")

    model = ModelConfig("m", fake_gguf)
    sup = Supervisor(_config(tmp_path, fake_server_bin), StaticModels([model]), learn=broken)
    try:
        await sup.start("m")
        assert (await sup.wait_settled("m", timeout=30)).state is State.READY
        await async_wait_until(lambda: calls, "the learn call")
        assert any("KV buffer size" in line for line in calls[0])
        assert sup.status("m").state is State.READY
    finally:
        await sup.shutdown()
