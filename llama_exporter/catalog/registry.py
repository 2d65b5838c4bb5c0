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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Unpack

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
from llama_exporter.catalog.sources import ModelSource, discovered_model, merge_sources
from llama_exporter.config.settings import Config, ModelConfig

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Sources:
    """What a (re)load read from disk: GGUF files found in model_dirs, the stored models."""

    found: list[ModelConfig]
    stored: StoredModels


# (models now, models as the new config makes them) -> install them?
Accept = Callable[[dict[str, ModelConfig], dict[str, ModelConfig]], bool]


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
        # aremove() hides a model at once; it stays in the file until its write succeeds.
        self._removing: dict[str, Model] = {}
        # One models.json write at a time, in call order (asyncio.Lock wakes waiters FIFO).
        self._writing = asyncio.Lock()

    # -- reading

    def load(self) -> None:
        """(Re)build the model list from the config, model_dirs and the state file (blocking)."""
        self._apply(self.config, self.read_sources(self.config))

    async def aload(self) -> None:
        """load() with the folders and models.json read in a thread (the app's start-up)."""
        async with self._writing:
            self._apply(self.config, await asyncio.to_thread(self.read_sources, self.config))

    async def areload(self, config: Config, accept: Accept) -> bool:
        """A config reload: read config's sources in a thread, install them if accept() says so.

        accept(before, after) sees name -> ModelConfig now and as config would make it. No
        models.json write runs meanwhile, so an API registration is never lost to it.
        """
        async with self._writing:
            sources = await asyncio.to_thread(self.read_sources, config)
            merged, _ = merge_sources(config.models, sources.found, sources.stored.allowed)
            before = {m.name: m.config for m in self._models.values()}
            if not accept(before, {m.name: m for m, _ in merged}):
                return False
            self._apply(config, sources)
            return True

    def read_sources(self, config: Config) -> Sources:
        """The files found in config's model_dirs and what models.json holds (file I/O only)."""
        return Sources(self._discover(config), self.file.read(config.defaults))

    def _apply(self, config: Config, sources: Sources) -> None:
        """Merge what read_sources found with config into the model list (no I/O)."""
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
    #
    # models.json is written before a registration becomes visible, and a removal is
    # hidden at once but shown again if its write fails: memory never holds what the
    # file lacks. add/remove write in the caller's thread (no event loop: tools, tests);
    # aadd/aremove write in a worker thread, one write at a time and in call order.

    def add(
        self,
        name: str,
        path: Path | str,
        *,
        info: GGUFInfo | None = None,
        **fields: Unpack[Fields],
    ) -> Model:
        """Register a model and persist it (blocking I/O); InvalidModel or ModelConflict."""
        model_config = self.validate_new(name, path, **fields)
        self._check_free(name)
        self.file.write(self._stored(plus=model_config))
        return self._added(model_config, info)

    async def aadd(self, name: str, path: Path | str, **fields: Unpack[Fields]) -> Model:
        """add() with the GGUF header read and models.json written off the event loop."""
        model_config = self.validate_new(name, path, **fields)
        try:
            info = await self.cache.aget(model_config.path)
        except (GGUFError, OSError) as exc:
            raise InvalidModel("path", f"not a readable GGUF file: {exc}") from None
        self._check_free(name)  # at once, not after the writes queued before this one

        async def commit() -> Model:
            async with self._writing:
                self._check_free(name)  # another registration may have taken it meanwhile
                await asyncio.to_thread(self.file.write, self._stored(plus=model_config))
                return self._added(model_config, info)

        # Shielded: a client that goes away cannot part the file from the model list.
        return await asyncio.shield(asyncio.ensure_future(commit()))

    def _check_free(self, name: str) -> None:
        held = self._models.get(name) or self._removing.get(name)
        if held is not None:
            raise ModelConflict(
                f"model {name!r} already exists ({held.source}, {held.path}): pick another name"
            )

    def _added(self, model_config: ModelConfig, info: GGUFInfo | None) -> Model:
        model = Model(model_config, "api", info=info)
        self._models[model.name] = model
        log.info("registered model %s (%s)", model.name, model.path)
        return model

    def validate_new(self, name: str, path: Path | str, **fields: Unpack[Fields]) -> ModelConfig:
        """Check a registration's fields and build its ModelConfig; InvalidModel on a bad one."""
        return check_registration(self.config.defaults, name, path, **fields)

    def remove(self, name: str) -> Model:
        """Forget an API-registered model and persist it (blocking I/O); not while it runs."""
        model = self._removable(name)
        self.file.write(self._stored(minus=name))
        del self._models[name]
        log.info("removed model %s", name)
        return model

    def begin_remove(self, name: str) -> asyncio.Future[Model]:
        """remove() off the loop: gone from the list now; done when models.json is written.

        If the write fails, the model is back and the future raises the OSError. The
        write runs to its end even when the caller is cancelled (await it shielded).
        """
        model = self._removable(name)
        # Hidden before any await: the caller checked that it is not running, and from
        # here nothing can start it.
        del self._models[name]
        self._removing[name] = model

        async def commit() -> Model:
            try:
                async with self._writing:
                    await asyncio.to_thread(self.file.write, self._stored(minus=name))
            except BaseException:
                self._models[name] = model
                raise
            finally:
                del self._removing[name]
            log.info("removed model %s", name)
            return model

        return asyncio.ensure_future(commit())

    def _removable(self, name: str) -> Model:
        model = self.get(name)
        if model.source == "config":
            where = self.config.source or "the configuration"
            raise ModelConflict(f"model {name!r} is defined in {where}: remove it there")
        if model.source == "discovered":
            raise ModelConflict(
                f"model {name!r} was found in folder {model.path.parent}: move or delete the file"
            )
        return model

    def _stored(
        self, *, plus: ModelConfig | None = None, minus: str | None = None
    ) -> list[ModelConfig]:
        """What models.json holds once this change is made (pending removals still in)."""
        api = [m.config for m in self._models.values() if m.source == "api"]
        api += [m.config for n, m in self._removing.items() if n != minus]
        api = [m for m in api if m.name != minus] + ([plus] if plus else [])
        known = {m.name for m in api} | set(self._models) - {minus}
        return api + [m for m in self._rejected if m.name not in known]

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
