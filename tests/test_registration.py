"""What a registration may contain: catalog.registration and the shared value checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.catalog.registration import InvalidModel, check_registration
from llama_exporter.config.settings import ModelDefaults, parse_flag, parse_seconds
from llama_exporter.testing.gguf_writer import write_minimal_gguf

DEFAULTS = ModelDefaults(ctx_size=1024, parallel=2, pinned=True, idle_ttl=600.0, stop_drain=5.0)
SETTINGS = ("pinned", "idle_ttl", "stop_drain")

# What a JSON body or a YAML file can hold, bools and non-finite floats included.
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_minimal_gguf(tmp_path_factory.mktemp("reg") / "m.gguf")


def seconds_ok(value: object) -> bool:
    """The rule, written out independently: a finite int or float >= 0, never a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:
        return False


@given(values)
def test_parse_seconds_accepts_exactly_finite_non_negative_numbers(value: object) -> None:
    if seconds_ok(value):
        assert parse_seconds(value, zero_ok=True) == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match="seconds"):
            parse_seconds(value, zero_ok=True)


@given(values)
def test_parse_seconds_without_zero_ok_refuses_zero_too(value: object) -> None:
    if seconds_ok(value) and value != 0:
        assert parse_seconds(value) == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match="seconds"):
            parse_seconds(value)


@given(values)
def test_parse_flag_accepts_only_booleans(value: object) -> None:
    if isinstance(value, bool):
        assert parse_flag(value) is value
    else:
        with pytest.raises(ValueError, match="true or false"):
            parse_flag(value)


def test_missing_settings_take_the_defaults(gguf: Path) -> None:
    cfg = check_registration(DEFAULTS, "m", gguf)
    assert (cfg.pinned, cfg.idle_ttl, cfg.stop_drain) == (True, 600.0, 5.0)
    none = check_registration(DEFAULTS, "m", gguf, pinned=None, idle_ttl=None, stop_drain=None)
    assert none == cfg


def test_given_settings_win_over_the_defaults(gguf: Path) -> None:
    cfg = check_registration(DEFAULTS, "m", gguf, pinned=False, idle_ttl=0, stop_drain=0.5)
    assert (cfg.pinned, cfg.idle_ttl, cfg.stop_drain) == (False, 0.0, 0.5)
    assert isinstance(cfg.idle_ttl, float)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("pinned", "yes", "must be true or false, got 'yes'"),
        ("pinned", 1, "must be true or false, got 1"),
        ("idle_ttl", -1, "must be 0 or more seconds, got -1"),
        ("idle_ttl", True, "must be a number of seconds, got True"),
        ("idle_ttl", "300", "must be a number of seconds, got '300'"),
        ("idle_ttl", math.nan, "must be a finite number of seconds"),
        ("idle_ttl", math.inf, "must be a finite number of seconds"),
        ("idle_ttl", 10**400, "must be a finite number of seconds"),
        ("stop_drain", -0.5, "must be 0 or more seconds, got -0.5"),
        ("stop_drain", False, "must be a number of seconds, got False"),
        ("stop_drain", [30], "must be a number of seconds"),
    ],
)
def test_bad_setting_is_named(gguf: Path, field: str, value: object, fragment: str) -> None:
    settings: dict[str, Any] = {field: value}
    with pytest.raises(InvalidModel) as excinfo:
        check_registration(DEFAULTS, "m", gguf, **settings)
    assert excinfo.value.field == field
    assert excinfo.value.status == 400
    assert str(excinfo.value).startswith(f"{field}: ")
    assert fragment in str(excinfo.value)


def test_a_bad_setting_is_named_even_when_the_path_is_wrong_too() -> None:
    with pytest.raises(InvalidModel) as excinfo:
        check_registration(DEFAULTS, "m", "/nope/x.gguf", idle_ttl=-1)
    assert excinfo.value.field == "idle_ttl"


@given(st.tuples(values, values, values))
def test_registration_succeeds_exactly_when_every_setting_is_valid(
    gguf: Path, triple: tuple[object, object, object]
) -> None:
    settings: dict[str, Any] = dict(zip(SETTINGS, triple, strict=True))
    valid = {
        "pinned": lambda v: v is None or isinstance(v, bool),
        "idle_ttl": lambda v: v is None or seconds_ok(v),
        "stop_drain": lambda v: v is None or seconds_ok(v),
    }
    first_bad = next((k for k in SETTINGS if not valid[k](settings[k])), None)
    if first_bad is not None:
        with pytest.raises(InvalidModel) as excinfo:
            check_registration(DEFAULTS, "m", gguf, **settings)
        assert excinfo.value.field == first_bad
        return
    cfg = check_registration(DEFAULTS, "m", gguf, **settings)
    for key in SETTINGS:
        given_value = settings[key]
        expected = getattr(DEFAULTS, key) if given_value is None else given_value
        assert getattr(cfg, key) == (expected if key == "pinned" else float(expected))
