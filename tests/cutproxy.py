"""A TCP forwarder in front of the service whose connections a test can cut.

The browser talks to the service through it (same origin: the page, the API and the
WebSocket all go through the proxy's port). ``cut()`` closes every open connection,
the WebSocket included, as a network failure would, and refuses new ones until
``resume()``. The service itself is untouched and has no test-only route.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class CutProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>, one thread per direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refusing = False
        self._closed = False
        self.cut_connections = 0
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port> of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def cut(self) -> int:
        """Close every open connection now and refuse new ones; returns how many were cut."""
        with self._lock:
            self._refusing = True
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _kill(sock)
        self.cut_connections += len(victims)
        return len(victims)

    def resume(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        """Stop listening and close everything; join the threads."""
        self._closed = True
        self.cut()
        _kill(self._listener)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _kill(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _kill(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            ended = [0]  # directions of this connection that have ended (under self._lock)
            self._spawn(self._pump, client, upstream, ended)
            self._spawn(self._pump, upstream, client, ended)

    def _pump(self, source: socket.socket, sink: socket.socket, ended: list[int]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        # This direction ended: pass the end on (half-close), close both once both ended.
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            ended[0] += 1
            last = ended[0] == 2
            if last:
                self._open.discard(source)
                self._open.discard(sink)
        if last:  # both directions are done: nothing more can pass, close both
            _kill(source)
            _kill(sink)


def _kill(sock: socket.socket) -> None:
    """Close a socket at once (shutdown first, so a thread blocked in recv wakes up)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
