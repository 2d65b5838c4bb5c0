"""WebSocket fan-out: per-client bounded queues, model filters, heartbeats.

Publishing never waits on a client. Each client has its own queue and sender
task; a client whose queue fills up (it reads slower than we publish) is closed
with 1013 "try again later" instead of slowing the others or growing memory.
A client that reconnects is sent the current state at once. At most max_clients
are connected; one more is closed at once with 1013 and a reason that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

Event = dict[str, Any]

STATUS_EVENT = "llama-status:update"
METRICS_EVENT = "llama-metrics:update"
REQUEST_EVENT = "llama-request:update"  # a request log record, at arrival and at the end


def make_event(kind: str, model: str, data: Any) -> Event:
    """An event as sent to clients: type, model and payload."""
    return {"type": kind, "model": model, "data": data}


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    model: str | None
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    dropped: bool = False

    def wants(self, model: str) -> bool:
        return self.model is None or self.model == model


class WebSocketHub:
    """Registry of connected WebSocket clients and the non-blocking publisher."""

    def __init__(
        self,
        *,
        queue_size: int = 256,
        heartbeat: float = 10.0,
        max_clients: int = 64,
        close_timeout: float = 2.0,
    ) -> None:
        self._clients: set[_Client] = set()
        self._queue_size = queue_size
        self._heartbeat = heartbeat
        self._max_clients = max_clients
        self._close_timeout = close_timeout  # seconds a client gets to answer our close
        self.dropped_clients = 0
        self.refused_clients = 0
        self._closing: set[asyncio.Task[bool]] = set()

    def set_max_clients(self, count: int) -> None:
        """A reloaded websocket_max_clients: clients already connected stay."""
        self._max_clients = count

    @property
    def client_count(self) -> int:
        """Number of connected clients."""
        return len(self._clients)

    def publish(self, event: Event) -> None:
        """Queue an event for every client that wants its model; never blocks."""
        if not self._clients:
            return
        text = json.dumps(event, separators=(",", ":"))
        model = str(event.get("model", ""))
        for client in list(self._clients):
            if not client.dropped and client.wants(model):
                self._enqueue(client, text)

    def _enqueue(self, client: _Client, text: str) -> None:
        """Queue text for one client; a client whose queue is full is closed instead."""
        if client.dropped:
            return
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        client.dropped = True
        self.dropped_clients += 1
        log.warning("websocket client too slow, closing it (model filter %s)", client.model)
        task = asyncio.get_running_loop().create_task(
            client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def handle(
        self,
        request: web.Request,
        initial: Callable[[str | None], Iterable[Event]],
        known_model: Callable[[str], bool],
        authenticate: Callable[[web.WebSocketResponse], Awaitable[bool]] | None = None,
    ) -> web.WebSocketResponse:
        """Serve one client: current state first, then live events until it leaves.

        authenticate (after the handshake, before anything is sent) may close the socket
        and return False: then nothing is sent.
        """
        model = request.query.get("model") or None
        if model is not None and not known_model(model):
            raise web.HTTPNotFound(reason=f"unknown model {model!r}")
        ws = web.WebSocketResponse(
            heartbeat=self._heartbeat, max_msg_size=1 << 16, timeout=self._close_timeout
        )
        if len(self._clients) >= self._max_clients:
            return await self._refuse(request, ws)
        client = _Client(ws, model, asyncio.Queue(maxsize=self._queue_size))
        # Registered before the handshake's await, so concurrent handshakes cannot pass
        # the cap, and before the current state is sent, so nothing published meanwhile
        # is lost; the current state goes out directly, however many models there are.
        self._clients.add(client)
        try:
            await ws.prepare(request)
            if authenticate is not None and not await authenticate(ws):
                self._clients.discard(client)  # (its queue was never sent)
                return ws
        except BaseException:
            self._clients.discard(client)
            raise
        while not client.queue.empty():  # queued during the handshake: older than what follows
            client.queue.get_nowait()
        try:
            for event in initial(model):
                await ws.send_str(json.dumps(event, separators=(",", ":")))
        except (ConnectionError, RuntimeError):
            self._clients.discard(client)
            return ws
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for msg in ws:
                # Clients only listen; a text message may change the filter.
                if msg.type is WSMsgType.TEXT:
                    self._on_text(client, msg.data, initial, known_model)
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _refuse(
        self, request: web.Request, ws: web.WebSocketResponse
    ) -> web.WebSocketResponse:
        """Accept, then close at once with 1013 (a browser sees the code and reason)."""
        self.refused_clients += 1
        log.warning("websocket client refused: %d connected (the limit)", self._max_clients)
        await ws.prepare(request)
        reason = f"too many clients ({self._max_clients}, websocket_max_clients); try later"
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason.encode())
        return ws

    def _on_text(
        self,
        client: _Client,
        text: str,
        initial: Callable[[str | None], Iterable[Event]],
        known_model: Callable[[str], bool],
    ) -> None:
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("type") == "auth":
            return  # a page sends its token whether or not the handshake carried one
        if not isinstance(request, dict) or "model" not in request:
            reply = {"type": "error", "message": 'send {"model": NAME} or {"model": null}'}
            self._enqueue(client, json.dumps(reply))
            return
        model = request["model"]
        if model is not None and (not isinstance(model, str) or not known_model(model)):
            reply = {"type": "error", "message": f"unknown model {model!r}"}
            self._enqueue(client, json.dumps(reply))
            return
        client.model = model
        for event in initial(model):
            self._enqueue(client, json.dumps(event, separators=(",", ":")))

    @staticmethod
    async def _send_loop(client: _Client) -> None:
        while True:
            text = await client.queue.get()
            if client.ws.closed:
                return
            try:
                await client.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self) -> None:
        """Close every client at once (service shutdown), waiting at most close_timeout."""
        clients = list(self._clients)
        self._clients.clear()
        if not clients:
            return
        closing = [
            asyncio.ensure_future(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down"))
            for c in clients
        ]
        done, late = await asyncio.wait(closing, timeout=self._close_timeout)
        for task in late:
            task.cancel()  # a client that does not answer must not hold up the shutdown
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("closing a websocket client failed", exc_info=task.exception())
        if late:
            log.warning("%d websocket clients did not close in time", len(late))
            await asyncio.gather(*late, return_exceptions=True)
