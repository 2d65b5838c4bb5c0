"""Where the supervisor looks models up: the ModelSource protocol and a fixed list of models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from llama_exporter.config.settings import ModelConfig
from llama_exporter.states import UnknownModel


class ModelSource(Protocol):
    """Where the supervisor looks up models (the registry satisfies it via an adapter)."""

    def get(self, name: str) -> ModelConfig:
        """The model's config; raises KeyError (ideally UnknownModel) when unknown."""
        ...

    def names(self) -> list[str]:
        """All known model names."""
        ...


class StaticModels:
    """A ModelSource over a fixed list of models (tests, benchmarks, embedding)."""

    def __init__(self, models: Iterable[ModelConfig]) -> None:
        self._models = {m.name: m for m in models}

    def get(self, name: str) -> ModelConfig:
        """The model's config; UnknownModel when there is none of that name."""
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(name) from None

    def names(self) -> list[str]:
        """The names, in the order given."""
        return list(self._models)
