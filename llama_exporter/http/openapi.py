"""The OpenAPI 3 description of every route, served at /api/v1/llama/openapi.json.

tests/test_openapi.py fails when the app has a route this does not describe;
CI fuzzes the running service against it with schemathesis. Whoever adds a
route describes it here (paths()) in the same change.
"""

from __future__ import annotations

from typing import Any

from llama_exporter import __version__
from llama_exporter.gateway import openapi as gateway_openapi
from llama_exporter.http import requests_openapi
from llama_exporter.reload import openapi as reload_openapi
from llama_exporter.states import State
from llama_exporter.web import openapi as web_openapi

Schema = dict[str, Any]
PREFIX = "/api/v1/llama"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _obj(required: list[str], **props: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": props}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS: dict[str, str] = {
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


# /readyz's checks (config, state_dir, supervisor): "ok" or why not.
_STRING: Schema = {"type": "string"}
_CHECKS: Schema = {"type": "object", "additionalProperties": _STRING}


def _errors(*codes: str) -> dict[str, Schema]:
    """Error responses: the given codes plus those the guard and auth give on any route."""
    every = ("401", "403", "404", "421")
    out: dict[str, Schema] = {}
    for code in sorted({*every, *codes}):
        response = _json(_ref("Error"), _ERRORS[code])
        if code == "429":
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        if code == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[code] = response
    return out


def _name_param() -> Schema:
    return {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": "m0",
        "description": "a model name",
    }


def _op(summary: str, ok: dict[str, Schema], *errors: str, **extra: Any) -> Schema:
    return {"summary": summary, "responses": {**ok, **_errors(*errors)}, **extra}


def _change(summary: str, ok: dict[str, Schema], *errors: str, **extra: Any) -> Schema:
    """A state-changing operation: 415 applies too."""
    return _op(summary, ok, "415", *errors, **extra)


def _gateway_settings() -> dict[str, Schema]:
    """A registration's gateway settings: the same rules as the config file's keys."""
    default = "default: the config's `defaults:` value"
    return {
        "pinned": {
            "type": "boolean",
            "description": f"never evicted nor unloaded when idle by the gateway; {default}",
        },
        "idle_ttl": {
            "type": "number",
            "minimum": 0,
            "description": f"seconds without a request before unloading, 0 = never; {default}",
            "example": 300,
        },
        "stop_drain": {
            "type": "number",
            "minimum": 0,
            "description": f"seconds an explicit stop waits for requests in flight; {default}",
            "example": 30,
        },
    }


def schemas() -> dict[str, Schema]:
    """The component schemas."""
    number = {"type": "number"}
    integer = {"type": "integer"}
    string = {"type": "string"}
    return {
        "Error": _obj(
            ["error"],
            error={
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": integer,
                    "message": string,
                    "field": string,
                    "running": {"type": "array", "items": string},
                    "cap": integer,
                    "instance": _ref("InstanceStatus"),
                    "checks": _CHECKS,
                },
            },
        ),
        "InstanceStatus": _obj(
            ["model", "state", "since", "pid", "port", "restarts", "last_error"],
            model=string,
            state={"type": "string", "enum": [str(s) for s in State]},
            since=number,
            pid=_nullable(integer),
            port=_nullable(integer),
            url=_nullable(string),
            uptime_seconds=_nullable(number),
            restarts=integer,
            retries=integer,
            last_error=_nullable(string),
            next_retry_at=_nullable(number),
            pinned={"type": "boolean"},
            idle_ttl=number,
            in_flight=integer,
            last_used=_nullable(number),
        ),
        "Model": _obj(
            [
                "name",
                "source",
                "path",
                "ctx_size",
                "parallel",
                "args",
                "pinned",
                "idle_ttl",
                "stop_drain",
                "state",
            ],
            name=string,
            source={"type": "string", "enum": ["config", "discovered", "api"]},
            path=string,
            ctx_size=integer,
            parallel=integer,
            args={"type": "array", "items": string, "description": "secret values are ***"},
            autostart={"type": "boolean"},
            pinned={"type": "boolean"},
            idle_ttl=number,
            stop_drain=number,
            state=string,
            metadata=_nullable({"type": "object"}),
            metadata_error=_nullable(string),
        ),
        "NewModel": {
            **_obj(
                ["name", "path"],
                name={"type": "string", "pattern": MODEL_NAME_PATTERN, "example": "my-model"},
                path={
                    "type": "string",
                    "description": "absolute path of an existing GGUF file",
                    "example": "/nonexistent/model.gguf",
                },
                ctx_size={"type": "integer", "minimum": 1},
                parallel={"type": "integer", "minimum": 1},
                args={
                    "type": "array",
                    "items": string,
                    "description": "tuning flags only (README: security model)",
                },
                env={"type": "object", "additionalProperties": string},
                **_gateway_settings(),
            ),
            "additionalProperties": False,
        },
        "TargetGroup": _obj(
            ["targets", "labels"],
            targets={"type": "array", "items": string},
            labels={"type": "object", "additionalProperties": string},
        ),
    }


def paths() -> dict[str, Schema]:
    """Every route: path -> method -> operation."""
    status_ok = {"200": _json(_ref("InstanceStatus"), "the model's status")}
    return {
        "/healthz": {
            "get": {
                "summary": "liveness: the service answers (no token needed)",
                "security": [],
                "responses": {
                    "200": _json(_obj(["status"], status={"type": "string"}), "alive"),
                    **_errors(),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: model list loaded, state folder writable, supervisor "
                "taking starts (no token needed); 503 names the checks that fail",
                "security": [],
                "responses": {
                    "200": _json(
                        _obj(["status", "checks"], status=_STRING, checks=_CHECKS), "ready"
                    ),
                    **_errors(),
                    "503": _json(_ref("Error"), "not ready: the message and `checks` say why"),
                },
            }
        },
        "/metrics": {
            "get": _op(
                "the service's Prometheus metrics (api_token or scrape_token)",
                {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        f"{PREFIX}/openapi.json": {
            "get": _op("this description", {"200": _json({"type": "object"}, "OpenAPI 3")})
        },
        f"{PREFIX}/models": {
            "get": _op(
                "models, metadata, state",
                {
                    "200": _json(
                        _obj(["models"], models={"type": "array", "items": _ref("Model")}),
                        "every known model",
                    )
                },
            ),
            "post": _change(
                "register a GGUF file as a model (persisted)",
                {"201": _json(_ref("Model"), "registered")},
                "400",
                "409",
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewModel")}},
                },
            ),
        },
        f"{PREFIX}/models/{{name}}": {
            "parameters": [_name_param()],
            "delete": _change(
                "forget an API-registered model (409 while it runs)",
                {"200": _json(_obj(["deleted"], deleted={"type": "string"}), "forgotten")},
                "409",
            ),
        },
        f"{PREFIX}/models/{{name}}/start": {
            "parameters": [_name_param()],
            "post": _change(
                "start a model (202), or with ?wait=true wait until ready (200) or failed (502)",
                {
                    "200": _json(_ref("InstanceStatus"), "ready"),
                    "202": _json(_ref("InstanceStatus"), "starting"),
                },
                "429",
                "502",
                "503",
                parameters=[
                    {
                        "name": flag,
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    }
                    for flag in ("wait", "evict")
                ],
            ),
        },
        f"{PREFIX}/models/{{name}}/stop": {
            "parameters": [_name_param()],
            "post": _change("stop a model", status_ok),
        },
        f"{PREFIX}/models/{{name}}/logs": {
            "parameters": [_name_param()],
            "get": _op(
                "the last N lines of llama-server output (secrets shown as ***)",
                {
                    "200": _json(
                        _obj(
                            ["model", "lines"],
                            model={"type": "string"},
                            lines={"type": "array", "items": {"type": "string"}},
                        ),
                        "log lines",
                    )
                },
                "400",
                parameters=[
                    {
                        "name": "lines",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10_000},
                    }
                ],
            ),
        },
        f"{PREFIX}/models/{{name}}/metrics": {
            "parameters": [_name_param()],
            "get": _op(
                "latest live values and recent history",
                {
                    "200": _json(
                        _obj(
                            ["model", "state", "latest", "history"],
                            model={"type": "string"},
                            state={"type": "string"},
                            latest=_nullable({"type": "object"}),
                            history={"type": "array", "items": {"type": "object"}},
                        ),
                        "live values",
                    )
                },
            ),
        },
        f"{PREFIX}/status": {
            "get": _op(
                "every model's state; running count and cap; host CPU and memory",
                {
                    "200": _json(
                        _obj(
                            ["models", "running", "cap", "host"],
                            models={"type": "array", "items": _ref("InstanceStatus")},
                            running={"type": "integer"},
                            cap={"type": "integer"},
                            host=_nullable(
                                _obj(
                                    [
                                        "cpu_utilization_ratio",
                                        "memory_total_bytes",
                                        "memory_used_bytes",
                                    ],
                                    cpu_utilization_ratio={"type": "number"},
                                    memory_total_bytes={"type": "integer"},
                                    memory_used_bytes={"type": "integer"},
                                )
                            ),
                        ),
                        "status",
                    )
                },
            )
        },
        f"{PREFIX}/targets": {
            "get": _op(
                "Prometheus HTTP SD (api_token or scrape_token)",
                {"200": _json({"type": "array", "items": _ref("TargetGroup")}, "target groups")},
            )
        },
        f"{PREFIX}/ws": {
            "get": _op(
                "WebSocket: llama-status:update and llama-metrics:update events. Auth: the "
                'header, or a first message {"type": "auth", "token": "..."} within 5 s, '
                "else close code 4401",
                {"101": {"description": "switching to the WebSocket protocol"}},
                "400",
                parameters=[
                    {
                        "name": "model",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
    }


def describe() -> Schema:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "llama-exporter",
            "version": __version__,
            "description": "Start and stop llama-server instances, watch them, feed Prometheus.",
        },
        "paths": {
            **paths(),
            **gateway_openapi.paths(),
            **reload_openapi.paths(),
            **requests_openapi.paths(),
            **web_openapi.paths(),
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # No token configured: no auth; with api_token: the bearer token.
        "security": [{}, {"bearer": []}],
    }
