"""The figure a real load reports is learned and used for the next admission (the real
llama-server, which the service starts at -lv 4, the real gemma model, MemoryBook)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from waiting import async_wait_until

from llama_exporter.config.settings import Config, ModelConfig, PortRange
from llama_exporter.memory.book import MemoryBook
from llama_exporter.memory.figure import HOST
from llama_exporter.states import State
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor

pytestmark = pytest.mark.real


async def test_a_ready_load_teaches_its_figure(
    llama_server_bin: Path, gemma_gguf: Path, tmp_path: Path
) -> None:
    first = random.randrange(20000, 60000)
    cfg = Config(
        source=None,
        llama_server=llama_server_bin,
        state_dir=tmp_path / "state",
        ports=PortRange(first, first + 20),
        ready_timeout=120,
    )
    model = ModelConfig("gemma", gemma_gguf, ctx_size=2048, parallel=2)
    book = MemoryBook(cfg.state_dir)
    sup = Supervisor(
        cfg, StaticModels([model]), memory=book, budgets={HOST: 8 * 2**30}, learn=book.learn_lines
    )
    try:
        await sup.start("gemma")
        status = await sup.wait_settled("gemma", timeout=120)
        assert status.state is State.READY, status.last_error
        estimate = sup.ledger.figures["gemma"]
        assert estimate.source == "estimate"
        await async_wait_until(
            lambda: sup.ledger.figures["gemma"].source == "learned", "the learned figure"
        )
        learned = book.figure(model)
        assert learned.source == "learned" and learned.total(HOST) > 0
        # the next admission reads the learned figure; it is within 10 % of the estimate
        await sup.refresh_figures()
        assert sup.ledger.reported["gemma"] == learned
        assert learned.total(HOST) == pytest.approx(estimate.total(HOST), rel=0.10)
    finally:
        await sup.shutdown()
