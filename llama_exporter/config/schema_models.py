"""The config file's model sections: ``defaults:`` and ``models:`` (and each model's args).

Only ``config_schema.Parser`` uses this module; everything it builds is defined in
``config.py``.
"""

from __future__ import annotations

from pathlib import Path

from llama_exporter.config.settings import (
    ModelConfig,
    ModelDefaults,
    _empty_env,
    find_managed_flag,
    validate_model_name,
)
from llama_exporter.config.values import Values, join_key, kind_of


class ModelSchema(Values):
    """The defaults: section and the models: list, checked key by key."""

    def defaults(self, value: object) -> ModelDefaults:
        raw = self.mapping(value, "defaults", _DEFAULTS_KEYS)
        base = ModelDefaults()
        ctx = self.integer(raw.get("ctx_size", base.ctx_size), "defaults.ctx_size")
        parallel = self.integer(raw.get("parallel", base.parallel), "defaults.parallel")
        self.check_ctx(ctx, parallel, "defaults")
        args = self.args(raw["args"], "defaults.args") if "args" in raw else base.args
        return ModelDefaults(
            ctx_size=ctx,
            parallel=parallel,
            args=args,
            pinned=self.boolean(raw.get("pinned", base.pinned), "defaults.pinned"),
            idle_ttl=self.seconds_or_zero(raw.get("idle_ttl", base.idle_ttl), "defaults.idle_ttl"),
            stop_drain=self.seconds_or_zero(
                raw.get("stop_drain", base.stop_drain), "defaults.stop_drain"
            ),
        )

    def check_ctx(self, ctx: int, parallel: int, key: str) -> None:
        if ctx < parallel:
            raise self.error(
                join_key(key, "ctx_size"),
                f"{ctx} is less than parallel ({parallel}): each slot needs context",
                "raise ctx_size or lower parallel",
            )

    def args(self, value: object, key: str) -> tuple[str, ...]:
        args = self.strings(value, key)
        managed = find_managed_flag(args)
        if managed is not None:
            i, flag, setting = managed
            raise self.error(
                f"{key}[{i}]",
                f"{flag} is set by the service",
                f"use the model's {setting} setting instead",
            )
        return args

    def models(self, value: object, defaults: ModelDefaults) -> tuple[ModelConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(
                "models",
                f"must be a list, got {kind_of(value)}",
                "write each model as '- name: ...'",
            )
        models: list[ModelConfig] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            model = self.model(item, f"models[{i}]", defaults)
            if model.name in seen:
                raise self.error(
                    f"models[{i}].name",
                    f"duplicate model name {model.name!r} (also models[{seen[model.name]}])",
                    "give every model its own name",
                )
            seen[model.name] = i
            models.append(model)
        return tuple(models)

    def model(self, value: object, key: str, defaults: ModelDefaults) -> ModelConfig:
        raw = self.mapping(value, key, _MODEL_KEYS)
        for required in ("name", "path"):
            if raw.get(required) is None:
                raise self.error(join_key(key, required), "is required")
        name = self.string(raw["name"], f"{key}.name")
        problem = validate_model_name(name)
        if problem:
            raise self.error(f"{key}.name", problem)
        path = self.gguf_path(raw["path"], f"{key}.path")
        ctx = self.integer(raw.get("ctx_size", defaults.ctx_size), f"{key}.ctx_size")
        parallel = self.integer(raw.get("parallel", defaults.parallel), f"{key}.parallel")
        self.check_ctx(ctx, parallel, key)
        api_key = raw.get("api_key")
        return ModelConfig(
            name=name,
            path=path,
            ctx_size=ctx,
            parallel=parallel,
            args=self.args(raw["args"], f"{key}.args") if "args" in raw else defaults.args,
            env=self.str_map(raw["env"], f"{key}.env") if raw.get("env") else _empty_env(),
            autostart=self.boolean(raw.get("autostart", False), f"{key}.autostart"),
            api_key=None if api_key is None else self.string(api_key, f"{key}.api_key"),
            pinned=self.boolean(raw.get("pinned", defaults.pinned), f"{key}.pinned"),
            idle_ttl=self.seconds_or_zero(
                raw.get("idle_ttl", defaults.idle_ttl), f"{key}.idle_ttl"
            ),
            stop_drain=self.seconds_or_zero(
                raw.get("stop_drain", defaults.stop_drain), f"{key}.stop_drain"
            ),
        )

    def gguf_path(self, value: object, key: str) -> Path:
        path = self.path(value, key)
        if path.suffix != ".gguf":
            raise self.error(key, f"{path} does not end in .gguf", "point it at a GGUF model file")
        if self.check_files:
            if not path.exists():
                raise self.error(
                    key, f"{path} does not exist", "fix the path or download the model"
                )
            if not path.is_file():
                raise self.error(
                    key, f"{path} is not a regular file", "point it at a GGUF model file"
                )
        return path


_DEFAULTS_KEYS = ("ctx_size", "parallel", "args", "pinned", "idle_ttl", "stop_drain")
_MODEL_KEYS = (
    "name",
    "path",
    "ctx_size",
    "parallel",
    "args",
    "env",
    "autostart",
    "api_key",
    "pinned",
    "idle_ttl",
    "stop_drain",
)
