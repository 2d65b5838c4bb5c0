"""process.py: argv, exit descriptions, and one real child (the fake llama-server)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from waiting import async_wait_until

from llama_exporter.config.settings import ModelConfig
from llama_exporter.supervision.command import build_argv
from llama_exporter.supervision.logfile import rotated_log
from llama_exporter.supervision.orphans import (
    InstanceRecord,
    InstancesFile,
    read_records,
    same_process,
    write_records,
)
from llama_exporter.supervision.process import (
    LlamaProcess,
    StartError,
    describe_exit,
    hang_watch,
    health_status,
    log_header,
    port_bindable,
)


def test_build_argv_passes_the_flags_the_service_needs() -> None:
    model = ModelConfig("g", Path("/m/g.gguf"), ctx_size=2048, parallel=2, args=("-t", "2"))
    assert build_argv("/bin/llama-server", model, "127.0.0.1", 18080) == [
        "/bin/llama-server",
        "-m",
        "/m/g.gguf",
        "--alias",
        "g",
        "--host",
        "127.0.0.1",
        "--port",
        "18080",
        "--metrics",
        "-c",
        "2048",
        "-np",
        "2",
        "-lv",
        "4",
        "--cors-origins",
        "none",
        "--no-cors-credentials",
        "-t",
        "2",
    ]


def test_describe_exit_code_and_tail() -> None:
    text = describe_exit(1, during_load=False, log_tail=["a", "", "b", "c", "d", "e", "f"])
    assert text.startswith("llama-server exited with code 1 after it was ready")
    assert text.endswith("Last log lines:\nb\nc\nd\ne\nf")


def test_describe_exit_sigill_during_load_explains_the_cpu() -> None:
    text = describe_exit(-signal.SIGILL, during_load=True, log_tail=[])
    assert "killed by SIGILL while loading the model" in text
    assert "instructions this one lacks" in text
    assert "GGML_NATIVE=OFF" in text and "README" in text


def test_describe_exit_other_signals() -> None:
    assert "SIGKILL" in describe_exit(-9, during_load=False, log_tail=[])
    assert "GGML_NATIVE" not in describe_exit(-9, during_load=True, log_tail=[])
    assert "signal 77" in describe_exit(-77, during_load=True, log_tail=[])


def test_records_roundtrip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    assert read_records(path) == []
    records = [InstanceRecord("m", 12, 3.5, 18080), InstanceRecord("n", 13, None, 18081)]
    write_records(path, records)
    assert read_records(path) == records
    path.write_text("{not json")
    assert read_records(path) == []
    path.write_text(json.dumps({"instances": [{"pid": 1}]}))
    assert read_records(path) == []


def test_same_process_checks_create_time() -> None:
    me = psutil.Process(os.getpid())
    assert same_process(me.pid, me.create_time())
    assert not same_process(me.pid, me.create_time() - 5)
    assert not same_process(me.pid, None)
    assert not same_process(2**22 + 12345, 1.0)


async def test_instances_file_writes_latest(tmp_path: Path) -> None:
    f = InstancesFile(tmp_path / "s" / "instances.json")
    f.update([InstanceRecord("a", 1, 1.0, 1)])
    f.update([InstanceRecord("b", 2, 2.0, 2)])
    await f.flush()
    assert read_records(f.path) == [InstanceRecord("b", 2, 2.0, 2)]


async def test_hang_watch_reports_after_limit() -> None:
    answers = iter([True, False, False, False, False, False, False, False])

    async def health(within: float) -> bool:
        return next(answers)

    reason = await asyncio.wait_for(hang_watch(health, 0.03, 0.01), timeout=2)
    assert reason == "not answering /health for 0.03 s (hung)"


async def test_health_status_of_a_closed_port_is_none() -> None:
    port = free_port()
    assert await health_status("127.0.0.1", port, 0.5) is None


# --- a real child: the fake llama-server ---------------------------------------------


def free_port() -> int:
    for _ in range(100):
        port = random.randrange(20000, 60000)
        if port_bindable("127.0.0.1", port):
            return port
    raise RuntimeError("no free port")


def gone(pid: int) -> bool:
    """True when pid no longer exists or is a zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
async def spawned() -> AsyncIterator[list[LlamaProcess]]:
    procs: list[LlamaProcess] = []
    yield procs
    for proc in procs:
        proc.kill()
        await proc.wait()


async def spawn(
    binary: Path, tmp_path: Path, procs: list[LlamaProcess], *args: str, **env: str
) -> LlamaProcess:
    model = ModelConfig("m", tmp_path / "m.gguf", ctx_size=512, parallel=2, args=args, env=env)
    proc = await LlamaProcess.spawn(binary, model, "127.0.0.1", free_port(), tmp_path / "m.log")
    procs.append(proc)
    return proc


async def test_spawn_ready_log_and_clean_stop(
    fake_server_bin: Path, tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    proc = await spawn(fake_server_bin, tmp_path, spawned)
    assert os.getpgid(proc.pid) == proc.pid  # its own process group
    assert proc.create_time is not None
    await proc.wait_ready(30)
    assert await proc.health(1.0)
    assert await health_status("127.0.0.1", proc.port, 1.0, "/slots") == 200
    assert await proc.stop(5) == 0
    assert proc.returncode == 0
    assert not psutil.pid_exists(proc.pid)  # reaped, not a zombie
    text = (tmp_path / "m.log").read_text()
    assert "starting: " in text and "--metrics" in text
    assert "server is listening" in text
    assert any("cleaning up" in line for line in proc.tail(5))


async def test_wait_resolves_at_once_on_sigkill(
    fake_server_bin: Path, tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    proc = await spawn(fake_server_bin, tmp_path, spawned)
    await proc.wait_ready(30)
    os.kill(proc.pid, signal.SIGKILL)
    # wait() is the child watcher's exit future, not a poll: it resolves with the signal.
    # (How fast is the machine's business; the bound only turns a hang into a failure.)
    assert await asyncio.wait_for(proc.wait(), timeout=60) == -signal.SIGKILL
    assert proc.returncode == -signal.SIGKILL
    assert gone(proc.pid)


async def test_wait_ready_raises_on_exit_with_reason(
    fake_server_bin: Path, tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    proc = await spawn(fake_server_bin, tmp_path, spawned, "--fake-signal-on-load", "SIGILL")
    with pytest.raises(StartError) as info:
        await proc.wait_ready(30)
    assert "SIGILL while loading" in info.value.reason
    assert "fake crash while loading" in info.value.reason


async def test_wait_ready_times_out(
    fake_server_bin: Path, tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    proc = await spawn(fake_server_bin, tmp_path, spawned, "--fake-load-delay", "30")
    with pytest.raises(StartError, match=r"within 0\.5 s"):
        await proc.wait_ready(0.5)
    assert proc.returncode is None


def _probes() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == health_status.__qualname__
    ]


async def test_a_cancelled_wait_ready_leaves_no_probe_behind(
    fake_server_bin: Path, tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    proc = await spawn(fake_server_bin, tmp_path, spawned, "--fake-load-delay", "30")

    async def loading() -> bool:  # it listens and says it is loading
        return await health_status("127.0.0.1", proc.port, 1.0) == 503

    await async_wait_until(loading, "the fake server to say it is loading")
    os.kill(proc.pid, signal.SIGSTOP)  # the kernel still accepts; nothing answers
    waiting = asyncio.create_task(proc.wait_ready(30))
    await async_wait_until(_probes, "wait_ready's /health probe")
    waiting.cancel()  # a stop during the load
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0)  # the probe's cancellation is delivered
    assert _probes() == []


async def test_stop_escalates_to_sigkill(
    fake_server_bin: Path, tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    proc = await spawn(fake_server_bin, tmp_path, spawned, "--fake-ignore-sigterm")
    await proc.wait_ready(30)
    begun = time.monotonic()
    assert await proc.stop(0.2) == -signal.SIGKILL
    assert time.monotonic() - begun >= 0.2
    assert gone(proc.pid)


async def test_spawn_missing_binary_raises_oserror(tmp_path: Path) -> None:
    model = ModelConfig("m", tmp_path / "m.gguf")
    with pytest.raises(OSError):
        await LlamaProcess.spawn(tmp_path / "nope", model, "127.0.0.1", 1, tmp_path / "m.log")


def test_log_header_hides_the_api_key() -> None:
    text = log_header(["srv", "--api-key", "SECRET", "--port", "1"]).decode()
    assert "SECRET" not in text and "--api-key *** --port 1" in text


async def test_model_env_reaches_the_child(tmp_path: Path, spawned: list[LlamaProcess]) -> None:
    script = tmp_path / "envdump"
    script.write_text('#!/bin/sh\necho "X=$LLAMA_TEST_X"\n')
    script.chmod(0o755)
    proc = await spawn(script, tmp_path, spawned, LLAMA_TEST_X="42")
    assert await proc.wait() == 0
    with pytest.raises(StartError, match="exited with code 0 while loading"):
        await proc.wait_ready(5)
    assert "X=42" in proc.tail(5)


def test_tail_file_reads_many_lines_from_the_end(tmp_path: Path) -> None:
    from llama_exporter.supervision.logfile import tail_file

    log = tmp_path / "m.log"
    log.write_text("".join(f"line {i}\n" for i in range(50_000)))
    assert tail_file(log, 1000, block=4096) == [f"line {i}" for i in range(49_000, 50_000)]
    assert tail_file(log, 3) == ["line 49997", "line 49998", "line 49999"]
    assert tail_file(log, 0) == []
    short = tmp_path / "short.log"
    short.write_text("a\nb")
    assert tail_file(short, 10) == ["a", "b"]


async def test_log_is_rotated_by_size_while_the_instance_runs(
    tmp_path: Path, spawned: list[LlamaProcess]
) -> None:
    go = tmp_path / "go"
    script = tmp_path / "chatty"
    script.write_text(
        "#!/bin/sh\ni=0\nwhile [ $i -lt 300 ]; do\n"
        '  echo "line $i, long enough to fill a small log quickly"; i=$((i+1))\ndone\n'
        f'while [ ! -e "{go}" ]; do sleep 0.02; done\necho "last line"\n'
    )
    script.chmod(0o755)
    model = ModelConfig("m", tmp_path / "m.gguf")
    log_file = tmp_path / "m.log"
    proc = await LlamaProcess.spawn(
        script, model, "127.0.0.1", free_port(), log_file, log_max_bytes=4096
    )
    spawned.append(proc)
    last = ["line 299, long enough to fill a small log quickly"]
    await async_wait_until(lambda: proc.tail(1) == last or proc.returncode is not None)
    assert proc.returncode is None, proc.tail(3)  # rotated while it runs, not at the next start
    await proc.log_flushed()  # the writer thread has written what was read
    older, current = rotated_log(log_file).read_text(), log_file.read_text()
    line = len("line 299, long enough to fill a small log quickly\n")
    assert len(older) <= 4096 + line and len(current) <= 4096 + line
    numbers = [int(x.split(",")[0].split()[1]) for x in (older + current).splitlines()]
    assert numbers == list(range(numbers[0], 300))  # nothing lost or torn at the seams
    assert numbers[0] > 0  # the oldest part is gone: the disk use is bounded
    go.touch()
    assert await proc.wait() == 0
    assert proc.tail(2) == ["line 299, long enough to fill a small log quickly", "last line"]
    await proc.log_flushed()
    assert log_file.read_text().endswith("last line\n")
