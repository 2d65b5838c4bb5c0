"""A gateway request's body: read within gateway.max_body_bytes, the model it names (pure)."""

from __future__ import annotations

import json

from aiohttp import web

from llama_exporter.gateway.scheduler import GatewayError


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 when it is over limit bytes (declared or read)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_big(request.content_length, limit)
    try:
        body = await request.read()  # cached: a middleware may have read it already
    except web.HTTPRequestEntityTooLarge:
        raise too_big(limit + 1, limit) from None
    if len(body) > limit:
        raise too_big(len(body), limit)
    return body


def too_big(size: int, limit: int) -> GatewayError:
    """413: the body is over gateway.max_body_bytes."""
    return GatewayError(
        413,
        f"request body of {size} bytes or more is over gateway.max_body_bytes ({limit})",
        "invalid_request_error",
        "request_too_large",
    )


def model_from_body(body: bytes) -> tuple[str, bool]:
    """The model a JSON body names, and whether it asks for a stream (400 if it names none)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise GatewayError(
            400, f"the body is not JSON: {exc}", "invalid_request_error", "invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(
            400, "the body must be a JSON object", "invalid_request_error", "invalid_json"
        )
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise GatewayError(
            400,
            f"'model' must be a model name (a string), got {name!r}; see GET /v1/models",
            "invalid_request_error",
            "missing_model",
        )
    return name, data.get("stream") is True
