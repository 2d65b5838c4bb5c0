"""A small keep-alive HTTP/1.1 GET client for the polls: one connection per instance.

The poller sends two or three GETs per instance per second. aiohttp's client
spends about three times the CPU of the exchange itself on each (request and
response objects, header multidicts, tracing, timeouts); this client writes one
request line and reads one response on a connection it keeps open, which is all a
poll needs. ``parse_response`` is pure and tested on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

MAX_BODY = 16 * 2**20  # a /slots answer of a many-slot server is tens of KB
_HEAD_LIMIT = 64 * 1024


class GetError(Exception):
    """A failed GET; ``reason`` is connect or parse (the poll_errors_total label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Response:
    """A complete response: status, body, whether the connection can be reused."""

    status: int
    body: bytes
    keep_alive: bool
    consumed: int  # bytes of the buffer this response took


def _chunked(buffer: bytes | bytearray, start: int, limit: int) -> tuple[bytes, int] | None:
    """Decode a chunked body from start: (body, end) or None if incomplete."""
    parts: list[bytes] = []
    size_total = 0
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise ValueError(f"bad chunk size {size_text[:20]!r}") from exc
        if size < 0:
            raise ValueError("negative chunk size")
        at = line_end + 2
        if size == 0:  # trailers end with an empty line
            while True:
                trailer_end = buffer.find(b"\r\n", at)
                if trailer_end < 0:
                    return None
                if trailer_end == at:
                    return b"".join(parts), at + 2
                at = trailer_end + 2
        size_total += size
        if size_total > limit:
            raise ValueError(f"body larger than {limit} bytes")
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


def parse_response(
    buffer: bytes | bytearray, *, eof: bool = False, limit: int = MAX_BODY
) -> Response | None:
    """Parse one response from the start of buffer; None while incomplete.

    eof: the peer closed, so a body without length or chunking ends here.
    Raises ValueError for a malformed or oversized response.
    """
    at = 0
    while True:
        head_end = buffer.find(b"\r\n\r\n", at)
        if head_end < 0:
            if len(buffer) - at > _HEAD_LIMIT:
                raise ValueError("response head too long")
            return None
        lines = bytes(buffer[at:head_end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"bad status line {lines[0][:40]!r}")
        status = int(code)
        body_start = head_end + 4
        if 100 <= status < 200:  # an interim response: the real one follows
            at = body_start
            continue
        break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    if status in (204, 304):
        return Response(status, b"", keep_alive, body_start)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = _chunked(buffer, body_start, limit)
        if chunked is None:
            return None
        return Response(status, chunked[0], keep_alive, chunked[1])
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise ValueError(f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > limit:
            raise ValueError(f"body larger than {limit} bytes")
        if len(buffer) < body_start + length:
            return None
        end = body_start + length
        return Response(status, bytes(buffer[body_start:end]), keep_alive, end)
    if len(buffer) - body_start > limit:
        raise ValueError(f"body larger than {limit} bytes")
    if not eof:
        return None  # the body ends when the server closes
    return Response(status, bytes(buffer[body_start:]), False, len(buffer))


class _Stale(Exception):
    """A reused connection closed before answering (the server's keep-alive ended)."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()


class KeepAliveClient:
    """GETs to one host:port over one reused connection, one request at a time."""

    def __init__(self, host: str, port: int, *, limit: int = MAX_BODY) -> None:
        self.host = host
        self.port = port
        self._limit = limit
        authority = f"[{host}]" if ":" in host else host
        self._host_header = f"{authority}:{port}"
        self._protocol: _Protocol | None = None
        self._lock = asyncio.Lock()
        self.connections = 0  # opened so far (for tests and benchmarks)

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        """GET path (bound it with asyncio.timeout); any status is returned, not raised.

        Raises GetError(connect|parse). Cancelled (e.g. by a timeout) or failed, the
        connection is closed: its state is unknown.
        """
        lines = [f"GET {path} HTTP/1.1", f"Host: {self._host_header}", "Accept: */*"]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        async with self._lock:
            try:
                return await self._exchange(request)
            except BaseException:
                self.close()
                raise

    async def _exchange(self, request: bytes) -> Response:
        reused = self._protocol is not None and not self._protocol.closed
        if not reused:
            await self._connect()
        try:
            return await self._send(request)
        except _Stale:
            if not reused:
                raise GetError("connect", "connection closed before the answer") from None
        await self._connect()  # the server ended the idle connection: once more, fresh
        try:
            return await self._send(request)
        except _Stale:
            raise GetError("connect", "connection closed before the answer") from None

    async def _connect(self) -> None:
        self.close()
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        except OSError as exc:
            raise GetError("connect", str(exc)) from exc
        self._protocol = protocol
        self.connections += 1

    async def _send(self, request: bytes) -> Response:
        protocol = self._protocol
        assert protocol is not None and protocol.transport is not None
        protocol.buffer.clear()
        protocol.transport.write(request)
        loop = asyncio.get_running_loop()
        while True:
            try:
                response = parse_response(protocol.buffer, eof=protocol.closed, limit=self._limit)
            except ValueError as exc:
                raise GetError("parse", str(exc)) from exc
            if response is not None:
                break
            if protocol.closed:
                if not protocol.buffer:
                    raise _Stale()
                raise GetError("connect", "connection closed in the middle of the answer")
            protocol.waiter = loop.create_future()
            await protocol.waiter
            protocol.waiter = None
        if not response.keep_alive or response.consumed != len(protocol.buffer):
            self.close()  # the server ends it, or sent more than we asked for
        return response

    def close(self) -> None:
        """Close the connection (the next GET opens a new one)."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
