"""The models the service knows: from the config, found in model_dirs, registered by API.

Config models win every name clash; API-registered models (persisted in
``<state_dir>/models.json``) win over files discovered in a folder. Metadata is
read through a GGUFInfoCache off the event loop (load_metadata), so start-up never
waits on it. What a registration may contain is checked in registration.py; the
models.json format, reading and writing are in models_file.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Unpack

from llama_exporter import states
from llama_exporter.catalog.gguf_meta import GGUFError, GGUFInfo, GGUFInfoCache
from llama_exporter.catalog.models_file import ModelsFile, StoredModels

# re-exported: callers know them as registry errors
from llama_exporter.catalog.registration import (
    Fields,
    InvalidModel,
    RegistryError,
    check_registration,
)
from llama_exporter.config.settings import Config, ModelConfig, ModelDefaults, sanitize_model_name

log = logging.getLogger(__name__)

ModelSource = Literal["config", "discovered", "api"]
SOURCE_ORDER: Mapping[ModelSource, int] = {"config": 0, "discovered": 1, "api": 2}


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


@dataclass(frozen=True)
class Sources:
    """What a (re)load read from disk: GGUF files found in model_dirs, the stored models."""

    found: list[ModelConfig]
    stored: StoredModels


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
        self.file = ModelsFile(state_file or config.state_dir / "models.json")
        self.cache = gguf_cache or GGUFInfoCache()
        self._models: dict[str, Model] = {}
        # models.json entries the API limits refuse: not loaded, but kept in the file.
        self._rejected: list[ModelConfig] = []

    # -- reading

    def load(self) -> None:
        """(Re)build the model list from the config, model_dirs and the state file."""
        self.install(self.config, self.read_sources(self.config))

    def read_sources(self, config: Config) -> Sources:
        """The GGUF files in config's model_dirs and the stored API models (blocking I/O)."""
        return Sources(self._discover(config), self.file.read(config.defaults))

    def merged(self, config: Config, sources: Sources) -> dict[str, ModelConfig]:
        """name -> ModelConfig as install(config, sources) would make them (pure)."""
        merged, _ = merge_sources(config.models, sources.found, sources.stored.allowed)
        return {m.name: m for m, _ in merged}

    def install(self, config: Config, sources: Sources) -> None:
        """Take config and what read_sources(config) found as the model list (a reload too)."""
        self.config = config
        self._rejected = sources.stored.refused
        merged, warnings = merge_sources(config.models, sources.found, sources.stored.allowed)
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

    @staticmethod
    def _discover(config: Config) -> list[ModelConfig]:
        found: list[ModelConfig] = []
        for folder in config.model_dirs:
            if not folder.is_dir():
                log.warning("model folder %s does not exist: no models found there", folder)
                continue
            try:
                files = sorted(folder.glob("*.gguf"))
            except OSError as exc:
                log.warning("cannot list model folder %s: %s", folder, exc)
                continue
            found.extend(discovered_model(f, config.defaults) for f in files if f.is_file())
        return found

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
        *,
        info: GGUFInfo | None = None,
        **fields: Unpack[Fields],
    ) -> Model:
        """Register a model through the API and persist it; InvalidModel or ModelConflict."""
        model_config = self.validate_new(name, path, **fields)
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

    async def aadd(self, name: str, path: Path | str, **fields: Unpack[Fields]) -> Model:
        """add() that first reads the GGUF header off the event loop (not GGUF: InvalidModel)."""
        model_config = self.validate_new(name, path, **fields)
        try:
            info = await self.cache.aget(model_config.path)
        except (GGUFError, OSError) as exc:
            raise InvalidModel("path", f"not a readable GGUF file: {exc}") from None
        return self.add(name, path, info=info, **fields)

    def validate_new(self, name: str, path: Path | str, **fields: Unpack[Fields]) -> ModelConfig:
        """Check a registration's fields and build its ModelConfig; InvalidModel on a bad one."""
        return check_registration(self.config.defaults, name, path, **fields)

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
        api = [m.config for m in self._models.values() if m.source == "api"]
        self.file.write(api + [m for m in self._rejected if m.name not in self._models])

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
