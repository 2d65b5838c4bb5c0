"""POST /api/v1/llama/reload in the service's OpenAPI description (merged by http.openapi)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_NAMES: Schema = {"type": "array", "items": {"type": "string"}}
_OUTCOME: Schema = {
    "type": "object",
    "required": ["ok", "at", "duration_seconds"],
    "properties": {
        "ok": {"type": "boolean"},
        "at": {"type": "number", "description": "unix time the reload ended"},
        "duration_seconds": {"type": "number", "description": "read, check and apply"},
        "added": {**_NAMES, "description": "models added (autostart ones start)"},
        "removed": {**_NAMES, "description": "models stopped after stop_drain, then forgotten"},
        "restarted": {
            **_NAMES,
            "description": "launch settings changed: restarted once their requests finish",
        },
        "changed_live": {**_NAMES, "description": "only gateway settings changed"},
        "settings_live": {**_NAMES, "description": "top-level keys applied live"},
    },
}
_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "file": {"type": "string", "nullable": True},
                "key": {"type": "string", "nullable": True, "description": "e.g. listen.port"},
                "line": {"type": "integer", "nullable": True},
                "fix": {"type": "string", "nullable": True},
                "reload": _OUTCOME,
            },
        }
    },
}
_REFUSED = {
    "400": "the file is invalid, or changes a key that needs a service restart: nothing of it "
    "was applied, the running config stays",
    "401": "a token is needed (api_token)",
    "403": "the request came from a web page on another origin",
    "415": "a body that is not application/json",
    "421": "the Host header is not a name of this service (DNS rebinding)",
}


def paths() -> dict[str, Schema]:
    """POST /api/v1/llama/reload: the same checks as check-config, then only the changes."""
    errors = {
        code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
        for code, text in _REFUSED.items()
    }
    return {
        "/api/v1/llama/reload": {
            "post": {
                "summary": "reload the config file (as SIGHUP): only models whose launch "
                "settings changed restart, after their requests finish",
                "responses": {
                    "200": {
                        "description": "applied; restarts and removals go on in the background",
                        "content": {"application/json": {"schema": _OUTCOME}},
                    },
                    **errors,
                },
            }
        }
    }
