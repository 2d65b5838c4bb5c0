"""Gateway metrics: names, types and labels as in docs/ARCHITECTURE.md; exact bucket bounds."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from promstack import missing
from test_collector import contract

from llama_exporter.gateway.metrics import LATENCY_BUCKETS, RequestMetrics, quantile
from llama_exporter.states import LOAD_TRIGGERS, UNLOAD_REASONS


def observed() -> RequestMetrics:
    """Metrics with one observation in every family."""
    m = RequestMetrics(
        in_flight=lambda: {"a": 2},
        queue_length=lambda: 3,
        models=lambda: ["a", "b"],
        lifecycle=lambda name: ({"request": 1}, {"idle": 1}) if name == "a" else ({}, {}),
        endpoints=("/v1/chat/completions", "/upstream"),
    )
    m.request_arrived("a", 10.0)
    m.request_done("a", "/v1/chat/completions", 200, 10.0, 10.5)
    m.first_token("a", 0.2, 10.4)
    for hist in (m.inter_token, m.queue_wait, m.load_wait, m.prompt_tokens, m.completion_tokens):
        hist.observe(("a",), 1.0)
    m.rejected.inc(("a", "timeout"))
    m.cut_off.inc(("a", "api"))
    return m


def render(m: RequestMetrics) -> str:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(m)
    return generate_latest(registry).decode()


def test_every_gateway_family_is_exported_with_its_labels() -> None:
    expected = contract("### Gateway metrics")
    assert len(expected) == 14
    families = {f.name: f for f in text_string_to_metric_families(render(observed()))}
    for name, (kind, labels) in expected.items():
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    exported = {f"{f.name}_total" if f.type == "counter" else f.name for f in families.values()}
    assert exported == set(expected)


def test_alert_thresholds_are_bucket_bounds() -> None:
    assert {0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0} <= set(LATENCY_BUCKETS)
    text = render(observed())
    for le in ("0.1", "0.25", "0.5", "1.0", "2.0", "5.0", "10.0"):
        assert (
            f'llama_exporter_gateway_time_to_first_token_seconds_bucket{{le="{le}",model="a"}}'
            in text
        )


def test_known_models_start_at_zero() -> None:
    text = render(observed())
    assert 'llama_exporter_gateway_requests_in_flight{model="b"} 0.0' in text
    assert 'llama_exporter_gateway_rejected_total{model="b",reason="queue_full"} 0.0' in text
    for endpoint in ("/v1/chat/completions", "/upstream"):
        series = f'code="200",endpoint="{endpoint}",model="b"'
        assert f"llama_exporter_gateway_requests_total{{{series}}} 0.0" in text
    assert 'code="200",endpoint="/v1/chat/completions",model="a"} 1.0' in text
    for trigger in LOAD_TRIGGERS:
        assert f'llama_exporter_model_loads_total{{model="b",trigger="{trigger}"}} 0.0' in text
    for reason in UNLOAD_REASONS:
        assert f'llama_exporter_model_unloads_total{{model="b",reason="{reason}"}} 0.0' in text
    assert "llama_exporter_gateway_queue_length 3.0" in text


def test_window_quantiles() -> None:
    m = observed()
    for i in range(1, 101):
        m.first_token("b", i / 100, 100.0)
    w = m.window("b", 120.0)
    assert (w.ttft_p50, w.ttft_p95) == (0.5, 0.95)
    assert m.window("b", 161.0).ttft_p50 is None  # older than 60 s
    assert quantile([], 0.5) is None


def test_window_counts_requests_from_their_arrival() -> None:
    m = observed()
    m.request_arrived("b", 100.0)  # still running: counted
    assert m.window("b", 130.0).requests == 1
    m.request_done("b", "/v1/chat/completions", 200, 100.0, 150.0)
    assert m.window("b", 155.0).requests == 1
    assert m.window("b", 161.0).requests == 0  # arrived more than 60 s ago


def test_the_window_keeps_only_its_last_minute_when_nobody_reads_it() -> None:
    """Nothing but the summary read the window: without it, one entry per request forever."""
    m = observed()
    for i in range(36_000):  # five hours at 2 requests/s, and no summary asked for
        now = 1000.0 + i / 2
        m.request_arrived("b", now)
        m.first_token("b", 0.1, now)
    assert len(m._recent["b"]) <= 121 and len(m._recent_ttft["b"]) <= 121
    assert m.window("b", now).requests == 121


@pytest.mark.prometheus
def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=render(observed()).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
