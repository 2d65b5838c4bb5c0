"""What a model registered through the API may be: every field checked, a bad one named.

The rules follow the config file's (config_models.py) for the same keys, sharing its
checks where the keys mean the same (parse_seconds, parse_flag), plus the API limits
(api_limits.py) on flags and environment. Pure apart from looking at the GGUF path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, TypedDict, TypeVar, Unpack

from llama_exporter.catalog import limits as api_limits
from llama_exporter.config.settings import (
    ModelConfig,
    ModelDefaults,
    find_managed_flag,
    parse_flag,
    parse_seconds,
    validate_model_name,
)

_T = TypeVar("_T")


class RegistryError(Exception):
    """A request the registry refuses; status is the HTTP status the API should answer."""

    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message  # not KeyError's quoted repr


class InvalidModel(RegistryError):
    """A field of a model registration is invalid (HTTP 400)."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Fields(TypedDict, total=False):
    """A registration's optional fields; missing or None: the value in ``defaults:``."""

    ctx_size: int | None
    parallel: int | None
    args: Sequence[str]
    env: Mapping[str, str] | None
    pinned: bool | None  # never evicted nor unloaded when idle
    idle_ttl: float | None  # seconds without a request before unloading; 0 = never
    stop_drain: float | None  # an explicit stop waits this long for requests in flight


def check_registration(
    defaults: ModelDefaults, name: str, path: Path | str, **fields: Unpack[Fields]
) -> ModelConfig:
    """The ModelConfig of a registration; a field given as None takes the defaults' value."""
    problem = validate_model_name(name)
    if problem:
        raise InvalidModel("name", problem)
    # checked before the file: a bad value is named even when the path is wrong too
    pinned, idle_ttl, stop_drain = _gateway_settings(defaults, fields)
    ctx_size, parallel = fields.get("ctx_size"), fields.get("parallel")
    args: Sequence[str] = fields.get("args", ())
    env = fields.get("env")
    if not isinstance(path, str | Path) or not str(path):
        raise InvalidModel("path", f"must be a path to a .gguf file, got {path!r}")
    gguf_path = check_gguf_file(Path(path).expanduser())
    ctx = _positive(defaults.ctx_size if ctx_size is None else ctx_size, "ctx_size")
    slots = _positive(defaults.parallel if parallel is None else parallel, "parallel")
    if ctx < slots:
        raise InvalidModel("ctx_size", f"{ctx} is less than parallel ({slots})")
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise InvalidModel("args", "must be a list of strings")
    managed = find_managed_flag(args)
    if managed is not None:
        raise InvalidModel("args", f"{managed[1]} is set by the service: use {managed[2]} instead")
    env = env or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise InvalidModel("env", "must map strings to strings")
    refused = api_limits.check_model(args, env)
    if refused is not None:
        raise InvalidModel(refused.field, refused.message)
    return ModelConfig(
        name=name,
        path=gguf_path,
        ctx_size=ctx,
        parallel=slots,
        args=tuple(args) or defaults.args,
        env=MappingProxyType(dict(env)),
        pinned=pinned,
        idle_ttl=idle_ttl,
        stop_drain=stop_drain,
    )


def _gateway_settings(defaults: ModelDefaults, settings: Fields) -> tuple[bool, float, float]:
    """(pinned, idle_ttl, stop_drain) checked by the config file's rules, else the defaults."""
    pinned = settings.get("pinned")
    idle_ttl = settings.get("idle_ttl")
    stop_drain = settings.get("stop_drain")
    return (
        defaults.pinned if pinned is None else _checked(parse_flag, pinned, "pinned"),
        defaults.idle_ttl if idle_ttl is None else _seconds(idle_ttl, "idle_ttl"),
        defaults.stop_drain if stop_drain is None else _seconds(stop_drain, "stop_drain"),
    )


def _checked(parse: Callable[[object], _T], value: object, field: str) -> _T:
    """parse(value), its ValueError an InvalidModel naming the field."""
    try:
        return parse(value)
    except ValueError as exc:
        raise InvalidModel(field, str(exc)) from None


def _seconds(value: object, field: str) -> float:
    """A gateway setting in seconds, by the config file's rule: finite, 0 or more."""
    return _checked(partial(parse_seconds, zero_ok=True), value, field)


def _positive(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidModel(field, f"must be a positive integer, got {value!r}")
    return value


def check_gguf_file(path: Path, field: str = "path") -> Path:
    """Return path when it names an existing regular .gguf file, else raise InvalidModel."""
    if not path.is_absolute():
        raise InvalidModel(field, f"{path} is not an absolute path: give the full path")
    if path.suffix != ".gguf":
        raise InvalidModel(field, f"{path} does not end in .gguf: give a GGUF model file")
    if not path.exists():
        raise InvalidModel(field, f"{path} does not exist")
    if not path.is_file():
        raise InvalidModel(field, f"{path} is not a regular file")
    return path
