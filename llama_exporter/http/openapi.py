"""The OpenAPI 3 description of every route, served at /api/v1/llama/openapi.json.

tests/test_openapi.py fails when the app has a route this does not describe;
CI fuzzes the running service against it with schemathesis. Whoever adds a
route describes it here (paths()) in the same change.
"""

from __future__ import annotations

from llama_exporter import __version__
from llama_exporter.gateway import openapi as gateway_openapi
from llama_exporter.http import requests_openapi
from llama_exporter.http.openapi_build import (
    CHECKS,
    STRING,
    Schema,
    change,
    error_responses,
    json_response,
    name_param,
    nullable,
    obj,
    op,
    ref,
)
from llama_exporter.http.openapi_schemas import schemas
from llama_exporter.reload import openapi as reload_openapi
from llama_exporter.web import openapi as web_openapi

PREFIX = "/api/v1/llama"


def paths() -> dict[str, Schema]:
    """Every route: path -> method -> operation."""
    status_ok = {"200": json_response(ref("InstanceStatus"), "the model's status")}
    return {
        "/healthz": {
            "get": {
                "summary": "liveness: the service answers (no token needed)",
                "security": [],
                "responses": {
                    "200": json_response(obj(["status"], status={"type": "string"}), "alive"),
                    **error_responses(),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: model list loaded, state folder writable, supervisor "
                "taking starts (no token needed); 503 names the checks that fail",
                "security": [],
                "responses": {
                    "200": json_response(
                        obj(["status", "checks"], status=STRING, checks=CHECKS), "ready"
                    ),
                    **error_responses(),
                    "503": json_response(
                        ref("Error"), "not ready: the message and `checks` say why"
                    ),
                },
            }
        },
        "/metrics": {
            "get": op(
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
            "get": op("this description", {"200": json_response({"type": "object"}, "OpenAPI 3")})
        },
        f"{PREFIX}/models": {
            "get": op(
                "models, metadata, state",
                {
                    "200": json_response(
                        obj(["models"], models={"type": "array", "items": ref("Model")}),
                        "every known model",
                    )
                },
            ),
            "post": change(
                "register a GGUF file as a model (persisted)",
                {"201": json_response(ref("Model"), "registered")},
                "400",
                "409",
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref("NewModel")}},
                },
            ),
        },
        f"{PREFIX}/models/{{name}}": {
            "parameters": [name_param()],
            "delete": change(
                "forget an API-registered model (409 while it runs)",
                {"200": json_response(obj(["deleted"], deleted={"type": "string"}), "forgotten")},
                "409",
            ),
        },
        f"{PREFIX}/models/{{name}}/start": {
            "parameters": [name_param()],
            "post": change(
                "start a model (202), or with ?wait=true wait until ready (200) or failed (502)",
                {
                    "200": json_response(ref("InstanceStatus"), "ready"),
                    "202": json_response(ref("InstanceStatus"), "starting"),
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
            "parameters": [name_param()],
            "post": change("stop a model", status_ok),
        },
        f"{PREFIX}/models/{{name}}/logs": {
            "parameters": [name_param()],
            "get": op(
                "the last N lines of llama-server output (secrets shown as ***)",
                {
                    "200": json_response(
                        obj(
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
            "parameters": [name_param()],
            "get": op(
                "latest live values and recent history",
                {
                    "200": json_response(
                        obj(
                            ["model", "state", "latest", "history"],
                            model={"type": "string"},
                            state={"type": "string"},
                            latest=nullable({"type": "object"}),
                            history={"type": "array", "items": {"type": "object"}},
                        ),
                        "live values",
                    )
                },
            ),
        },
        f"{PREFIX}/status": {
            "get": op(
                "every model's state; running count and cap; host CPU and memory",
                {
                    "200": json_response(
                        obj(
                            ["models", "running", "cap", "host"],
                            models={"type": "array", "items": ref("InstanceStatus")},
                            running={"type": "integer"},
                            cap={"type": "integer"},
                            host=nullable(
                                obj(
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
                            memory=ref("MemoryDevices"),
                        ),
                        "status",
                    )
                },
            )
        },
        f"{PREFIX}/targets": {
            "get": op(
                "Prometheus HTTP SD (api_token or scrape_token)",
                {
                    "200": json_response(
                        {"type": "array", "items": ref("TargetGroup")}, "target groups"
                    )
                },
            )
        },
        f"{PREFIX}/ws": {
            "get": op(
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
