"""Tests for llama_exporter.catalog.registry."""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from llama_exporter.catalog.gguf_meta import GGUFInfo, GGUFInfoCache
from llama_exporter.catalog.models_file import models_from_json
from llama_exporter.catalog.registration import InvalidModel, RegistryError
from llama_exporter.catalog.registry import (
    Model,
    ModelConflict,
    Registry,
    UnknownModel,
)
from llama_exporter.catalog.sources import merge_sources
from llama_exporter.config.settings import Config, ModelConfig, ModelDefaults
from llama_exporter.testing.gguf_writer import write_minimal_gguf


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder with config-side GGUF files."""
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_minimal_gguf(folder / f"{name}.gguf")
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder with two GGUF files, one needing a sanitised name, and noise."""
    folder = tmp_path / "models"
    folder.mkdir()
    write_minimal_gguf(folder / "zeta.gguf")
    write_minimal_gguf(folder / "my model (v2).gguf")
    (folder / "readme.txt").write_text("not a model")
    (folder / "sub.gguf").mkdir()  # a folder, not a file: ignored
    return folder


def make_config(
    tmp_path: Path, models: tuple[ModelConfig, ...] = (), dirs: tuple[Path, ...] = ()
) -> Config:
    return Config(
        source=tmp_path / "config.yaml",
        models=models,
        model_dirs=dirs,
        state_dir=tmp_path / "state",
        defaults=ModelDefaults(ctx_size=1024, parallel=2, args=("--threads", "1")),
    )


def make_registry(config: Config) -> Registry:
    registry = Registry(config)
    registry.load()
    return registry


def test_load_orders_sources(tmp_path: Path, files: Path, model_dir: Path) -> None:
    config = make_config(
        tmp_path,
        models=(ModelConfig("second", files / "b.gguf"), ModelConfig("first", files / "a.gguf")),
        dirs=(model_dir,),
    )
    registry = make_registry(config)
    registry.add("zz-api", files / "c.gguf")
    registry.add("aa-api", files / "c.gguf")
    assert registry.names() == ["second", "first", "my-model--v2-", "zeta", "zz-api", "aa-api"]
    assert [m.source for m in registry.all()] == [
        "config",
        "config",
        "discovered",
        "discovered",
        "api",
        "api",
    ]
    zeta = registry.get("zeta")
    assert zeta.path == model_dir / "zeta.gguf"
    assert (zeta.config.ctx_size, zeta.config.parallel, zeta.config.args) == (
        1024,
        2,
        ("--threads", "1"),
    )
    assert "zeta" in registry
    assert len(registry) == 6


def test_missing_model_dir_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    registry = make_registry(make_config(tmp_path, dirs=(tmp_path / "nope",)))
    assert registry.all() == []
    assert "does not exist" in caplog.text


def test_config_wins_name_clash(
    tmp_path: Path, files: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        tmp_path, models=(ModelConfig("zeta", files / "a.gguf"),), dirs=(model_dir,)
    )
    caplog.set_level(logging.WARNING)
    registry = make_registry(config)
    assert registry.get("zeta").source == "config"
    assert registry.get("zeta").path == files / "a.gguf"
    assert "rename the file" in caplog.text


def test_merge_sources_precedence(tmp_path: Path) -> None:
    conf = [ModelConfig("x", tmp_path / "c.gguf")]
    disc = [ModelConfig("x", tmp_path / "d.gguf"), ModelConfig("y", tmp_path / "d2.gguf")]
    api = [ModelConfig("x", tmp_path / "a.gguf"), ModelConfig("y", tmp_path / "a2.gguf")]
    merged, warnings = merge_sources(conf, disc, api)
    assert [(m.name, m.path.name, s) for m, s in merged] == [
        ("x", "c.gguf", "config"),
        ("y", "a2.gguf", "api"),
    ]
    assert len(warnings) == 3


def test_same_file_discovered_and_configured_is_silent(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    merged, warnings = merge_sources([ModelConfig("x", path)], [ModelConfig("x", path)], [])
    assert len(merged) == 1
    assert warnings == []


def test_get_unknown(tmp_path: Path) -> None:
    registry = make_registry(make_config(tmp_path))
    with pytest.raises(UnknownModel) as excinfo:
        registry.get("nope")
    assert excinfo.value.status == 404
    assert registry.find("nope") is None


# --- add ---------------------------------------------------------------------------------------


def test_add_and_persist_across_instances(tmp_path: Path, files: Path) -> None:
    config = make_config(tmp_path)
    first = make_registry(config)
    model = first.add(
        "api-model",
        files / "a.gguf",
        ctx_size=2048,
        parallel=4,
        args=["-t", "2"],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert model == Model(
        ModelConfig("api-model", files / "a.gguf", 2048, 4, ("-t", "2"), {"OMP_NUM_THREADS": "1"}),
        "api",
    )
    state = tmp_path / "state" / "models.json"
    assert state.is_file()
    assert oct(state.stat().st_mode & 0o777) == "0o600"

    second = make_registry(config)
    assert second.get("api-model").config == model.config
    assert second.get("api-model").source == "api"

    second.remove("api-model")
    assert "api-model" not in make_registry(config)


def test_gateway_settings_survive_a_restart(tmp_path: Path, files: Path) -> None:
    config = make_config(tmp_path)
    make_registry(config).add("p", files / "a.gguf", pinned=True, idle_ttl=90, stop_drain=2.5)
    make_registry(config).add("d", files / "b.gguf")  # the defaults: unpinned, never idle
    again = make_registry(config)
    p, d = again.model_source().get("p"), again.model_source().get("d")  # what the gateway reads
    assert (p.pinned, p.idle_ttl, p.stop_drain) == (True, 90.0, 2.5)
    assert (d.pinned, d.idle_ttl, d.stop_drain) == (False, 0.0, 30.0)


def test_a_models_json_without_gateway_settings_takes_todays_defaults(
    tmp_path: Path, files: Path
) -> None:
    old = {"name": "m", "path": str(files / "a.gguf"), "ctx_size": 1024, "parallel": 2}
    state = tmp_path / "state" / "models.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"version": 1, "models": [old]}))
    defaults = ModelDefaults(pinned=True, idle_ttl=120.0, stop_drain=3.0)
    config = replace(make_config(tmp_path), defaults=defaults)
    m = make_registry(config).get("m").config
    assert (m.pinned, m.idle_ttl, m.stop_drain) == (True, 120.0, 3.0)
    make_registry(config).add("n", files / "b.gguf")  # rewrites the file, now with the keys
    written = json.loads(state.read_text())["models"]
    assert [(e["name"], e["pinned"], e["idle_ttl"]) for e in written] == [
        ("m", True, 120.0),
        ("n", True, 120.0),
    ]


def test_add_uses_defaults(tmp_path: Path, files: Path) -> None:
    model = make_registry(make_config(tmp_path)).add("m", str(files / "a.gguf"))
    assert (model.config.ctx_size, model.config.parallel, model.config.args) == (
        1024,
        2,
        ("--threads", "1"),
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"name": "bad name"}, "name", "use only letters"),
        ({"name": ""}, "name", "empty"),
        ({"path": "relative.gguf"}, "path", "not an absolute path"),
        ({"path": "/nope/x.gguf"}, "path", "does not exist"),
        ({"path": "NOTGGUF"}, "path", "does not end in .gguf"),
        ({"path": "DIR"}, "path", "not a regular file"),
        ({"ctx_size": 0}, "ctx_size", "positive integer"),
        ({"ctx_size": True}, "ctx_size", "positive integer"),
        ({"parallel": -1}, "parallel", "positive integer"),
        ({"ctx_size": 2, "parallel": 4}, "ctx_size", "less than parallel"),
        ({"args": "--foo"}, "args", "list of strings"),
        ({"args": ["--port", "1"]}, "args", "set by the service"),
        ({"env": {"A": 1}}, "env", "strings to strings"),
    ],
)
def test_add_invalid(
    tmp_path: Path, files: Path, kwargs: dict[str, object], field: str, fragment: str
) -> None:
    registry = make_registry(make_config(tmp_path))
    (files / "dir.gguf").mkdir()
    (files / "model.bin").write_text("")
    call: dict[str, object] = {"name": "m", "path": str(files / "a.gguf"), **kwargs}
    if call["path"] == "NOTGGUF":
        call["path"] = str(files / "model.bin")
    if call["path"] == "DIR":
        call["path"] = str(files / "dir.gguf")
    with pytest.raises(InvalidModel) as excinfo:
        registry.add(**call)  # type: ignore[arg-type]
    assert excinfo.value.field == field
    assert excinfo.value.status == 400
    assert fragment in str(excinfo.value)
    assert not (tmp_path / "state" / "models.json").exists()


def test_add_conflicts(tmp_path: Path, files: Path, model_dir: Path) -> None:
    config = make_config(
        tmp_path, models=(ModelConfig("conf", files / "a.gguf"),), dirs=(model_dir,)
    )
    registry = make_registry(config)
    registry.add("api", files / "b.gguf")
    for name in ("conf", "zeta", "api"):
        with pytest.raises(ModelConflict, match="already exists") as excinfo:
            registry.add(name, files / "c.gguf")
        assert excinfo.value.status == 409


def test_add_rolls_back_when_persist_fails(tmp_path: Path, files: Path) -> None:
    (tmp_path / "state").write_text("a file where the state folder should be")
    registry = make_registry(make_config(tmp_path))
    with pytest.raises(OSError):
        registry.add("m", files / "a.gguf")
    assert "m" not in registry


async def test_aadd_reads_metadata(tmp_path: Path, files: Path) -> None:
    registry = make_registry(make_config(tmp_path))
    model = await registry.aadd("m", files / "a.gguf")
    assert model.info is not None and model.info.architecture == "llama"
    junk = files / "junk.gguf"
    junk.write_bytes(b"nope")
    with pytest.raises(InvalidModel, match="not a readable GGUF file") as excinfo:
        await registry.aadd("j", junk)
    assert excinfo.value.field == "path"
    assert "j" not in registry


async def test_aadd_rejects_crafted_header(tmp_path: Path, files: Path) -> None:
    registry = make_registry(make_config(tmp_path))
    crafted = files / "crafted.gguf"
    key = b"general.name"
    header = struct.pack("<IQQQ", 3, 0, 1, len(key)) + key + struct.pack("<IQ", 8, 2**62)
    crafted.write_bytes(b"GGUF" + header)
    with pytest.raises(InvalidModel, match="truncated") as excinfo:
        await registry.aadd("c", crafted)
    assert excinfo.value.field == "path"
    assert "c" not in registry


# --- remove ------------------------------------------------------------------------------------


def test_remove_refuses_config_and_discovered(tmp_path: Path, files: Path, model_dir: Path) -> None:
    config = make_config(
        tmp_path, models=(ModelConfig("conf", files / "a.gguf"),), dirs=(model_dir,)
    )
    registry = make_registry(config)
    with pytest.raises(ModelConflict, match=r"defined in .*config.yaml: remove it there"):
        registry.remove("conf")
    with pytest.raises(ModelConflict, match=f"found in folder {model_dir}: move or delete"):
        registry.remove("zeta")
    with pytest.raises(UnknownModel):
        registry.remove("nope")
    assert isinstance(UnknownModel("x"), RegistryError)


# --- state file --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 99, "models": []}',
        '{"version": 1, "models": {}}',
        '{"version": 1, "models": [{"name": "x"}]}',
        '{"version": 1, "models": [{"name": "bad name", "path": "/a.gguf",'
        ' "ctx_size": 1, "parallel": 1}]}',
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf",'
        ' "ctx_size": "1", "parallel": 1}]}',
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf",'
        ' "ctx_size": 1, "parallel": 1, "args": "-t"}]}',
        '{"version": 1, "models": [{"name": "x", "path": "/a.gguf",'
        ' "ctx_size": 1, "parallel": 1, "idle_ttl": "soon"}]}',
    ],
)
def test_corrupt_state_is_moved_aside(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state" / "models.json"
    state.parent.mkdir()
    state.write_text(content)
    caplog.set_level(logging.ERROR)
    registry = make_registry(make_config(tmp_path))
    assert registry.all() == []
    assert not state.exists()
    aside = list(state.parent.glob("models.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_text() == content
    assert "is corrupt" in caplog.text


def test_state_round_trip_format(tmp_path: Path, files: Path) -> None:
    registry = make_registry(make_config(tmp_path))
    registry.add("m", files / "a.gguf", args=["-t", "2"], env={"CUDA_VISIBLE_DEVICES": "0"})
    data = json.loads((tmp_path / "state" / "models.json").read_text())
    assert models_from_json(data, ModelDefaults()) == [registry.get("m").config]


def test_explicit_state_file(tmp_path: Path, files: Path) -> None:
    state = tmp_path / "elsewhere" / "reg.json"
    registry = Registry(make_config(tmp_path), state_file=state)
    registry.load()
    registry.add("m", files / "a.gguf")
    assert state.is_file()


def test_api_model_with_missing_file_is_kept(tmp_path: Path, files: Path) -> None:
    config = make_config(tmp_path)
    make_registry(config).add("m", files / "a.gguf")
    (files / "a.gguf").unlink()
    registry = make_registry(config)
    assert registry.get("m").source == "api"


# --- metadata ----------------------------------------------------------------------------------


async def test_load_metadata(tmp_path: Path, files: Path, model_dir: Path) -> None:
    (model_dir / "broken.gguf").write_bytes(b"GGUF\x03\x00")
    cache = GGUFInfoCache()
    config = make_config(
        tmp_path, models=(ModelConfig("conf", files / "a.gguf"),), dirs=(model_dir,)
    )
    registry = Registry(config, gguf_cache=cache)
    registry.load()
    assert all(m.info is None for m in registry.all())
    await registry.load_metadata()
    conf = registry.get("conf")
    assert conf.info is not None and conf.info.context_length == 2048
    broken = registry.get("broken")
    assert broken.info is None
    assert broken.error is not None and "truncated" in broken.error

    # A reload keeps metadata already read; a second pass reads nothing new.
    registry.load()
    assert registry.get("conf").info is not None
    misses = cache.misses
    await registry.load_metadata()
    assert cache.misses == misses + 1  # only the broken file is retried


async def test_load_metadata_missing_file(tmp_path: Path, files: Path) -> None:
    config = make_config(tmp_path)
    registry = make_registry(config)
    registry.add("m", files / "a.gguf")
    os.unlink(files / "a.gguf")
    await registry.load_metadata()
    error = registry.get("m").error
    assert error is not None and "a.gguf" in error


async def test_load_metadata_continues_past_any_error(
    tmp_path: Path, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyCache(GGUFInfoCache):
        """Raises an unexpected exception for b.gguf."""

        def get(self, path: Path) -> GGUFInfo:
            if Path(path).name == "b.gguf":
                raise MemoryError("crafted header")
            return super().get(path)

    models = tuple(ModelConfig(n, files / f"{n}.gguf") for n in ("a", "b", "c"))
    registry = Registry(make_config(tmp_path, models=models), gguf_cache=FlakyCache())
    registry.load()
    with caplog.at_level(logging.WARNING):
        await registry.load_metadata()
    assert registry.get("a").info is not None
    assert registry.get("c").info is not None  # the model after the bad one still gets metadata
    bad = registry.get("b")
    assert bad.info is None
    assert bad.error is not None and "b.gguf" in bad.error and "crafted header" in bad.error
    assert "model b" in caplog.text


# --- views for the supervisor and the collector ------------------------------------------------


async def test_views(tmp_path: Path, files: Path) -> None:
    config = make_config(tmp_path, models=(ModelConfig("conf", files / "a.gguf"),))
    registry = make_registry(config)
    source = registry.model_source()
    assert source.names() == ["conf"]
    assert source.get("conf") == config.models[0]
    with pytest.raises(KeyError):
        source.get("nope")
    assert str(UnknownModel("nope")) == "unknown model 'nope'"

    (view,) = registry.model_infos()
    assert (view.name, view.source, view.architecture, view.file_size) == (
        "conf",
        "config",
        None,
        None,
    )
    registry.add("api", files / "b.gguf")
    await registry.load_metadata()
    assert source.names() == ["conf", "api"]  # live view
    views = registry.model_infos()
    assert [v.architecture for v in views] == ["llama", "llama"]
    assert views[1].file_size == (files / "b.gguf").stat().st_size
    assert views[1].quantization == "Q4_K_M"
