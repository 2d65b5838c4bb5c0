"""The models the service knows: from the config, found in model_dirs, registered by API.

Config models win every name clash; API-registered models (persisted in
``<state_dir>/models.json``) win over files discovered in a folder. Metadata is
read through a GGUFInfoCache off the event loop (load_metadata), so start-up never
waits on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar

from llama_exporter import api_limits, states
from llama_exporter.atomic import write_atomic
from llama_exporter.config import (
    Config,
    ModelConfig,
    ModelDefaults,
    find_managed_flag,
    sanitize_model_name,
    validate_model_name,
)
from llama_exporter.gguf_meta import GGUFError, GGUFInfo, GGUFInfoCache

log = logging.getLogger(__name__)

ModelSource = Literal["config", "discovered", "api"]
SOURCE_ORDER: Mapping[ModelSource, int] = {"config": 0, "discovered": 1, "api": 2}
STATE_VERSION = 1
_T = TypeVar("_T")


@dataclass(frozen=True)
class Model:
    """A known model: how to launch it, where it came from, and its GGUF metadata."""

    config: ModelConfig
    source: ModelSource
    info: GGUFInfo | None = None  # None until load_metadata() has read the header
    error: str | None = None  # why the metadata could not be read (not fatal)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def path(self) -> Path:
        return self.config.path


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


class UnknownModel(RegistryError, states.UnknownModel):
    """No model has this name (HTTP 404); the same error the supervisor raises."""

    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model {name!r}")
        self.name = name


class ModelConflict(RegistryError):
    """The request clashes with an existing model or with where a model is defined (HTTP 409)."""

    status = 409


@dataclass(frozen=True)
class ModelInfoView:
    """Flat view of a model for the collector's model_info series."""

    name: str
    path: Path
    source: ModelSource
    architecture: str | None
    quantization: str | None
    size_label: str | None
    context_length: int | None
    file_size: int | None

    @classmethod
    def of(cls, model: Model) -> ModelInfoView:
        """The view of one registry entry (metadata fields None until read)."""
        info = model.info
        return cls(
            name=model.name,
            path=model.path,
            source=model.source,
            architecture=info.architecture if info else None,
            quantization=info.quantization if info else None,
            size_label=info.size_label if info else None,
            context_length=info.context_length if info else None,
            file_size=info.file_size if info else None,
        )


class ConfigSource:
    """The registry seen as name -> ModelConfig (what the supervisor needs)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def get(self, name: str) -> ModelConfig:
        """The model's launch config; UnknownModel (a KeyError) when unknown."""
        return self._registry.get(name).config

    def names(self) -> list[str]:
        """All known model names."""
        return self._registry.names()


# --- pure helpers ---------------------------------------------------------------------------------


def discovered_model(path: Path, defaults: ModelDefaults) -> ModelConfig:
    """The ModelConfig for a GGUF file found in a model folder."""
    return ModelConfig(
        name=sanitize_model_name(path.stem),
        path=path,
        ctx_size=defaults.ctx_size,
        parallel=defaults.parallel,
        args=defaults.args,
        pinned=defaults.pinned,
        idle_ttl=defaults.idle_ttl,
        stop_drain=defaults.stop_drain,
    )


def merge_sources(
    configured: Iterable[ModelConfig],
    discovered: Iterable[ModelConfig],
    api: Iterable[ModelConfig],
) -> tuple[list[tuple[ModelConfig, ModelSource]], list[str]]:
    """Merge the three sources by name: config > api > discovered; return (models, warnings)."""
    chosen: dict[str, tuple[ModelConfig, ModelSource]] = {}
    warnings: list[str] = []
    for model in configured:
        chosen[model.name] = (model, "config")
    for model in api:
        held = chosen.get(model.name)
        if held is not None:
            warnings.append(
                f"API-registered model {model.name!r} ({model.path}) is ignored: "
                f"the config defines a model with that name; remove one of them"
            )
            continue
        chosen[model.name] = (model, "api")
    for model in discovered:
        held = chosen.get(model.name)
        if held is not None:
            if held[0].path != model.path:
                warnings.append(
                    f"{model.path} is not listed as model {model.name!r}: "
                    f"the name is taken by {held[0].path} ({held[1]}); rename the file"
                )
            continue
        chosen[model.name] = (model, "discovered")
    ordered = sorted(chosen.values(), key=lambda item: SOURCE_ORDER[item[1]])
    return ordered, warnings


def model_to_json(model: ModelConfig) -> dict[str, Any]:
    """The persisted form of an API-registered model."""
    return {
        "name": model.name,
        "path": str(model.path),
        "ctx_size": model.ctx_size,
        "parallel": model.parallel,
        "args": list(model.args),
        "env": dict(model.env),
    }


def models_from_json(data: object) -> list[ModelConfig]:
    """Parse models.json content; raise ValueError when it is not what we wrote."""
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


# --- the registry ---------------------------------------------------------------------------------


class Registry:
    """All known models by name; add/remove persist API-registered ones atomically."""

    def __init__(
        self,
        config: Config,
        *,
        state_file: Path | None = None,
        gguf_cache: GGUFInfoCache | None = None,
    ) -> None:
        self.config = config
        self.state_file = state_file or config.state_dir / "models.json"
        self.cache = gguf_cache or GGUFInfoCache()
        self._models: dict[str, Model] = {}
        # models.json entries the API limits refuse: not loaded, but kept in the file.
        self._rejected: list[ModelConfig] = []

    # -- reading

    def load(self) -> None:
        """(Re)build the model list from the config, model_dirs and the state file."""
        found = self._discover()
        api = self._read_state()
        merged, warnings = merge_sources(self.config.models, found, api)
        for warning in warnings:
            log.warning("%s", warning)
        previous = self._models
        models: dict[str, Model] = {}
        for model_config, source in merged:
            old = previous.get(model_config.name)
            if old is not None and old.config == model_config and old.source == source:
                models[model_config.name] = old  # keep metadata already read
            else:
                models[model_config.name] = Model(model_config, source)
        self._models = models
        log.info(
            "%d models: %s",
            len(models),
            ", ".join(f"{m.name} ({m.source})" for m in models.values()) or "none",
        )

    def _discover(self) -> list[ModelConfig]:
        found: list[ModelConfig] = []
        for folder in self.config.model_dirs:
            if not folder.is_dir():
                log.warning("model folder %s does not exist: no models found there", folder)
                continue
            try:
                files = sorted(folder.glob("*.gguf"))
            except OSError as exc:
                log.warning("cannot list model folder %s: %s", folder, exc)
                continue
            found.extend(discovered_model(f, self.config.defaults) for f in files if f.is_file())
        return found

    def _read_state(self) -> list[ModelConfig]:
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error(
                "cannot read %s: %s; API-registered models are not loaded", self.state_file, exc
            )
            return []
        try:
            stored = models_from_json(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            aside = self._move_aside()
            log.error(
                "%s is corrupt (%s): moved to %s; API-registered models must be added again",
                self.state_file,
                exc,
                aside,
            )
            return []
        d = self.config.defaults  # gateway settings are not stored: today's defaults apply
        return self._within_limits(
            [
                replace(m, pinned=d.pinned, idle_ttl=d.idle_ttl, stop_drain=d.stop_drain)
                for m in stored
            ]
        )

    def _within_limits(self, models: list[ModelConfig]) -> list[ModelConfig]:
        """The persisted models the API limits allow; the others are logged and set aside.

        An entry written before the limits existed (or edited by hand) must not start
        with flags the API would refuse today.
        """
        self._rejected = []
        allowed = []
        for model in models:
            refused = api_limits.check_model(model.args, model.env)
            if refused is None:
                allowed.append(model)
                continue
            self._rejected.append(model)
            log.error(
                "model %s in %s is not loaded: %s: %s (move it into the config file, whose "
                "models may use any flag, or edit the file)",
                model.name,
                self.state_file,
                refused.field,
                refused.message,
            )
        return allowed

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.state_file.with_name(f"{self.state_file.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.state_file.with_name(f"{self.state_file.name}.corrupt-{stamp}-{n}")
        try:
            self.state_file.rename(aside)
        except OSError as exc:
            log.error("cannot move %s aside: %s", self.state_file, exc)
        return aside

    def get(self, name: str) -> Model:
        """The model called name; UnknownModel when there is none."""
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(name) from None

    def find(self, name: str) -> Model | None:
        """The model called name, or None."""
        return self._models.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    def all(self) -> list[Model]:
        """Every model: config ones in file order, then discovered, then API-registered."""
        return list(self._models.values())

    def names(self) -> list[str]:
        """Model names in the order of all()."""
        return list(self._models)

    def model_infos(self) -> list[ModelInfoView]:
        """Every model as a flat view, for the collector."""
        return [ModelInfoView.of(m) for m in self._models.values()]

    def model_source(self) -> ConfigSource:
        """A live name -> ModelConfig view of this registry, for the supervisor."""
        return ConfigSource(self)

    # -- changing

    def add(
        self,
        name: str,
        path: Path | str,
        ctx_size: int | None = None,
        parallel: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        info: GGUFInfo | None = None,
    ) -> Model:
        """Register a model through the API and persist it; InvalidModel or ModelConflict."""
        model_config = self.validate_new(name, path, ctx_size, parallel, args, env)
        if name in self._models:
            held = self._models[name]
            raise ModelConflict(
                f"model {name!r} already exists ({held.source}, {held.path}): pick another name"
            )
        model = Model(model_config, "api", info=info)
        self._models[name] = model
        try:
            self._persist()
        except OSError:
            del self._models[name]
            raise
        log.info("registered model %s (%s)", name, model.path)
        return model

    async def aadd(
        self,
        name: str,
        path: Path | str,
        ctx_size: int | None = None,
        parallel: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Model:
        """add() that first reads the GGUF header off the event loop (not GGUF: InvalidModel)."""
        model_config = self.validate_new(name, path, ctx_size, parallel, args, env)
        try:
            info = await self.cache.aget(model_config.path)
        except (GGUFError, OSError) as exc:
            raise InvalidModel("path", f"not a readable GGUF file: {exc}") from None
        return self.add(name, path, ctx_size, parallel, args, env, info=info)

    def validate_new(
        self,
        name: str,
        path: Path | str,
        ctx_size: int | None = None,
        parallel: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> ModelConfig:
        """Check a registration's fields and build its ModelConfig; InvalidModel on a bad one."""
        problem = validate_model_name(name)
        if problem:
            raise InvalidModel("name", problem)
        if not isinstance(path, str | Path) or not str(path):
            raise InvalidModel("path", f"must be a path to a .gguf file, got {path!r}")
        gguf_path = check_gguf_file(Path(path).expanduser())
        defaults = self.config.defaults
        ctx = _positive(defaults.ctx_size if ctx_size is None else ctx_size, "ctx_size")
        slots = _positive(defaults.parallel if parallel is None else parallel, "parallel")
        if ctx < slots:
            raise InvalidModel("ctx_size", f"{ctx} is less than parallel ({slots})")
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise InvalidModel("args", "must be a list of strings")
        managed = find_managed_flag(args)
        if managed is not None:
            raise InvalidModel(
                "args", f"{managed[1]} is set by the service: use {managed[2]} instead"
            )
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
            pinned=defaults.pinned,
            idle_ttl=defaults.idle_ttl,
            stop_drain=defaults.stop_drain,
        )

    def remove(self, name: str) -> Model:
        """Forget an API-registered model and persist; the caller checks it is not running."""
        model = self.get(name)
        if model.source == "config":
            where = self.config.source or "the configuration"
            raise ModelConflict(f"model {name!r} is defined in {where}: remove it there")
        if model.source == "discovered":
            raise ModelConflict(
                f"model {name!r} was found in folder {model.path.parent}: move or delete the file"
            )
        del self._models[name]
        try:
            self._persist()
        except OSError:
            self._models[name] = model
            raise
        log.info("removed model %s", name)
        return model

    def _persist(self) -> None:
        entries = [model_to_json(m.config) for m in self._models.values() if m.source == "api"]
        entries += [model_to_json(m) for m in self._rejected if m.name not in self._models]
        data = {"version": STATE_VERSION, "models": entries}
        write_atomic(self.state_file, json.dumps(data, indent=2) + "\n", mode=0o600)

    # -- metadata

    async def load_metadata(self) -> None:
        """Read the GGUF header of every model without metadata, off the event loop."""
        pending = [m for m in self._models.values() if m.info is None]
        results = await asyncio.gather(
            *(self.cache.aget(m.path) for m in pending), return_exceptions=True
        )
        for model, result in zip(pending, results, strict=True):
            if self._models.get(model.name) is not model:
                continue  # removed or replaced meanwhile
            if isinstance(result, GGUFInfo):
                self._models[model.name] = replace(model, info=result, error=None)
            elif isinstance(result, GGUFError):
                self._metadata_failed(model, str(result))
            elif isinstance(result, OSError):
                self._metadata_failed(model, f"{model.path}: {result}")
            elif isinstance(result, Exception):  # a bug or a surprise: keep going with the rest
                log.error(
                    "model %s: unexpected error reading GGUF metadata",
                    model.name,
                    exc_info=result,
                )
                detail = f"{type(result).__name__}: {result}"
                self._metadata_failed(model, f"{model.path}: {detail}")
            else:
                raise result

    def _metadata_failed(self, model: Model, message: str) -> None:
        """Record why a model's metadata could not be read."""
        log.warning("model %s: cannot read GGUF metadata: %s", model.name, message)
        self._models[model.name] = replace(model, error=message)
