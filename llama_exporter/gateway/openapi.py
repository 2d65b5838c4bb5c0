"""The gateway's routes in the service's OpenAPI description (merged by http.openapi)."""

from __future__ import annotations

from typing import Any

from llama_exporter.gateway.routes import OPENAI_ROUTES, SUMMARY_PATH, UPSTREAM_ENDPOINT

Schema = dict[str, Any]

# Errors the gateway answers itself use OpenAI's shape; the guard's and auth's use the
# service's ({"code": int}). Both have error.message.
GATEWAY_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}},
        }
    },
}
_ERROR_TEXT = {
    "400": "the body is not a JSON object naming a model",
    "401": "a token is needed (api_token)",
    "403": "the request came from a web page on another origin",
    "404": "unknown model",
    "413": "the body is over gateway.max_body_bytes",
    "415": "the body is not application/json",
    "421": "the Host header is not a name of this service (DNS rebinding)",
    "429": "the cap is full and the queue too (Retry-After)",
    "502": "the model's llama-server did not answer, or broke off its answer",
    "503": "the model failed to load (the reason is in the message), waited longer than "
    "gateway.queue_timeout, or shutting down (Retry-After)",
}


def _errors(*codes: str) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for code in sorted({"401", "403", "404", "421", *codes}):
        out[code] = {
            "description": _ERROR_TEXT[code],
            "content": {"application/json": {"schema": GATEWAY_ERROR}},
        }
    return out


def _openai(path: str) -> Schema:
    kind = path.rsplit("/", 1)[-1]
    return {
        "post": {
            "summary": f"OpenAI {kind}: routed by the body's model, loaded on demand",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model"],
                            "properties": {"model": {"type": "string", "example": "m0"}},
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "llama-server's answer (JSON, or server-sent events)",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors("400", "413", "415", "429", "502", "503"),
            },
        }
    }


def _upstream() -> Schema:
    params = [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "path",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "the llama-server path, e.g. health or props",
        },
    ]

    # llama-server answers with its own status and content type (text/plain 404s too),
    # so no content type is promised for any status here.
    codes = ("401", "403", "404", "413", "421", "429", "502", "503")

    def op(method: str) -> Schema:
        own = codes if method == "GET" else (*codes, "415")
        return {
            "summary": f"{method} passed to the model's llama-server (loaded on demand)",
            "responses": {
                "default": {
                    "description": "llama-server's own answer, status and body as it sent them"
                },
                **{code: {"description": _ERROR_TEXT[code]} for code in sorted(own)},
            },
        }

    item: Schema = {"parameters": params}
    for method in ("get", "post", "put", "patch", "delete"):
        item[method] = op(method.upper())
    return item


def paths() -> dict[str, Schema]:
    """The gateway's paths: OpenAI routes, /v1/models, /upstream passthrough, the summary."""
    integer, number = {"type": "integer"}, {"type": "number", "nullable": True}
    out = {path: _openai(path) for path in OPENAI_ROUTES}
    out["/v1/models"] = {
        "get": {
            "summary": "every model in OpenAI's list format, with its state",
            "responses": {
                "200": {
                    "description": "models",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["object", "data"],
                                "properties": {
                                    "object": {"type": "string"},
                                    "data": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        }
                    },
                },
                **_errors(),
            },
        }
    }
    out[f"{UPSTREAM_ENDPOINT}/{{model}}/{{path}}"] = _upstream()
    out[SUMMARY_PATH] = {
        "get": {
            "summary": "the gateway queue and, per model, in flight, queued, last minute, TTFT",
            "responses": {
                "200": {
                    "description": "summary",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["queue_length", "max_queue", "when_full", "models"],
                                "properties": {
                                    "queue_length": integer,
                                    "max_queue": integer,
                                    "when_full": {"type": "string"},
                                    "models": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "object",
                                            "properties": {
                                                "in_flight": integer,
                                                "queued": integer,
                                                "requests_last_minute": {
                                                    **integer,
                                                    "description": "requests that arrived "
                                                    "in the last 60 s, running ones included",
                                                },
                                                "ttft_p50_seconds": number,
                                                "ttft_p95_seconds": number,
                                            },
                                        },
                                    },
                                },
                            }
                        }
                    },
                },
                **_errors(),
            },
        }
    }
    return out
