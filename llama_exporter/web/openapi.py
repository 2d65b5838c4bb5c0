"""The page's routes in the service's OpenAPI description (merged by http.openapi)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        }
    },
}
_ERROR_TEXT = {
    "403": "the request came from a web page on another origin",
    "404": "no such file in the page",
    "421": "the Host header is not a name of this service (DNS rebinding)",
}
_TEXT: Schema = {"schema": {"type": "string"}}


def _errors(*codes: str) -> dict[str, Schema]:
    return {
        code: {
            "description": _ERROR_TEXT[code],
            "content": {"application/json": {"schema": _ERROR}},
        }
        for code in sorted({"403", "421", *codes})
    }


def paths() -> dict[str, Schema]:
    """GET / and GET /ui/{path}: public (no token), with a strict Content-Security-Policy."""
    return {
        "/": {
            "get": {
                "summary": "the operator page (no token needed; the page asks for it on a 401)",
                "security": [],
                "responses": {
                    "200": {"description": "the page", "content": {"text/html": _TEXT}},
                    "304": {"description": "not modified (If-None-Match)"},
                    **_errors(),
                },
            }
        },
        "/ui/{path}": {
            "get": {
                "summary": "a file of the page: its scripts, styles, icon, vendored uPlot",
                "security": [],
                "parameters": [
                    {
                        "name": "path",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "js/main.js",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": _TEXT,
                            "text/css": _TEXT,
                            "image/svg+xml": _TEXT,
                            "text/plain": _TEXT,
                            "text/html": _TEXT,
                        },
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    **_errors("404"),
                },
            }
        },
    }
