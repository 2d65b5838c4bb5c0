"""Pure builders for the OpenAPI description: references, objects, operations, errors."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """The schema, or null."""
    return {**schema, "nullable": True}


def obj(required: list[str], **props: Schema) -> Schema:
    """An object with these properties, the named ones required."""
    return {"type": "object", "required": required, "properties": props}


def json_response(schema: Schema, description: str) -> Schema:
    """A response (or body) whose content is JSON of this schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_TEXT: dict[str, str] = {
    "400": "bad input: the message says what, `field` which field",
    "401": "a token is needed (api_token, or scrape_token where allowed)",
    "403": "the request came from a web page on another origin",
    "404": "unknown model or path",
    "409": "conflicts with the model's state or where it is defined",
    "415": "a state-changing request whose body is not application/json",
    "421": "the Host header is not a name of this service (DNS rebinding)",
    "429": "the parallel cap is reached; Retry-After says when to try again",
    "502": "the model did not start (with ?wait=true)",
    "503": "the service is shutting down",
}


STRING: Schema = {"type": "string"}
# /readyz's checks (config, state_dir, supervisor): "ok" or why not.
CHECKS: Schema = {"type": "object", "additionalProperties": STRING}


def error_responses(*codes: str) -> dict[str, Schema]:
    """Error responses: the given codes plus those the guard and auth give on any route."""
    every = ("401", "403", "404", "421")
    out: dict[str, Schema] = {}
    for code in sorted({*every, *codes}):
        response = json_response(ref("Error"), _ERROR_TEXT[code])
        if code == "429":
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        if code == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[code] = response
    return out


def name_param() -> Schema:
    """The {name} path parameter: a model name."""
    return {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": "m0",
        "description": "a model name",
    }


def op(summary: str, ok: dict[str, Schema], *errors: str, **extra: Any) -> Schema:
    """An operation: its summary, success responses and error codes."""
    return {"summary": summary, "responses": {**ok, **error_responses(*errors)}, **extra}


def change(summary: str, ok: dict[str, Schema], *errors: str, **extra: Any) -> Schema:
    """A state-changing operation: 415 applies too."""
    return op(summary, ok, "415", *errors, **extra)
