"""grafana/: generated dashboards are fresh and well-formed; provisioning parses."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import ROOT, require_binary

sys.path.insert(0, str(ROOT / "grafana"))
import generate
from metric_catalog import known_metrics, unknown_metrics

GRAFANA = ROOT / "grafana"
BOARDS = {name: GRAFANA / "dashboards" / name for name in generate.DASHBOARDS}


def load_board(name: str) -> dict[str, Any]:
    """A committed dashboard."""
    board: dict[str, Any] = json.loads(BOARDS[name].read_text(encoding="utf-8"))
    return board


def all_boards() -> list[dict[str, Any]]:
    """Every committed dashboard."""
    return [load_board(name) for name in BOARDS]


def test_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_stale_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, path in BOARDS.items():
        (tmp_path / name).write_text(path.read_text())
    stale = tmp_path / "llama-model.json"
    stale.write_text(stale.read_text().replace('"refresh": "1s"', '"refresh": "5s"'))
    monkeypatch.setattr(generate, "DASHBOARD_DIR", tmp_path)
    assert generate.main(["--check"]) == 1


def test_committed_json_matches_the_generator() -> None:
    for name, build in generate.DASHBOARDS.items():
        assert load_board(name) == build(), name


def test_lint_is_clean() -> None:
    known = known_metrics()
    for board in all_boards():
        assert generate.lint(board, known) == []


def test_lint_catches_problems() -> None:
    board = copy.deepcopy(load_board("llama-model.json"))
    first = board["panels"][0]
    first["fieldConfig"]["defaults"].pop("unit")
    first["description"] = ""
    first["targets"][0]["expr"] = "rate(llama_exporter_nope_total[5m])"
    first["targets"][0]["datasource"] = {"type": "prometheus", "uid": "hardcoded"}
    problems = "\n".join(generate.lint(board, known_metrics()))
    for expected in (
        "no unit",
        "no description",
        "has no ${datasource}",
        "[5m] is not $__rate_interval",
        "llama_exporter_nope_total",
    ):
        assert expected in problems


def test_every_panel_has_unit_description_and_datasource_variable() -> None:
    for board in all_boards():
        for panel in generate.iter_panels(board):
            if panel["type"] == "row":  # a header: no query, nothing to measure
                continue
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert panel["description"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_rate_uses_rate_interval() -> None:
    for board in all_boards():
        for panel in generate.iter_panels(board):
            for target in panel.get("targets", []):
                expr = target["expr"]
                if re.search(r"\b(rate|irate|increase)\s*\(", expr):
                    windows = re.findall(r"\[([^\]]*)\]", expr)
                    assert windows and set(windows) == {"$__rate_interval"}, expr


def test_every_metric_is_exported_by_something() -> None:
    known = known_metrics()
    for board in all_boards():
        for title, expr, _ in generate.panel_queries(board, {"model": "m"}):
            assert not unknown_metrics(expr, known), (title, expr)


def test_dashboard_settings() -> None:
    for board in all_boards():
        assert board["refresh"] == "1s"
        assert "1s" in board["timepicker"]["refresh_intervals"]
        assert board["time"]["from"] in ("now-5m", "now-10m", "now-15m")
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["current"]["value"] == generate.DATASOURCE_UID
    model = load_board("llama-model.json")
    variables = {v["name"]: v for v in model["templating"]["list"]}
    variable = variables["model"]
    assert variable["query"] == 'label_values(llama_exporter_instance_state{host=~"$host"}, model)'
    assert variable["datasource"]["uid"] == "${datasource}"
    assert variables["host"]["query"] == "label_values(llama_exporter_instance_state, host)"
    assert not variables["host"]["multi"]  # the model page shows one llama-server


def test_overview_has_a_multi_select_host_variable_and_fleet_totals() -> None:
    board = load_board("llama-overview.json")
    host = {v["name"]: v for v in board["templating"]["list"]}["host"]
    assert host["multi"] and host["includeAll"] and host["allValue"] == ".*"
    assert host["current"]["value"] == ["$__all"]
    panels = {p["title"]: p for p in generate.iter_panels(board)}
    running = panels["Models running per host"]["targets"][0]
    assert running["expr"].startswith("count by (host) (llama_exporter_instance_up")
    assert "sum by (host) (rate(" in panels["Tokens/s per host"]["targets"][0]["expr"]
    # Every query follows the host variable, and nothing aggregates a model across hosts.
    for title, expr, _ in generate.panel_queries(board, {"host": "HOST"}):
        assert 'host=~"HOST"' in expr, (title, expr)
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in clause.split(",")}
            assert "model" not in labels or "host" in labels, (title, expr)
    for title, expr, _ in generate.panel_queries(
        load_board("llama-model.json"), {"host": "H", "model": "m"}
    ):
        assert 'host=~"H"' in expr, (title, expr)


def test_model_dashboard_panels() -> None:
    panels = {p["title"]: p for p in generate.iter_panels(load_board("llama-model.json"))}
    context = panels["Context used"]
    steps = context["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"value": 0.8, "color": "red"}
    assert len(panels["Context used / size"]["targets"]) == 2
    assert len(panels["Busy slots / slots"]["targets"]) == 2
    bars = panels["Busy vs idle slots"]["fieldConfig"]["defaults"]["custom"]
    assert bars["drawStyle"] == "bars" and bars["stacking"]["mode"] == "normal"
    for title in ("Tokens generated", "Tokens/s", "Time per token", "Process CPU",
                  "Process memory", "Instance up", "Tokens per second"):  # fmt: skip
        assert title in panels


def test_overview_links_each_model_to_its_dashboard() -> None:
    panels = {p["title"]: p for p in generate.iter_panels(load_board("llama-overview.json"))}
    table = panels["Models"]
    links = [
        link
        for override in table["fieldConfig"]["overrides"]
        if override["matcher"]["options"] == "model"
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert links and links[0]["url"].startswith(f"/d/{generate.MODEL_UID}/")
    assert "var-model=${__value.raw}" in links[0]["url"]
    assert "var-host=${__data.fields.host}" in links[0]["url"]


def test_panel_queries_substitute_every_variable() -> None:
    for board in all_boards():
        queries = generate.panel_queries(board, {"model": "gemma", "__rate_interval": "15s"})
        assert queries
        for title, expr, unit in queries:
            assert "$" not in expr, (title, expr)
            assert unit, title
    model_queries = generate.panel_queries(load_board("llama-model.json"), {"model": "gemma"})
    assert any('model="gemma"' in expr and "[1m]" in expr for _, expr, _ in model_queries)
    with pytest.raises(KeyError):
        generate.panel_queries(load_board("llama-model.json"), {})


@pytest.mark.prometheus
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = [
        {"record": f"check:query:n{i}", "expr": expr}
        for board in all_boards()
        for i, (_, expr, _) in enumerate(generate.panel_queries(board, {"model": "m"}))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files_parse() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["uid"] == generate.DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:9090"
    assert source["jsonData"]["timeInterval"] == "1s"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "llama.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_gateway_rows() -> None:
    for name, titles in {
        "llama-overview.json": [
            "Gateway requests/s", "Gateway 5xx share", "Gateway requests in flight",
            "Time to first token p95", "Request latency p95", "Gateway queue",
            "Rejected requests", "Model loads", "Evictions",
        ],
        "llama-model.json": [
            "Gateway requests/s", "Gateway requests in flight", "Time to first token",
            "Request latency", "Queue wait / load wait", "Time between tokens", "Loads",
            "Unloads",
        ],
    }.items():  # fmt: skip
        panels = load_board(name)["panels"]
        rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
        assert [panels[i]["title"] for i in rows] == ["Gateway (/v1)", "Memory"], name
        after = [p["title"] for p in panels[rows[0] + 1 : rows[1]]]
        assert after == titles, name
        assert panels[rows[0]]["gridPos"]["x"] == 0 and panels[rows[0]]["gridPos"]["w"] == 24


def test_memory_rows() -> None:
    for name, titles in {
        "llama-overview.json": [
            "Memory reserved / budget", "Budget reserved", "Reported / estimated",
            "Estimated memory", "Reported memory by kind", "Process memory: anonymous / file",
        ],
        "llama-model.json": ["Memory figure", "Process memory: anonymous / file"],
    }.items():  # fmt: skip
        board, _ = generate.split_row(load_board(name), "Memory")
        assert [p["title"] for p in board["panels"]] == titles, name


def test_every_quantile_skips_windows_without_requests() -> None:
    # histogram_quantile over all-zero rates is NaN: each one is cut to the groups whose
    # _count moved in the window (a gap in the chart instead).
    found = 0
    for board in all_boards():
        for title, expr, _ in generate.panel_queries(board, {"model": "m"}):
            if "histogram_quantile" in expr:
                found += 1
                histogram = re.search(r"\((\w+)_bucket", expr)
                assert histogram, (title, expr)
                assert re.search(rf"\band\b.*{histogram.group(1)}_count.*\) > 0$", expr), expr
    assert found >= 5
