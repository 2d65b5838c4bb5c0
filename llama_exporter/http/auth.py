"""Bearer-token auth: which routes need which token (pure), the middleware, WebSocket auth.

With ``api_token`` set every route needs ``Authorization: Bearer <api_token>``
except ``GET /healthz``, ``GET /readyz`` and the page shell (``GET /`` and ``GET /ui/...``:
static files only). ``/metrics`` and the HTTP SD route also accept
``scrape_token``, so Prometheus can hold a token that cannot start or stop
anything. A browser cannot set headers on a WebSocket, so a WebSocket
handshake without the header is let through to the handler, which must read
``{"type": "auth", "token": "..."}`` as the first message within
WS_AUTH_TIMEOUT seconds or close with 4401 (``authenticate_websocket``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from llama_exporter.http.guard import Refusal, is_websocket_handshake

WS_AUTH_TIMEOUT = 5.0
WS_CLOSE_UNAUTHORIZED = 4401
SCRAPE_PATHS = frozenset({"/metrics", "/api/v1/llama/targets"})
# /readyz too: a probe should not need the token, and it names checks, not paths or models.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/"})
PUBLIC_PREFIXES = ("/ui/",)
READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Tokens:
    """The configured tokens (None: not set)."""

    api: str | None
    scrape: str | None = None


def accepted_tokens(method: str, path: str, tokens: Tokens) -> tuple[str, ...] | None:
    """The tokens any one of which a request needs; None when it needs none."""
    if method in READ_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
        return None
    if path in SCRAPE_PATHS and method in READ_METHODS:
        found = tuple(t for t in (tokens.api, tokens.scrape) if t)
        return found or None
    return (tokens.api,) if tokens.api else None


def token_matches(given: str | None, accepted: Sequence[str]) -> bool:
    """True when given is one of the accepted tokens (constant time for each comparison)."""
    if given is None:
        return False
    raw = given.encode()
    ok = False
    for token in accepted:
        ok |= hmac.compare_digest(raw, token.encode())
    return ok


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def check_request(
    method: str, path: str, headers: Mapping[str, str], tokens: Tokens
) -> Refusal | None:
    """401 when the request needs a token and does not carry one that is accepted."""
    accepted = accepted_tokens(method, path, tokens)
    if accepted is None:
        return None
    given = bearer(headers.get("Authorization"))
    if token_matches(given, accepted):
        return None
    which = (
        "api_token or scrape_token"
        if path in SCRAPE_PATHS and len(accepted) > 1
        else "api_token (or LLAMA_EXPORTER_API_TOKEN)"
    )
    return Refusal(401, f"this call needs `Authorization: Bearer <token>` with the {which}")


def parse_auth_message(text: str) -> str | None:
    """The token of a ``{"type": "auth", "token": "..."}`` message, else None."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "auth":
        return None
    token = message.get("token")
    return token if isinstance(token, str) else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Respond = Callable[[Refusal], web.StreamResponse]


def auth_middleware(
    tokens: Callable[[], Tokens], respond: Respond
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The aiohttp middleware applying check_request(); WebSocket handshakes may defer.

    tokens() is read at each request: a config reload replaces them.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = check_request(request.method, request.path, request.headers, tokens())
        if refusal is not None:
            deferrable = is_websocket_handshake(request.method, request.headers) and getattr(
                request.match_info.handler, "websocket_auth", False
            )
            if not deferrable:
                response = respond(refusal)
                response.headers["WWW-Authenticate"] = 'Bearer realm="llama-exporter"'
                return response
        return await handler(request)

    return middleware


def websocket_auth(handler: Handler) -> Handler:
    """Mark a WebSocket handler that authenticates by first message (authenticate_websocket)."""
    handler.websocket_auth = True  # type: ignore[attr-defined]
    return handler


async def authenticate_websocket(
    request: web.Request, ws: web.WebSocketResponse, tokens: Tokens
) -> bool:
    """After prepare(): True when the handshake or the first message carries the token.

    Otherwise the socket is closed with 4401 and False is returned.
    """
    if check_request(request.method, request.path, request.headers, tokens) is None:
        return True
    accepted = accepted_tokens(request.method, request.path, tokens) or ()
    try:
        async with asyncio.timeout(WS_AUTH_TIMEOUT):
            msg = await ws.receive()
    except TimeoutError:
        await ws.close(code=WS_CLOSE_UNAUTHORIZED, message=b"auth timeout")
        return False
    token = parse_auth_message(msg.data) if msg.type is WSMsgType.TEXT else None
    if token_matches(token, accepted):
        return True
    await ws.close(code=WS_CLOSE_UNAUTHORIZED, message=b"unauthorized")
    return False
