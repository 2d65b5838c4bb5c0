"""The config file's typed values: each reader names the key and what is wrong.

``Values`` is the vocabulary of the schema modules (``config_schema``, ``config_models``):
mappings with known keys, integers in a range, seconds, strings, lists, paths.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llama_exporter.config.env import expand_path
from llama_exporter.config.settings import ConfigError, parse_flag, parse_seconds

NUMBER_TYPES = (int, float)


class Values:
    """Reads typed values from parsed YAML; every failure is a ConfigError naming the key."""

    def __init__(self, file: Path | None, env: Mapping[str, str], check_files: bool) -> None:
        self.file = file
        self.env = env
        self.check_files = check_files
        self.base = file.parent if file is not None else None

    def error(self, key: str, message: str, hint: str | None = None) -> ConfigError:
        """A ConfigError about key in this file."""
        return ConfigError(key, message, file=self.file, hint=hint)

    def mapping(self, value: object, key: str, allowed: Sequence[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            where = key or "the top level"
            raise self.error(
                key,
                f"must be a mapping, got {kind_of(value)}",
                f"write {where} as key: value lines",
            )
        for name in value:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = (
                    f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
                )
                raise self.error(join_key(key, str(name)), "unknown key", hint)
        return value

    def integer(self, value: object, key: str, minimum: int = 1, maximum: int | None = None) -> int:
        if maximum is not None:
            what = f"an integer {minimum}..{maximum}"
        else:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be {what}, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            raise self.error(key, f"must be {what}, got {value}")
        return value

    def seconds(self, value: object, key: str) -> float:
        try:
            return parse_seconds(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def seconds_or_zero(self, value: object, key: str) -> float:
        try:
            return parse_seconds(value, zero_ok=True)
        except ValueError as exc:
            raise self.error(key, str(exc), "0 means never") from None

    def boolean(self, value: object, key: str) -> bool:
        try:
            return parse_flag(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def word(self, value: object, key: str) -> str:
        """A string, or a number written without quotes (args, env values)."""
        if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}", "quote the value")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, got {kind_of(value)}", 'write it as ["a", "b"]')
        return tuple(self.word(item, f"{key}[{i}]") for i, item in enumerate(value))

    def str_map(self, value: object, key: str) -> Mapping[str, str]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {kind_of(value)}")
        return MappingProxyType(
            {str(k): self.word(v, join_key(key, str(k))) for k, v in value.items()}
        )

    def path(self, value: object, key: str) -> Path:
        return expand_path(self.string(value, key), self.env, self.base)


def join_key(prefix: str, key: str) -> str:
    """The dotted key of a child: join_key("restart", "enabled") is "restart.enabled"."""
    return f"{prefix}.{key}" if prefix else key


def kind_of(value: object) -> str:
    """How a YAML value reads to a user: 'a list', 'a string ('x')'."""
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r}"
