"""The request log's routes in the service's OpenAPI description (merged by http.openapi)."""

from __future__ import annotations

from typing import Any

from llama_exporter.http.requests_api import FORMATS, PATH
from llama_exporter.requestlog.record import DEFAULT_LIMIT, FIELDS, IN_FLIGHT, MAX_LIMIT

Schema = dict[str, Any]

_ERROR: Schema = {"$ref": "#/components/schemas/Error"}
_ERROR_TEXT = {
    "400": "a query parameter is wrong: the message says how, `field` which one",
    "401": "a token is needed (api_token)",
    "403": "the request came from a web page on another origin",
    "404": "the request log is off (request_log.enabled: false), or no such request",
    "421": "the Host header is not a name of this service (DNS rebinding)",
    "503": "the log's database cannot be read now (busy, or damaged and being replaced)",
}


def _n(kind: str) -> Schema:
    return {"type": kind, "nullable": True}


RECORD: Schema = {
    "type": "object",
    "required": list(FIELDS),
    "properties": {
        "id": {"type": "string"},
        "arrived": {"type": "number", "description": "unix seconds"},
        "model": {"type": "string", "description": "empty when the body named none"},
        "endpoint": {"type": "string", "example": "/v1/chat/completions"},
        "stream": {"type": "boolean"},
        "client": {"type": "string", "description": "the client's address"},
        "state": {"type": "string", "enum": [IN_FLIGHT, "done"]},
        "status": {**_n("integer"), "description": "HTTP code; 499: the client left"},
        "error_type": _n("string"),
        "error_message": _n("string"),
        "finish_reason": _n("string"),
        "prompt_tokens": _n("integer"),
        "completion_tokens": _n("integer"),
        "queue_wait_s": _n("number"),
        "load_wait_s": _n("number"),
        "triggered_load": {"type": "boolean"},
        "evicted": {"type": "array", "items": {"type": "string"}},
        "ttft_s": _n("number"),
        "duration_s": _n("number"),
        "tokens_per_second": _n("number"),
    },
}
RECORD_WITH_BODIES: Schema = {
    **RECORD,
    "properties": {
        **RECORD["properties"],
        "request_body": {**_n("string"), "description": "captured (request_log.capture)"},
        "response_body": {**_n("string"), "description": "captured (request_log.capture)"},
    },
}


def _q(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _errors(*codes: str) -> dict[str, Schema]:
    return {
        code: {
            "description": _ERROR_TEXT[code],
            "content": {"application/json": {"schema": _ERROR}},
        }
        for code in sorted({"401", "403", "404", "421", *codes})
    }


def paths() -> dict[str, Schema]:
    """The request log's routes: path -> method -> operation."""
    page = {
        "type": "object",
        "required": ["requests", "next_cursor"],
        "properties": {
            "requests": {"type": "array", "items": RECORD},
            "next_cursor": {**_n("string"), "description": "pass as ?cursor= for older ones"},
        },
    }
    return {
        PATH: {
            "get": {
                "summary": "gateway requests newest first, in flight too; paged or exported",
                "parameters": [
                    _q("model", {"type": "string"}, "only this model's requests"),
                    _q(
                        "status",
                        {"type": "string", "example": "5xx"},
                        f"a code (200), a class (2xx..5xx) or {IN_FLIGHT}",
                    ),
                    _q("since", {"type": "number"}, "arrived at or after (unix seconds)"),
                    _q("until", {"type": "number"}, "arrived at or before (unix seconds)"),
                    _q(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        f"page size (default {DEFAULT_LIMIT})",
                    ),
                    _q("cursor", {"type": "string"}, "next_cursor of the previous page"),
                    _q(
                        "format",
                        {"type": "string", "enum": list(FORMATS)},
                        "json: a page; jsonl or csv: every match, streamed",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "a page (json), or every match (jsonl, csv)",
                        "content": {
                            "application/json": {"schema": page},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors("400", "503"),
                },
            }
        },
        PATH + "/{id}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "one request, with its captured bodies (null when not captured)",
                "responses": {
                    "200": {
                        "description": "the request",
                        "content": {"application/json": {"schema": RECORD_WITH_BODIES}},
                    },
                    **_errors("503"),
                },
            },
        },
    }
