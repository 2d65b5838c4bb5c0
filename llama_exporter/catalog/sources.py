"""Pure: the model a folder's GGUF file stands for, and which source wins a name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from llama_exporter.config.settings import ModelConfig, ModelDefaults, sanitize_model_name

ModelSource = Literal["config", "discovered", "api"]
SOURCE_ORDER: Mapping[ModelSource, int] = {"config": 0, "discovered": 1, "api": 2}


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
