"""The reload plan (pure): which models are added, removed, restarted, changed live; which
top-level keys are applied live and which are refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.config.settings import (
    Config,
    GatewayConfig,
    ModelConfig,
    PollConfig,
    TargetsConfig,
)
from llama_exporter.reload.plan import (
    GATEWAY_ONLY,
    TOP_RULES,
    Rule,
    changed_keys,
    diff_models,
    key_rule,
    launch_settings,
    model_rule,
    plan,
)


def model(name: str, **fields: object) -> ModelConfig:
    return ModelConfig(name=name, path=Path(f"/m/{name}.gguf"), **fields)  # type: ignore[arg-type]


def config(*models: ModelConfig, **fields: object) -> Config:
    return Config(source=Path("/c.yaml"), models=models, host_label="box", **fields)  # type: ignore[arg-type]


def test_every_config_field_has_a_rule() -> None:
    # A field added to Config must be classified here on purpose (README table too).
    fields = {f.name for f in dataclasses.fields(Config)} - {"source"}
    missing = sorted(fields - set(TOP_RULES))
    assert not missing, (
        f"Config fields without a reload rule: {missing}. Add each to TOP_RULES in "
        "llama_exporter/reload/plan.py (LIVE if every part reads it from the Config it is "
        "handed at each use, else SERVICE) and to the README table 'Reloading the config'"
    )


def test_same_config_is_an_empty_plan() -> None:
    a = config(model("a"), model("b", autostart=True))
    assert plan(a, a).empty
    assert plan(a, dataclasses.replace(a)).empty


def test_one_model_ctx_size_changed_restarts_only_it() -> None:
    old = config(model("a"), model("b"), model("c"))
    new = config(model("a"), model("b", ctx_size=8192), model("c"))
    p = plan(old, new)
    assert p.models.restart == ("b",)
    assert p.models.added == p.models.removed == p.models.live == ()
    assert p.live == p.refused == ()


def test_each_launch_setting_restarts() -> None:
    base = model("a")
    for change in (
        {"path": Path("/m/other.gguf")},
        {"ctx_size": 1024},
        {"parallel": 4},
        {"args": ("--flash-attn", "on")},
        {"env": MappingProxyType({"X": "1"})},
        {"api_key": "k"},
    ):
        new = dataclasses.replace(base, **change)
        assert diff_models({"a": base}, {"a": new}).restart == ("a",), change


def test_gateway_only_settings_are_live() -> None:
    base = model("a")
    for change in ({"pinned": True}, {"idle_ttl": 60.0}, {"stop_drain": 1.0}):
        new = dataclasses.replace(base, **change)
        changes = diff_models({"a": base}, {"a": new})
        assert changes.live == ("a",) and changes.restart == (), change


def test_added_removed_and_autostart() -> None:
    old = {"a": model("a"), "b": model("b")}
    new = {"b": model("b", autostart=True), "c": model("c", autostart=True), "d": model("d")}
    changes = diff_models(old, new)
    assert changes.added == ("c", "d")
    assert changes.removed == ("a",)
    assert changes.autostart == ("b", "c")  # added with it, and turned on
    assert changes.live == ("b",)


def test_listen_and_state_dir_are_refused_by_yaml_key() -> None:
    old = config()
    new = dataclasses.replace(old, port=9999, state_dir=Path("/elsewhere"), max_parallel=9)
    p = plan(old, new)
    assert p.refused == ("listen.port", "state_dir")
    assert p.live == ("max_parallel", "targets.directory")  # its default follows state_dir
    error = p.refusal(Path("/c.yaml"))
    assert error is not None
    text = str(error)
    assert "listen.port" in text and "state_dir" in text and "service restart" in text
    assert "/c.yaml" in text


def test_nested_sections_name_the_sub_key() -> None:
    old = config()
    new = dataclasses.replace(
        old,
        gateway=GatewayConfig(max_queue=3),
        poll=PollConfig(interval=2.0),
        targets=TargetsConfig(old.targets_dir, labels=MappingProxyType({"dc": "x"})),
        host_label="other",
        api_token="t",
    )
    assert sorted(changed_keys(old, new)) == [
        "api_token",
        "gateway.max_queue",
        "host_label",
        "poll.interval",
        "targets.labels",
    ]
    assert plan(old, new).refused == ()


def test_targets_none_is_the_default_folder() -> None:
    old = config()
    same = dataclasses.replace(old, targets=TargetsConfig(old.state_dir / "targets"))
    assert changed_keys(old, same) == []


def test_max_body_bytes_needs_a_restart() -> None:
    old = config()
    new = dataclasses.replace(old, gateway=GatewayConfig(max_body_bytes=5))
    assert plan(old, new).refused == ("gateway.max_body_bytes",)


def test_an_unknown_key_is_refused() -> None:
    assert key_rule("something_new") is Rule.SERVICE
    assert key_rule("listen.host") is Rule.SERVICE
    assert key_rule("gateway.when_full") is Rule.LIVE


def test_summary_lists() -> None:
    p = plan(config(model("a")), config(model("b")))
    assert p.summary()["added"] == ["b"] and p.summary()["removed"] == ["a"]


# --- properties -------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d", "e"])
models = st.builds(
    model,
    names,
    ctx_size=st.sampled_from([1024, 2048]),
    parallel=st.sampled_from([1, 2]),
    pinned=st.booleans(),
    idle_ttl=st.sampled_from([0.0, 5.0]),
    stop_drain=st.sampled_from([0.0, 30.0]),
    autostart=st.booleans(),
    api_key=st.sampled_from([None, "k"]),
)
model_maps = st.lists(models, max_size=5).map(lambda ms: {m.name: m for m in ms})


@given(model_maps, model_maps)
def test_every_model_lands_in_exactly_one_place(
    old: dict[str, ModelConfig], new: dict[str, ModelConfig]
) -> None:
    c = diff_models(old, new)
    groups = [set(c.added), set(c.removed), set(c.restart), set(c.live)]
    for i, g in enumerate(groups):
        for h in groups[i + 1 :]:
            assert not g & h
    touched = set().union(*groups)
    assert touched == {n for n in set(old) | set(new) if old.get(n) != new.get(n)}
    assert set(c.autostart) <= set(c.added) | set(c.live) | set(c.restart)
    for name in c.restart:  # a restart means the process would be launched differently
        assert launch_settings(old[name]) != launch_settings(new[name])
    for name in c.live:
        diff = {
            f.name
            for f in dataclasses.fields(ModelConfig)
            if getattr(old[name], f.name) != getattr(new[name], f.name)
        }
        assert diff and all(model_rule(f) is Rule.LIVE for f in diff)


@given(model_maps)
def test_diff_with_itself_is_empty(ms: dict[str, ModelConfig]) -> None:
    c = diff_models(ms, dict(ms))
    assert c.added == c.removed == c.restart == c.live == c.autostart == ()


@given(model_maps, model_maps, model_maps)
def test_plans_compose(
    a: dict[str, ModelConfig], b: dict[str, ModelConfig], c: dict[str, ModelConfig]
) -> None:
    # Reloading a->b then b->c adds what a->c adds, once its removals are undone.
    ab, bc, ac = diff_models(a, b), diff_models(b, c), diff_models(a, c)
    present = (set(a) | set(ab.added)) - set(ab.removed)
    present = (present | set(bc.added)) - set(bc.removed)
    assert present == set(c)
    assert set(ac.added) == set(c) - set(a)


def test_gateway_only_fields_exist() -> None:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields >= GATEWAY_ONLY


CHANGES: dict[str, tuple[str, object]] = {  # YAML key -> (Config field, a different value)
    "listen.host": ("host", "127.0.0.2"),
    "listen.port": ("port", 9000),
    "state_dir": ("state_dir", Path("/other")),
    "max_parallel": ("max_parallel", 9),
    "hang_timeout": ("hang_timeout", 3.0),
    "api_token": ("api_token", "t"),
    "allowed_hosts": ("allowed_hosts", ("box",)),
    "host_label": ("host_label", "other"),
    "websocket_max_clients": ("websocket_max_clients", 2),
    "instance_host": ("instance_host", "0.0.0.0"),
}


@given(st.sets(st.sampled_from(sorted(CHANGES))))
def test_refused_exactly_the_keys_that_need_a_restart(keys: set[str]) -> None:
    old = config(model("a"))
    changes: dict[str, Any] = {CHANGES[k][0]: CHANGES[k][1] for k in keys}
    new = dataclasses.replace(old, **changes)
    p = plan(old, new)
    changed = set(changed_keys(old, new))  # a new state_dir moves the default targets too
    assert keys <= changed
    assert set(p.refused) == {k for k in changed if key_rule(k) is Rule.SERVICE}
    assert set(p.live) == {k for k in changed if key_rule(k) is Rule.LIVE}
    error = p.refusal()
    assert (error is None) == (not p.refused)
    if error is not None:
        assert all(k in str(error) for k in p.refused)
