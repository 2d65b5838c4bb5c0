"""The Supervisor driving the real llama-server on the real gemma model."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from waiting import async_wait_until

from llama_exporter.config.settings import Config, ModelConfig, PortRange, RestartPolicy
from llama_exporter.states import InstanceStatus, State
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor

pytestmark = pytest.mark.real


@pytest.fixture
async def supervisor(
    llama_server_bin: Path, gemma_gguf: Path, tmp_path: Path
) -> AsyncIterator[Supervisor]:
    first = random.randrange(20000, 60000)
    config = Config(
        source=None,
        llama_server=llama_server_bin,
        state_dir=tmp_path / "state",
        ports=PortRange(first, first + 50),
        ready_timeout=120,
        restart=RestartPolicy(backoff_initial=0.1),
    )
    model = ModelConfig("gemma", gemma_gguf, ctx_size=2048, parallel=2)
    sup = Supervisor(config, StaticModels([model]))
    yield sup
    await sup.shutdown()


def gone(pid: int) -> bool:
    """True when pid does not exist at all (a zombie counts as still there)."""
    return not psutil.pid_exists(pid)


async def test_start_complete_stop(supervisor: Supervisor) -> None:
    await supervisor.start("gemma")
    status = await supervisor.wait_settled("gemma", timeout=120)
    assert status.state is State.READY, status.last_error
    assert status.pid is not None and status.base_url is not None
    async with aiohttp.ClientSession() as session:
        payload = {"prompt": "The capital of France is", "n_predict": 8}
        async with session.post(f"{status.base_url}/completion", json=payload) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert isinstance(body["content"], str)
        assert body["timings"]["predicted_n"] > 0
        async with session.get(f"{status.base_url}/metrics") as resp:
            assert resp.status == 200  # --metrics was passed
    stopped = await supervisor.stop("gemma")
    assert stopped.state is State.STOPPED
    assert gone(status.pid)  # reaped by us: not even a zombie


async def test_kill_9_is_noticed_and_restarted(supervisor: Supervisor) -> None:
    seen: list[InstanceStatus] = []
    supervisor.subscribe(seen.append)
    await supervisor.start("gemma")
    ready = await supervisor.wait_settled("gemma", timeout=120)
    assert ready.state is State.READY and ready.pid is not None, ready.last_error
    os.kill(ready.pid, signal.SIGKILL)

    def restarted() -> InstanceStatus | None:
        status = supervisor.status("gemma")
        return status if status.state is State.READY and status.restarts == 1 else None

    status = await async_wait_until(restarted, "a restart after kill -9", limit=120)
    # Noticed by the exit itself (the reason names the signal), not by the /health
    # watchdog, which would only call it hung after hang_timeout.
    backoff = next(s for s in seen if s.state is State.BACKOFF)
    assert "killed by SIGKILL" in (backoff.last_error or ""), backoff.last_error
    assert status.pid != ready.pid
    assert supervisor.counters("gemma").restarts_total == 1
