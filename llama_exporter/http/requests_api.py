"""The request log over HTTP: GET /api/v1/llama/requests (paged, or exported) and by id.

The JSON shape is docs/REQUESTS_API.md's contract; the description is requests_openapi.py.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from aiohttp import web

from llama_exporter.http.api_json import ApiError
from llama_exporter.http.keys import REQUEST_LOG
from llama_exporter.requestlog.log import RequestLog
from llama_exporter.requestlog.record import (
    CSV_FIELDS,
    BadQuery,
    Query,
    Record,
    csv_row,
    parse_query,
)
from llama_exporter.requestlog.store import StoreUnreadable

PATH = "/api/v1/llama/requests"
FORMATS = ("json", "jsonl", "csv")
_CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def _log(request: web.Request) -> RequestLog:
    log = request.app.get(REQUEST_LOG)
    if log is None:
        raise ApiError(
            404,
            "the request log is off (request_log.enabled: false in the config); "
            "set it to true and restart to keep requests",
        )
    return log


def _unreadable(exc: StoreUnreadable) -> ApiError:
    return ApiError(503, f"{exc}; try again shortly (a damaged file is replaced)")


def _query(request: web.Request) -> Query:
    try:
        return parse_query(request.query)
    except BadQuery as exc:
        raise ApiError(400, str(exc), field=exc.param) from None


async def list_requests(request: web.Request) -> web.StreamResponse:
    """Requests newest first (in flight too), filtered and paged; or exported as jsonl/csv."""
    log = _log(request)
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise ApiError(
            400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", field="format"
        )
    query = _query(request)
    if fmt != "json":
        return await _export(request, log, query, fmt)
    try:
        page, cursor = await log.page(query)
    except StoreUnreadable as exc:
        raise _unreadable(exc) from None
    body: dict[str, Any] = {
        "requests": [r.to_json() for r in page],
        "next_cursor": None if cursor is None else cursor.encode(),
    }
    return web.json_response(body)


async def _export(
    request: web.Request, log: RequestLog, query: Query, fmt: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": _CONTENT_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="requests.{fmt}"',
        }
    )
    await response.prepare(request)
    if fmt == "csv":
        await response.write(_csv([list(CSV_FIELDS)]))
    try:
        async for batch in log.export(query):
            if fmt == "csv":
                await response.write(_csv([csv_row(r) for r in batch]))
            else:
                lines = "".join(
                    json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in batch
                )
                await response.write(lines.encode())
    except StoreUnreadable:
        return response  # the status is sent: the export ends short (the log says why)
    await response.write_eof()
    return response


def _jsonl(record: Record) -> str:
    return json.dumps(record.to_json(), separators=(",", ":")) + "\n"


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


async def get_request(request: web.Request) -> web.Response:
    """One request by id, with its captured bodies (null when not captured)."""
    rid = request.match_info["id"]
    try:
        record = await _log(request).get(rid)
    except StoreUnreadable as exc:
        raise _unreadable(exc) from None
    if record is None:
        raise ApiError(404, f"no request {rid!r} in the log (too old, or never logged)")
    return web.json_response(record.to_json(bodies=True))


def add_routes(app: web.Application) -> None:
    """Register the request log's routes."""
    app.router.add_get(PATH, list_requests)
    app.router.add_get(PATH + "/{id}", get_request)
