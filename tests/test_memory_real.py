"""The estimate against what the real llama-server allocates on the real gemma model.

A representative subset of the grid (context 512 to 32768, 1 to 4 slots, K cache f16 and
q8_0, flash attention on, off and auto); bench/memory.py runs the full grid. Each point
is one real load at -lv 4 (memory/probe.py), parsed by memory/report.py.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from promstack import free_port
from waiting import async_wait_until

from llama_exporter.catalog.gguf_header import read_gguf_header
from llama_exporter.config.settings import Config, ModelConfig, PortRange
from llama_exporter.memory.book import MemoryBook
from llama_exporter.memory.estimate import REPACK_X86_AVX2, estimate
from llama_exporter.memory.figure import HOST
from llama_exporter.memory.launch import parse_launch
from llama_exporter.memory.probe import QUICK, probe
from llama_exporter.states import State
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor

pytestmark = pytest.mark.real

GRID = [
    (512, 1, "f16", "on"),
    (512, 4, "q8_0", "off"),
    (2048, 3, "q8_0", "off"),
    (4096, 2, "f16", "auto"),
    (8192, 4, "f16", "off"),
    (16384, 2, "q8_0", "on"),
    (32768, 1, "f16", "off"),
    (32768, 4, "q8_0", "on"),
]
# Two decimals of a MiB per logged buffer: exact to this many bytes per buffer
ROUNDING = 6 * 1024


def _args(ctx: int, parallel: int, ctk: str, fa: str) -> list[str]:
    return ["-c", str(ctx), "-np", str(parallel), "-ctk", ctk, "-fa", fa]


@pytest.mark.parametrize(("ctx", "parallel", "ctk", "fa"), GRID)
def test_estimate_against_the_real_load(
    llama_server_bin: Path, gemma_gguf: Path, ctx: int, parallel: int, ctk: str, fa: str
) -> None:
    args = _args(ctx, parallel, ctk, fa)
    report = probe(llama_server_bin, gemma_gguf, [*args, *QUICK], port=free_port())
    assert report.complete, "the load did not reach 'model loaded'"
    # what the instance really used, as llama_context printed it
    assert report.n_seq_max == parallel
    assert report.n_ctx_slot == report.n_ctx_seq
    real = report.figure().devices[HOST]
    est = estimate(read_gguf_header(gemma_gguf), parse_launch(args), repack=REPACK_X86_AVX2)
    mine = est.devices[HOST]
    assert set(est.devices) == {HOST}
    # weights (mapped + repacked) and the KV caches follow llama.cpp's own formulas
    assert abs(mine.weights - real.weights) <= 2 * ROUNDING
    assert abs(mine.kv - real.kv) <= 2 * ROUNDING
    # the whole within 10 % (the compute buffer is the approximate part)
    ratio = mine.total / real.total
    assert 0.9 <= ratio <= 1.1, f"estimate / reported = {ratio:.3f}"


def test_learned_figure_is_the_report(
    llama_server_bin: Path, gemma_gguf: Path, tmp_path: Path
) -> None:
    model = ModelConfig(name="gemma", path=gemma_gguf, ctx_size=4096, parallel=2)
    report = probe(
        llama_server_bin, gemma_gguf, ["-c", "4096", "-np", "2", *QUICK], port=free_port()
    )
    book = MemoryBook(tmp_path, repack=REPACK_X86_AVX2)
    assert book.figure(model).source == "estimate"
    book.learn(model, report)
    learned = MemoryBook(tmp_path, repack=REPACK_X86_AVX2).figure(model)
    assert learned.source == "learned"
    assert dict(learned.devices) == dict(report.figure().devices)
    assert learned.shared_weights_key == str(gemma_gguf.resolve())


async def test_the_service_learns_a_real_load(
    llama_server_bin: Path, gemma_gguf: Path, tmp_path: Path
) -> None:
    """Through the real path: Supervisor -> llama-server at -lv 4 -> its output captured
    -> MemoryBook.learn_lines; the learned figure is exactly what a probe of the same
    settings reports."""
    model = ModelConfig(name="gemma", path=gemma_gguf, ctx_size=8192, parallel=2)
    book = MemoryBook(tmp_path / "state", repack=REPACK_X86_AVX2)
    first = random.randrange(20000, 60000)
    config = Config(
        source=None,
        llama_server=llama_server_bin,
        state_dir=tmp_path / "state",
        ports=PortRange(first, first + 20),
    )
    sup = Supervisor(config, StaticModels([model]), learn=book.learn_lines)
    try:
        await sup.start("gemma")
        assert (await sup.wait_settled("gemma", timeout=120)).state is State.READY
        await async_wait_until(lambda: book.learned.get(book.key(model)), "the learned figure")
    finally:
        await sup.shutdown()
    learned = await asyncio.to_thread(book.figure, model)
    assert learned.source == "learned"
    args = ["-c", "8192", "-np", "2", *QUICK]
    report = await asyncio.to_thread(probe, llama_server_bin, gemma_gguf, args, port=free_port())
    assert dict(learned.devices) == dict(report.figure().devices)
