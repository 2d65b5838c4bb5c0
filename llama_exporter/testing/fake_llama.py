"""A fake llama-server process: the real one's flags plus fault injection (--fake-*).

The endpoints are in ``fake_llama_app``, the simulated slots and generation in
``fake_llama_engine``. ``main`` accepts the flags the service passes to the real binary;
``write_executable`` makes a ``fake-llama-server`` script that runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from llama_exporter.testing.fake_llama_app import SERVER_KEY, create_app
from llama_exporter.testing.fake_llama_engine import FakeOptions


def parse_args(argv: list[str] | None) -> FakeOptions:
    """Parse the real llama-server flags we use plus the --fake-* fault flags."""
    p = argparse.ArgumentParser(prog="fake-llama-server", description=__doc__)
    p.add_argument("-m", "--model", default="fake.gguf")
    p.add_argument("-a", "--alias")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("--api-key")
    p.add_argument("--api-key-file", dest="_api_key_file")
    p.add_argument("--cors-origins", default="*")
    p.add_argument("--no-cors-credentials", dest="cors_credentials", action="store_false")
    p.add_argument("--no-slots", dest="slots", action="store_false")
    p.add_argument("--embeddings", action="store_true")
    p.add_argument("--pooling", dest="_pooling")  # accepted, ignored
    p.add_argument("-t", "--threads", type=int, dest="_threads")  # accepted, ignored
    p.add_argument("-lv", "--verbosity", "--log-verbosity", type=int, default=3)
    p.add_argument("-hft", "--hf-token", dest="_hf_token")  # accepted, ignored
    fake = {  # --fake-X -> FakeOptions field, type, default
        "load-delay": (float, 0.0),
        "crash-after": (float, None),
        "exit-code": (int, 1),
        "signal-on-load": (str, None),
        "hang-after": (float, None),
        "tokens-per-second": (float, 50.0),
        "prompt-tokens-per-second": (float, 1000.0),
    }
    for flag, (kind, default) in fake.items():
        p.add_argument(f"--fake-{flag}", dest=flag.replace("-", "_"), type=kind, default=default)
    p.add_argument("--fake-ignore-sigterm", dest="ignore_sigterm", action="store_true")
    p.add_argument("--fake-idle-keeps-task", dest="idle_keeps_task", action="store_true")
    # Like a verbose llama-server: print the command line and secret-looking variables.
    p.add_argument("--fake-print-args", dest="_print_args", action="store_true")
    values = vars(p.parse_args(argv))
    values.pop("_threads")
    values.pop("_hf_token")
    if values.pop("_print_args"):
        _log("fake-llama-server args: " + " ".join(sys.argv if argv is None else argv))
        for name, value in sorted(os.environ.items()):
            if any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD")):
                _log(f"env {name}={value}")
    values.pop("_pooling")
    values["api_keys"] = _file_keys(values.pop("_api_key_file"))
    if values["api_key"] is None:  # like llama.cpp: a flag's variable counts when it is absent
        values["api_key"] = os.environ.get("LLAMA_API_KEY") or None
    return FakeOptions(**values)


def _file_keys(path: str | None) -> tuple[str, ...]:
    """The keys of an --api-key-file as llama-server reads it: one a line, '#' comments."""
    if path is None:
        return ()
    lines = Path(path).read_text().splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


def memory_lines(options: FakeOptions) -> list[str]:
    """What the real llama-server logs of its buffers at -lv 4, with made-up sizes that
    grow with the context (formats of llama.cpp b11434, as in memory/report.py)."""
    n_ctx_seq = options.ctx_size // max(1, options.parallel)
    return [
        "load_tensors:   CPU_Mapped model buffer size =     1.50 MiB",
        f"llama_context: n_seq_max             = {options.parallel}",
        f"llama_context: n_ctx                 = {options.ctx_size}",
        f"llama_context: n_ctx_seq             = {n_ctx_seq}",
        f"llama_context:        CPU  output buffer size =     {0.25 * options.parallel:.2f} MiB",
        f"llama_kv_cache:        CPU KV buffer size =    {options.ctx_size / 1024:.2f} MiB",
        "sched_reserve:        CPU compute buffer size =     2.00 MiB",
        f"srv    load_model: initializing, n_slots = {options.parallel}, "
        f"n_ctx_slot = {n_ctx_seq}, kv_unified = 'false'",
    ]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _signal_number(name: str) -> signal.Signals:
    upper = name.upper()
    return signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]


def _die_by_signal(sig: signal.Signals) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from a fake crash
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


async def _serve(options: FakeOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    app = create_app(options)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    _log(f"main: HTTP server is listening, hostname: {options.host}, port: {options.port}")
    _log(f"srv    load_model: loading model '{options.model}'")
    if options.signal_on_load is not None:
        sig = _signal_number(options.signal_on_load)
        await asyncio.sleep(options.load_delay / 2)
        _log("ggml: fake crash while loading")
        _die_by_signal(sig)
    loading = max(0.0, app[SERVER_KEY].ready_at - time.monotonic())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=loading)
    if not stop.is_set():
        if options.verbosity >= 4:
            for line in memory_lines(options):
                _log(line)
        _log("main: model loaded")
        _log(f"main: server is listening on http://{options.host}:{options.port}")

    async def fault(delay: float, action: Callable[[], None]) -> None:
        await asyncio.sleep(delay)
        action()

    def crash() -> None:
        _log(f"fake: crashing with exit code {options.exit_code}")
        os._exit(options.exit_code)

    def hang() -> None:
        _log("fake: hanging (SIGSTOP)")
        os.kill(os.getpid(), signal.SIGSTOP)

    faults: list[asyncio.Task[None]] = []
    if options.crash_after is not None:
        faults.append(asyncio.create_task(fault(options.crash_after, crash)))
    if options.hang_after is not None:
        faults.append(asyncio.create_task(fault(options.hang_after, hang)))
    await stop.wait()
    _log("srv    operator(): operator(): cleaning up before exit...")
    for task in faults:
        task.cancel()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(runner.cleanup(), timeout=1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the fake server until SIGTERM/SIGINT; returns the exit code."""
    options = parse_args(argv)
    for flag, rate in (
        ("--fake-tokens-per-second", options.tokens_per_second),
        ("--fake-prompt-tokens-per-second", options.prompt_tokens_per_second),
    ):
        if not math.isfinite(rate) or rate <= 0:
            _log(f"error: {flag} must be a positive number, got {rate}")
            return 2
    try:
        return asyncio.run(_serve(options))
    except OSError as exc:
        _log(f"error: couldn't bind HTTP server socket, {options.host}:{options.port}: {exc}")
        return 1


def write_executable(directory: Path) -> Path:
    """Write an executable ``fake-llama-server`` into directory that runs main() here."""
    script = directory / "fake-llama-server"
    script.write_text(
        f"#!{sys.executable}\n"
        "from llama_exporter.testing.fake_llama import main\n"
        "raise SystemExit(main())\n"
    )
    script.chmod(0o755)
    return script


if __name__ == "__main__":
    raise SystemExit(main())
