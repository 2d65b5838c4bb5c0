"""One llama-server child: argv, spawn in its own process group, wait ready, stop, reap."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from llama_exporter.config.settings import ModelConfig
from llama_exporter.memory.report import LOADED, is_report_line
from llama_exporter.redact import redact_args, redact_output, secret_values
from llama_exporter.supervision.child import Child
from llama_exporter.supervision.command import build_argv, child_env, reader_key
from llama_exporter.supervision.instance_key import InstanceKey
from llama_exporter.supervision.logfile import LOG_ROTATE_BYTES, InstanceLog

log = logging.getLogger(__name__)

READY_POLL_INTERVAL = 0.01  # seconds between /health probes while loading
TAIL_LINES = 200
MAX_LOAD_LINES = 1000  # a load logs a few dozen memory lines; this bounds a strange one
_PR_SET_PDEATHSIG = 1

CPU_HINT = (
    "llama-server died with SIGILL (illegal instruction): the binary was built for a CPU "
    "with instructions this one lacks (for example AVX-512 or AMX from -march=native). "
    "Rebuild llama.cpp with -DGGML_NATIVE=OFF (see README: scripts/bootstrap.sh)"
)


class StartError(Exception):
    """llama-server did not become ready; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe_exit(returncode: int, *, during_load: bool, log_tail: Sequence[str]) -> str:
    """A failure reason for an exited llama-server: code or signal, hints, last log lines."""
    when = "while loading the model" if during_load else "after it was ready"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        text = f"llama-server was killed by {name} {when}"
        if -returncode == signal.SIGILL:
            text += f". {CPU_HINT}"
    else:
        text = f"llama-server exited with code {returncode} {when}"
    lines = [line for line in log_tail if line.strip()][-5:]
    if lines:
        text += ". Last log lines:\n" + "\n".join(lines)
    return text


# Looked up once in the parent: between fork and exec the child must not dlopen or
# take locks that another thread of the parent may hold.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _pdeathsig_preexec(parent: int) -> None:
    """In the child before exec: die with the parent (Linux), even if it is SIGKILLed."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


async def health_status(
    host: str, port: int, within: float, path: str = "/health", api_key: str | None = None
) -> int | None:
    """HTTP status of GET path, or None when nothing answers within that many seconds."""
    writer: asyncio.StreamWriter | None = None
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()


def port_bindable(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a quick bind test)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Instance(Protocol):
    """What the supervisor needs from a running llama-server (LlamaProcess; fakes in tests)."""

    pid: int
    port: int
    create_time: float | None

    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    async def wait_ready(self, timeout: float) -> None: ...  # noqa: ASYNC109
    async def describe_exit(self, *, during_load: bool) -> str: ...
    async def health(self, within: float) -> bool: ...
    async def stop(self, grace: float) -> int: ...
    def kill(self) -> None: ...
    def tail(self, n: int) -> list[str]: ...
    def load_lines(self) -> list[str]: ...  # what the load said of its memory (report.py)


SpawnFn = Callable[[Path, ModelConfig, str, int, Path], Awaitable[Instance]]


def log_header(argv: Sequence[str]) -> bytes:
    """The line that starts each run in the per-model log (secrets masked)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"--- {stamp} starting: {' '.join(redact_args(argv))}\n".encode()


class LlamaProcess:
    """A running llama-server child process and its log."""

    def __init__(
        self,
        proc: Child,
        host: str,
        port: int,
        log_file: InstanceLog,
        *,
        secrets: frozenset[str] = frozenset(),
        api_key: str | None = None,
    ) -> None:
        self._proc = proc
        self._api_key = api_key  # sent with each /health probe
        # Values hidden from the log and the tail if llama-server ever prints them.
        self._secrets = [s.encode() for s in secrets]
        self.host = host
        self.port = port
        self.pid: int = proc.pid
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._load_lines: list[str] = []  # the load's memory lines, until "model loaded"
        self._loading = True
        self._log = log_file  # written and rotated by its own thread
        self._exited: asyncio.Task[int] = asyncio.ensure_future(proc.wait())
        self._reader = asyncio.ensure_future(self._read_output())
        try:
            self.create_time: float | None = psutil.Process(self.pid).create_time()
        except psutil.Error:
            self.create_time = None

    @classmethod
    async def spawn(
        cls,
        binary: Path,
        model: ModelConfig,
        host: str,
        port: int,
        log_file: Path,
        *,
        log_max_bytes: int = LOG_ROTATE_BYTES,
        instance_key: InstanceKey | None = None,
    ) -> LlamaProcess:
        """Start llama-server for model on host:port; output goes to log_file (rotated).

        With instance_key, the instance requires it (and the model's own api_key, if any).
        """
        key_file = instance_key.path if instance_key is not None else None
        argv = build_argv(binary, model, host, port, key_file)
        out = await InstanceLog.open(log_file, log_header(argv), log_max_bytes)
        env = child_env(model, os.environ)
        parent = os.getpid()
        try:
            # Forked and exec'd in a thread: a fork of the service with a preexec_fn
            # blocks until the child has exec'd (see child.py).
            proc = await Child.start(argv, env=env, preexec_fn=lambda: _pdeathsig_preexec(parent))
        except BaseException:
            await out.aclose()
            raise
        service_key = instance_key.value if instance_key is not None else None
        secrets = secret_values(model.args, model.env, [model.api_key, service_key])
        return cls(proc, host, port, out, secrets=secrets, api_key=reader_key(model, instance_key))

    async def _read_output(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line longer than the stream limit
                    raw = await stream.read(65536)
                if not raw:
                    break
                raw = redact_output(raw, self._secrets)
                self._log.write(raw)
                text = raw.decode(errors="replace").rstrip("\r\n")
                self._tail.append(text)
                if self._loading:
                    self._keep_load_line(text)
        except OSError as exc:
            log.warning("reading llama-server output (pid %d): %s", self.pid, exc)
        finally:
            # The writer ends once what is queued is written; when this task is cancelled
            # (the loop is closing) it still does, on its own.
            self._log.close_soon()
            await asyncio.shield(self._log.aclose())

    async def log_flushed(self) -> None:
        """Wait until the output read so far (all of it, once exited) is in the log file."""
        if self.returncode is not None:
            await asyncio.shield(self._reader)  # its end writes and closes the log
        await self._log.flushed()

    @property
    def returncode(self) -> int | None:
        """Exit status (negative: killed by that signal), None while running."""
        return self._proc.returncode

    async def wait(self) -> int:
        """Resolve the moment the child exits (it is reaped by asyncio's child watcher)."""
        return await asyncio.shield(self._exited)

    async def _describe(self, during_load: bool) -> str:
        rc = await self.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), timeout=0.5)
        return describe_exit(rc, during_load=during_load, log_tail=self.tail(20))

    async def describe_exit(self, *, during_load: bool) -> str:
        """Wait for the exit and say why it happened (with the last log lines)."""
        return await self._describe(during_load)

    async def health(self, within: float) -> bool:
        """True when /health answers 200 within that many seconds."""
        return await health_status(self.host, self.port, within, api_key=self._api_key) == 200

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        """Poll /health until 200; raise StartError if the child exits or timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StartError(
                    f"llama-server did not answer /health with 200 within {timeout:g} s "
                    "(raise ready_timeout for big models or slow disks)"
                )
            probe = asyncio.ensure_future(
                health_status(self.host, self.port, min(1.0, remaining), api_key=self._api_key)
            )
            try:
                done, _ = await asyncio.wait(
                    {probe, self._exited}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:  # also when a stop cancels the load: no probe outlives it
                if not probe.done():
                    probe.cancel()
            if self._exited in done:
                raise StartError(await self._describe(during_load=True))
            if probe.result() == 200:
                return
            pause = min(READY_POLL_INTERVAL, max(0.0, deadline - loop.time()))
            await asyncio.wait({self._exited}, timeout=pause)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after grace seconds, reap; returns the exit status."""
        if self.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), timeout=grace)
            except TimeoutError:
                log.warning(
                    "llama-server pid %d ignored SIGTERM for %g s: SIGKILL", self.pid, grace
                )
                self._signal_group(signal.SIGKILL)
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group now (the exit is reaped by wait())."""
        self._signal_group(signal.SIGKILL)

    def tail(self, n: int) -> list[str]:
        """The last n lines the process wrote."""
        return list(self._tail)[-n:] if n > 0 else []

    def _keep_load_line(self, text: str) -> None:
        if is_report_line(text) and len(self._load_lines) < MAX_LOAD_LINES:
            self._load_lines.append(text)
        if LOADED in text:
            self._loading = False

    def load_lines(self) -> list[str]:
        """The lines of the load that report.parse_report reads (buffer sizes, context)."""
        return list(self._load_lines)


async def hang_watch(
    health: Callable[[float], Awaitable[bool]],
    limit: float | Callable[[], float],
    interval: float,
) -> str:
    """Return a reason once health() has not been true for limit seconds (read each probe)."""
    loop = asyncio.get_running_loop()
    last_ok = loop.time()
    while True:
        await asyncio.sleep(interval)
        seconds = limit() if callable(limit) else limit
        if await health(min(1.0, seconds)):
            last_ok = loop.time()
        elif loop.time() - last_ok >= seconds:
            return f"not answering /health for {seconds:g} s (hung)"
