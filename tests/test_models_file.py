"""models.json: its format, the gateway settings it keeps, old and corrupt files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.catalog.models_file import ModelsFile, model_to_json, models_from_json
from llama_exporter.config.settings import ModelConfig, ModelDefaults

DEFAULTS = ModelDefaults(pinned=True, idle_ttl=600.0, stop_drain=5.0)

seconds = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
models = st.builds(
    ModelConfig,
    name=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    path=st.just(Path("/m/a.gguf")),
    ctx_size=st.integers(1, 10**6),
    parallel=st.integers(1, 64),
    args=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    env=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2).map(MappingProxyType),
    pinned=st.booleans(),
    idle_ttl=seconds,
    stop_drain=seconds,
)


def old_entry(name: str = "m") -> dict[str, Any]:
    """An entry as models.json held it before the gateway settings were stored."""
    return {
        "name": name,
        "path": "/m/a.gguf",
        "ctx_size": 2048,
        "parallel": 2,
        "args": ["-t", "2"],
        "env": {},
    }


@given(st.lists(models, max_size=4))
def test_round_trip_through_the_json_text(configs: list[ModelConfig]) -> None:
    text = json.dumps({"version": 1, "models": [model_to_json(m) for m in configs]})
    assert models_from_json(json.loads(text), DEFAULTS) == configs


def test_the_settings_are_written() -> None:
    entry = model_to_json(ModelConfig("m", Path("/m/a.gguf"), pinned=True, idle_ttl=90.0))
    assert (entry["pinned"], entry["idle_ttl"], entry["stop_drain"]) == (True, 90.0, 30.0)


def test_an_old_file_without_the_settings_loads_with_the_defaults() -> None:
    (model,) = models_from_json({"version": 1, "models": [old_entry()]}, DEFAULTS)
    assert (model.pinned, model.idle_ttl, model.stop_drain) == (True, 600.0, 5.0)
    assert (model.ctx_size, model.args) == (2048, ("-t", "2"))


def test_each_setting_may_be_missing_on_its_own() -> None:
    entry = {**old_entry(), "idle_ttl": 0}
    (model,) = models_from_json({"version": 1, "models": [entry]}, DEFAULTS)
    assert (model.pinned, model.idle_ttl, model.stop_drain) == (True, 0.0, 5.0)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("pinned", "true", "models[1].pinned must be true or false, got 'true'"),
        ("pinned", None, "models[1].pinned must be true or false, got None"),
        ("idle_ttl", -1, "models[1].idle_ttl must be 0 or more seconds, got -1"),
        ("idle_ttl", True, "models[1].idle_ttl must be a number of seconds, got True"),
        ("idle_ttl", float("nan"), "models[1].idle_ttl must be a finite number of seconds"),
        ("stop_drain", "30", "models[1].stop_drain must be a number of seconds, got '30'"),
        ("stop_drain", float("inf"), "models[1].stop_drain must be a finite number"),
    ],
)
def test_a_corrupt_setting_names_the_entry_and_the_key(
    key: str, value: object, fragment: str
) -> None:
    data = {"version": 1, "models": [old_entry("ok"), {**old_entry("bad"), key: value}]}
    with pytest.raises(ValueError) as excinfo:
        models_from_json(data, DEFAULTS)
    assert fragment in str(excinfo.value)


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf", "ctx_size": 1,'
        ' "parallel": 1, "pinned": "yes"}]}',
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf", "ctx_size": 1,'
        ' "parallel": 1, "idle_ttl": NaN}]}',
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf", "ctx_size": 1,'
        ' "parallel": 1, "stop_drain": 1e999}]}',
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf", "ctx_size": 1,'
        ' "parallel": 1, "idle_ttl": -3}]}',
    ],
)
def test_a_file_with_a_corrupt_setting_is_moved_aside(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.json"
    path.write_text(content)
    caplog.set_level(logging.ERROR)
    stored = ModelsFile(path).read(DEFAULTS)
    assert (stored.allowed, stored.refused) == ([], [])
    assert not path.exists()
    (aside,) = tmp_path.glob("models.json.corrupt-*")
    assert aside.read_text() == content
    assert "is corrupt" in caplog.text


def test_write_then_read(tmp_path: Path) -> None:
    file = ModelsFile(tmp_path / "state" / "models.json")
    model = ModelConfig("m", Path("/m/a.gguf"), pinned=True, idle_ttl=1.5, stop_drain=0.0)
    file.write([model])
    assert oct(file.path.stat().st_mode & 0o777) == "0o600"
    assert file.read(ModelDefaults()).allowed == [model]
