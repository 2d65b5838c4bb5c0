"""models.json: the API-registered models, kept across restarts.

The file is ``{"version": 1, "models": [{name, path, ctx_size, parallel, args, env,
pinned, idle_ttl, stop_drain}, ...]}``, written atomically (mode 0600). Entries written
before pinned/idle_ttl/stop_drain were stored lack them and get the ``defaults:``
values. A file that is not what we write is moved aside, never half-read; entries the
API limits refuse today are not loaded but stay in the file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from llama_exporter.atomic import write_atomic
from llama_exporter.catalog import limits as api_limits
from llama_exporter.config.settings import (
    ModelConfig,
    ModelDefaults,
    parse_flag,
    parse_seconds,
    validate_model_name,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
_T = TypeVar("_T")


def model_to_json(model: ModelConfig) -> dict[str, Any]:
    """The persisted form of an API-registered model."""
    return {
        "name": model.name,
        "path": str(model.path),
        "ctx_size": model.ctx_size,
        "parallel": model.parallel,
        "args": list(model.args),
        "env": dict(model.env),
        "pinned": model.pinned,
        "idle_ttl": model.idle_ttl,
        "stop_drain": model.stop_drain,
    }


def models_from_json(data: object, defaults: ModelDefaults) -> list[ModelConfig]:
    """Parse models.json content; raise ValueError when it is not what we wrote.

    pinned, idle_ttl and stop_drain missing from an entry (a file written before they
    were stored) take the defaults' values.
    """
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError(f"expected an object with version {STATE_VERSION}")
    entries = data.get("models")
    if not isinstance(entries, list):
        raise ValueError("'models' must be a list")
    models = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"models[{i}] must be an object")
        try:
            model = ModelConfig(
                name=_check(entry["name"], str, i, "name"),
                path=Path(_check(entry["path"], str, i, "path")),
                ctx_size=_check(entry["ctx_size"], int, i, "ctx_size"),
                parallel=_check(entry["parallel"], int, i, "parallel"),
                args=tuple(
                    _check(a, str, i, "args")
                    for a in _check(entry.get("args", []), list, i, "args")
                ),
                env=MappingProxyType(
                    {
                        str(k): _check(v, str, i, "env")
                        for k, v in _check(entry.get("env", {}), dict, i, "env").items()
                    }
                ),
                pinned=_setting(entry, i, "pinned", parse_flag, defaults.pinned),
                idle_ttl=_setting(entry, i, "idle_ttl", _seconds_or_zero, defaults.idle_ttl),
                stop_drain=_setting(entry, i, "stop_drain", _seconds_or_zero, defaults.stop_drain),
            )
        except KeyError as exc:
            raise ValueError(f"models[{i}] lacks {exc}") from None
        problem = validate_model_name(model.name)
        if problem:
            raise ValueError(f"models[{i}].name {problem}")
        models.append(model)
    return models


def _check(value: object, kind: type[_T], index: int, field: str) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"models[{index}].{field} must be {kind.__name__}, got {value!r}")
    return value


def _seconds_or_zero(value: object) -> float:
    return parse_seconds(value, zero_ok=True)


def _setting(
    entry: dict[str, Any], index: int, field: str, parse: Callable[[object], _T], default: _T
) -> _T:
    """An optional gateway setting: the same rules as in the config file, else the default."""
    if field not in entry:
        return default
    try:
        return parse(entry[field])
    except ValueError as exc:
        raise ValueError(f"models[{index}].{field} {exc}") from None


@dataclass(frozen=True)
class StoredModels:
    """What models.json holds: the models to load, and those the API limits refuse today."""

    allowed: list[ModelConfig]
    refused: list[ModelConfig]  # not loaded, but written back so that nothing is lost


class ModelsFile:
    """One models.json: read it (moving a corrupt one aside), write it atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, defaults: ModelDefaults) -> StoredModels:
        """The stored models; none when the file is missing, unreadable or corrupt."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return StoredModels([], [])
        except OSError as exc:
            log.error("cannot read %s: %s; API-registered models are not loaded", self.path, exc)
            return StoredModels([], [])
        try:
            stored = models_from_json(json.loads(text), defaults)
        except (ValueError, TypeError, AttributeError) as exc:
            aside = self.move_aside()
            log.error(
                "%s is corrupt (%s): moved to %s; API-registered models must be added again",
                self.path,
                exc,
                aside,
            )
            return StoredModels([], [])
        return self._within_limits(stored)

    def _within_limits(self, models: list[ModelConfig]) -> StoredModels:
        """The persisted models the API limits allow; the others are logged and set aside.

        An entry written before the limits existed (or edited by hand) must not start
        with flags the API would refuse today.
        """
        allowed, refused = [], []
        for model in models:
            problem = api_limits.check_model(model.args, model.env)
            if problem is None:
                allowed.append(model)
                continue
            refused.append(model)
            log.error(
                "model %s in %s is not loaded: %s: %s (move it into the config file, whose "
                "models may use any flag, or edit the file)",
                model.name,
                self.path,
                problem.field,
                problem.message,
            )
        return StoredModels(allowed, refused)

    def write(self, models: Iterable[ModelConfig]) -> None:
        """Replace the file with these models (OSError when it cannot be written)."""
        data = {"version": STATE_VERSION, "models": [model_to_json(m) for m in models]}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n", mode=0o600)

    def move_aside(self) -> Path:
        """Rename the file to models.json.corrupt-<time>[-n]; return the new path."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.rename(aside)
        except OSError as exc:
            log.error("cannot move %s aside: %s", self.path, exc)
        return aside
