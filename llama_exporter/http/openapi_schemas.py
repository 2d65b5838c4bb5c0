"""The component schemas of the OpenAPI description: errors, status, models, targets."""

from __future__ import annotations

from llama_exporter.http.openapi_build import CHECKS, Schema, nullable, obj, ref
from llama_exporter.states import State

MODEL_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


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
        "Error": obj(
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
                    "instance": ref("InstanceStatus"),
                    "memory": {
                        "type": "object",
                        "description": "a start refused for memory: what it needs and who holds it",
                        "properties": {
                            "device": string,
                            "needed_bytes": integer,
                            "free_bytes": integer,
                            "budget_bytes": integer,
                            "held_by": {"type": "object", "additionalProperties": integer},
                        },
                    },
                    "checks": CHECKS,
                },
            },
        ),
        "InstanceStatus": obj(
            ["model", "state", "since", "pid", "port", "restarts", "last_error"],
            model=string,
            state={"type": "string", "enum": [str(s) for s in State]},
            since=number,
            pid=nullable(integer),
            port=nullable(integer),
            url=nullable(string),
            uptime_seconds=nullable(number),
            restarts=integer,
            retries=integer,
            last_error=nullable(string),
            next_retry_at=nullable(number),
            pinned={"type": "boolean"},
            idle_ttl=number,
            in_flight=integer,
            last_used=nullable(number),
        ),
        "Model": obj(
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
            metadata=nullable({"type": "object"}),
            metadata_error=nullable(string),
            memory=nullable(ref("ModelMemory")),
        ),
        "ModelMemory": obj(
            ["estimate_bytes", "reported_bytes", "estimate_devices", "reported_devices"],
            estimate_bytes=nullable(integer),
            reported_bytes=nullable(integer),
            estimate_devices={"type": "object", "additionalProperties": integer},
            reported_devices={"type": "object", "additionalProperties": integer},
        ),
        "MemoryDevices": obj(
            ["devices"],
            devices={
                "type": "object",
                "description": "per device (cpu, cuda0...): budget, reserved, by model",
                "additionalProperties": obj(
                    ["budget_bytes", "reserved_bytes", "models"],
                    budget_bytes=nullable(integer),
                    reserved_bytes=integer,
                    models={"type": "object", "additionalProperties": integer},
                ),
            },
        ),
        "NewModel": {
            **obj(
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
        "TargetGroup": obj(
            ["targets", "labels"],
            targets={"type": "array", "items": string},
            labels={"type": "object", "additionalProperties": string},
        ),
    }
