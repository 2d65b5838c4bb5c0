"""A child process started off the event loop and then followed on it.

asyncio's create_subprocess_exec forks and execs on the loop: with a preexec_fn
(needed for PR_SET_PDEATHSIG) Python must fork() the whole service and then wait
until the child has exec'd, tens of milliseconds on a loaded machine. Here the
fork and exec run in a worker thread; the child's output is read on the loop
through a pipe transport, and its exit is awaited by a thread of its own that
reaps it (as asyncio's ThreadedChildWatcher does).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import Callable, Sequence

STREAM_LIMIT = 2**16  # asyncio's default line limit for a StreamReader


class Child:
    """A started child: pid, its combined output as a StreamReader, wait() and returncode."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: asyncio.StreamReader,
        output_closed: asyncio.Future[None],
        exit: asyncio.Future[int],
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = stdout
        self._output_closed = output_closed
        self._exit = exit

    @property
    def returncode(self) -> int | None:
        """Exit status once the exit was seen on the loop (negative: the signal), else None."""
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        """The exit status, once the child has exited and its output pipe is closed.

        As asyncio's Process.wait: the output written before the exit has been read into
        stdout by then.
        """
        code = await asyncio.shield(self._exit)
        await asyncio.shield(self._output_closed)
        return code

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Child:
        """Start argv in its own process group, output (stdout + stderr) to a pipe."""
        loop = asyncio.get_running_loop()
        exit: asyncio.Future[int] = loop.create_future()

        def exited(code: int) -> None:
            if not exit.done():
                exit.set_result(code)

        def start() -> subprocess.Popen[bytes]:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
                preexec_fn=preexec_fn,
            )

            def reap() -> None:
                code = popen.wait()
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(exited, code)

            # Started here: Thread.start waits until the new thread runs, not on the loop.
            threading.Thread(target=reap, name=f"reap {popen.pid}", daemon=True).start()
            return popen

        starting = asyncio.ensure_future(asyncio.to_thread(start))
        try:
            popen = await asyncio.shield(starting)
        except asyncio.CancelledError:  # the fork goes on in its thread: leave no child behind
            with contextlib.suppress(OSError):
                late = await starting
                late.kill()  # its reaper thread reaps it
                if late.stdout is not None:
                    late.stdout.close()
            raise
        assert popen.stdout is not None
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        closed: asyncio.Future[None] = loop.create_future()
        try:
            await loop.connect_read_pipe(lambda: _Output(reader, closed), popen.stdout)
        except BaseException:
            popen.kill()
            popen.stdout.close()
            raise
        return cls(popen, reader, closed, exit)


class _Output(asyncio.StreamReaderProtocol):
    """The output pipe's protocol: feeds the StreamReader, tells when the pipe closed."""

    def __init__(self, reader: asyncio.StreamReader, closed: asyncio.Future[None]) -> None:
        super().__init__(reader)
        self._closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)
