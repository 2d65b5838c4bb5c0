"""JSON in and out for the API: the error shape and its middleware, request bodies and flags."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llama_exporter.catalog.registration import InvalidModel
from llama_exporter.catalog.registry import ModelConflict
from llama_exporter.http.guard import Refusal
from llama_exporter.memory.admission import Shortfall
from llama_exporter.states import CapExceeded, Conflict, ShuttingDown, UnknownModel
from llama_exporter.supervision.ledger import MemoryFull, ModelTooBig

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as {"error": {"code": ..., "message": ..., **details}}."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details

    def response(self) -> web.Response:
        """The JSON response for this error."""
        body = {"error": {"code": self.status, "message": self.message, **self.details}}
        return web.json_response(body, status=self.status, headers=self.headers)


def _error_for(exc: Exception) -> ApiError | None:
    """Map a domain exception to its HTTP error, or None if it is not one of ours."""
    if isinstance(exc, InvalidModel):
        return ApiError(400, str(exc), field=exc.field)
    if isinstance(exc, UnknownModel):  # registry.UnknownModel is one too
        return ApiError(404, str(exc))
    if isinstance(exc, ModelConflict | Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, ModelTooBig):
        short = exc.decision.shortfall
        return ApiError(400, str(exc), **(_memory(short) if short else {}))
    if isinstance(exc, CapExceeded):  # MemoryFull is one too: it adds what memory is short
        short = exc.decision.shortfall if isinstance(exc, MemoryFull) else None
        return ApiError(
            429,
            str(exc),
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            running=list(exc.running),
            cap=exc.cap,
            **(_memory(short) if short is not None else {}),
        )
    if isinstance(exc, ShuttingDown):
        return ApiError(503, "the service is shutting down")
    return None


def _memory(short: Shortfall) -> dict[str, Any]:
    """The memory a refused start needs, what is free, and who holds it (error details)."""
    return {
        "memory": {
            "device": short.device,
            "needed_bytes": short.need,
            "free_bytes": max(0, short.free),
            "budget_bytes": short.budget,
            "held_by": {name: held for name, held in short.holders},
        }
    }


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into the JSON error shape; never leak a bare 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = exc.text or ""
        message = exc.reason if text in ("", f"{exc.status}: {exc.reason}") else text
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        return ApiError(exc.status, message, headers=headers).response()
    except Exception as exc:
        mapped = _error_for(exc)
        if mapped is not None:
            return mapped.response()
        log.exception("unhandled error in %s %s", request.method, request.path)
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}").response()


def refusal_response(refusal: Refusal) -> web.Response:
    """A guard or auth refusal in the API's JSON error shape."""
    return ApiError(refusal.status, refusal.message).response()


# -- requests -----------------------------------------------------------------


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object, else a 400 that says what is wrong."""
    if not request.can_read_body:
        raise ApiError(400, "this call needs a JSON object body")
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


_KIND_NAMES: dict[type, str] = {str: "a string", list: "a list", dict: "a JSON object"}


def body_field(body: dict[str, Any], key: str, kind: type, *, required: bool = False) -> Any:
    """body[key] if it is of kind (None when absent and not required), else a 400 naming key."""
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"field {key!r} is required", field=key)
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"field {key!r} must be an integer", field=key)
    if kind is not int and not isinstance(value, kind):
        raise ApiError(400, f"field {key!r} must be {_KIND_NAMES[kind]}", field=key)
    return value


def query_flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter (?name=true); absent means no."""
    return request.query.get(name, "false").lower() in ("1", "true", "yes")
