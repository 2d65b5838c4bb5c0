"""Forwarding one request to a llama-server: whole bodies, or SSE chunk by chunk, unbuffered.

When the client goes away the upstream response is closed at once, so llama-server
stops generating and frees the slot. When llama-server dies mid-stream the stream
ends with an error event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from llama_exporter.gateway.sse import StreamWatch, Usage, error_of, finish_reason_of, usage_of

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 2.0
CLIENT_CLOSED = 499  # counted when the client left before the answer ended (nginx's code)
UPSTREAM_BROKE = 502  # counted when llama-server failed mid-answer

# Not forwarded in either direction: connection-level, recomputed, or ours.
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "host",
        "authorization",
        "cookie",
        "origin",
        "referer",
        "date",
        "server",
        "expect",  # the body is read already: a 100-continue upstream is a wasted round trip
        "proxy-connection",
    }
)


def _passable(headers: Mapping[str, str]) -> dict[str, str]:
    """headers minus the hop-by-hop ones: those above and any the Connection header names."""
    named = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    return {k: v for k, v in headers.items() if k.lower() not in _DROP and k.lower() not in named}


class UpstreamUnreachable(Exception):
    """llama-server did not answer (refused, reset before any response)."""


@dataclass
class Outcome:
    """What happened to a forwarded request, for the metrics and the request log."""

    code: int
    streamed: bool = False
    usage: Usage | None = None
    finish_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    body: bytes | None = None  # the answer's first bytes, when the log captures bodies


def upstream_headers(incoming: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    """Headers for llama-server: the client's, minus hop-by-hop and our auth, plus its key."""
    out = _passable(incoming)
    out["Accept-Encoding"] = "identity"  # bytes pass through as they come
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """llama-server's answer headers for the client: minus hop-by-hop ones and CORS.

    The service's port makes its own CORS decisions (guard.py): an instance's
    Access-Control-* headers say nothing about it and are not passed on.
    """
    passed = _passable(upstream)
    return {k: v for k, v in passed.items() if not k.lower().startswith("access-control-")}


class _Attempt:
    """One try of a request: did it go out on a kept-alive connection (set by the trace)?"""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reuse(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    if isinstance(ctx.trace_request_ctx, _Attempt):
        ctx.trace_request_ctx.reused = True


def new_session() -> aiohttp.ClientSession:
    """The gateway's client session: no total timeout (generations run long), no pool cap."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_on_reuse)
    return aiohttp.ClientSession(
        # llama-server (cpp-httplib) drops idle keep-alive connections after 5 s: ours
        # give up sooner, so a request rarely meets a connection the server just closed.
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # llama-server sets none; skip the jar's work
        skip_auto_headers=("User-Agent",),
        trace_configs=[trace],  # tells forward() whether a failed try was on a reused one
    )


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    api_key: str | None,
    watch: StreamWatch,
    clock: Callable[[], float],
    capture: int = 0,
) -> tuple[web.StreamResponse, Outcome]:
    """Send the request to url and answer the client with llama-server's answer.

    A streamed answer is fed to watch as it passes, so what it saw (first token,
    gaps) is there even when the client leaves half-way. With capture, the answer's
    first capture bytes are kept in the outcome.
    """
    headers = upstream_headers(request.headers, api_key)
    attempt = _Attempt()
    try:
        upstream = await session.request(
            request.method, url, data=body or None, headers=headers, trace_request_ctx=attempt
        )
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        # A kept-alive connection the server closed meanwhile: once more on a new one.
        # Not a new connection: the server may have read the request and acted on it
        # (a POST that generates must not run twice).
        if not attempt.reused:
            raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
        try:
            upstream = await session.request(
                request.method, url, data=body or None, headers=headers
            )
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
    whole = False  # read to the end: the connection may serve the next request
    try:
        if upstream.content_type == "text/event-stream":
            response, outcome = await _stream(request, upstream, watch, clock, capture)
            whole = outcome.code not in (CLIENT_CLOSED, UPSTREAM_BROKE)
            return response, outcome
        data = await upstream.read()
        whole = True
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"the answer broke off: {exc}") from exc
    finally:
        if whole:
            upstream.release()
        else:  # client gone or cancelled mid-answer: closing stops llama-server generating
            upstream.close()
    outcome = Outcome(upstream.status, body=data[:capture] if capture else None)
    if upstream.content_type == "application/json":
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if upstream.status == 200:
            outcome.usage = usage_of(answer)
            outcome.finish_reason = finish_reason_of(answer)
        else:
            outcome.error_type, outcome.error_message = error_of(answer)
    headers = response_headers(upstream.headers)
    response = web.Response(status=upstream.status, body=data, headers=headers)
    return response, outcome


async def _stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    watch: StreamWatch,
    clock: Callable[[], float],
    capture: int = 0,
) -> tuple[web.StreamResponse, Outcome]:
    headers = response_headers(upstream.headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # proxies in front of us must not buffer
    outcome = Outcome(upstream.status, streamed=True)
    kept = bytearray() if capture else None
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            now = clock()  # the chunk's arrival; it is read after it went on (off the path)
            try:
                await response.write(chunk)
            finally:
                watch.feed(chunk, now)
                if kept is not None and len(kept) < capture:
                    kept += chunk[: capture - len(kept)]
                    outcome.body = bytes(kept)
    except ConnectionResetError:
        outcome.code = CLIENT_CLOSED  # the client left; the caller closes upstream
        return response, outcome
    except (TimeoutError, aiohttp.ClientError) as exc:
        outcome.code = UPSTREAM_BROKE
        outcome.error_type = "server_error"
        outcome.error_message = f"llama-server ended the stream early: {exc or type(exc).__name__}"
        log.warning("gateway: llama-server broke off a stream at %s: %r", upstream.url, exc)
        error = {
            "error": {
                "message": f"llama-server ended the stream early: {exc or type(exc).__name__}",
                "type": "server_error",
                "code": "upstream_error",
            }
        }
        try:
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        except ConnectionResetError:
            return response, outcome
    if watch.error and outcome.code == 200:
        # Counted by what llama-server said (a 400 for a prompt over the context is the
        # client's, not a server failure); without a code, as a broken upstream.
        outcome.code = watch.error_code or UPSTREAM_BROKE
    if watch.error:
        outcome.error_type, outcome.error_message = watch.error_type, watch.error_message
    outcome.usage = watch.usage
    outcome.finish_reason = watch.finish_reason
    try:
        await response.write_eof()
    except ConnectionResetError:
        outcome.code = CLIENT_CLOSED
    return response, outcome
