"""prometheus/: config, rules and their promtool unit tests; the test harness itself."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    RULES_DIR,
    WebhookSink,
    missing,
    require_binary,
    start_alertmanager,
    start_prometheus,
    write_targets,
)
from waiting import wait_until

sys.path.insert(0, str(ROOT / "grafana"))
from metric_catalog import (
    ALERT_RULES,
    FORBIDDEN_METRICS,
    RECORDING_RULES,
    known_metrics,
    promql_metric_names,
    rule_expressions,
    unknown_metrics,
)

UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
OBSERVABILITY_MD = ROOT / "docs" / "OBSERVABILITY.md"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"


def load(path: Path) -> Any:
    """Parsed YAML."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in rules/alerts.yml."""
    return [rule for group in load(ALERT_RULES)["groups"] for rule in group["rules"]]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing output."""
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------ promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary."""
    return require_binary("promtool")


@pytest.mark.prometheus
def test_config_syntax(promtool: str) -> None:
    result = run(promtool, "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_rules_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_rule_unit_tests(promtool: str) -> None:
    assert UNIT_TESTS
    result = run(promtool, "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_alertmanager_config() -> None:
    import shutil

    amtool = shutil.which("amtool")
    if amtool is None:
        missing("amtool not found: apt-get install prometheus-alertmanager")
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------ pure checks


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for group in load(path).get("tests", []):
            for case in group.get("alert_rule_test", []) or []:
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert not names - firing, f"alerts never tested firing: {sorted(names - firing)}"
    assert not names - quiet, f"alerts never tested quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, "tests for alerts that do not exist"


def test_unit_tests_load_the_project_rules() -> None:
    for path in UNIT_TESTS:
        for rule_file in load(path)["rule_files"]:
            assert (path.parent / rule_file).resolve().parent == RULES_DIR, (path, rule_file)


def test_alert_metadata() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OBSERVABILITY_MD.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), name
        runbook = annotations["runbook_url"]
        assert runbook == f"docs/OBSERVABILITY.md#{name.lower()}", name
        assert name.lower() in anchors, f"{name}: no runbook section in {OBSERVABILITY_MD}"
        if "by (host, model)" in rule["expr"]:
            for key in ("summary", "description"):
                assert "$labels.model" in annotations[key], f"{name}: {key} omits the model"
                assert "$labels.host" in annotations[key], f"{name}: {key} omits the host"


def test_every_model_aggregation_keeps_the_host() -> None:
    # A model name can repeat across hosts: by/on (model) alone would merge two boxes.
    for name, expr in rule_expressions(*sorted(RULES_DIR.glob("*.yml"))):
        for clause in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in clause.split(",")}
            if "model" in labels:
                assert "host" in labels, f"{name}: ({clause}) drops the host"


def test_instance_down_is_not_a_bare_up_check() -> None:
    expr = {rule["alert"]: rule for rule in alert_rules()}["LlamaInstanceDown"]["expr"]
    assert "up ==" not in expr.replace("  ", " ")
    assert "llama_exporter_instance_state" in expr


def test_rules_query_only_metrics_that_exist() -> None:
    known = known_metrics()
    for name, expr in rule_expressions(RECORDING_RULES, ALERT_RULES):
        assert not unknown_metrics(expr, known), f"{name}: {unknown_metrics(expr, known)}"


def test_nothing_uses_the_read_resetting_gauges() -> None:
    for name, expr in rule_expressions(RECORDING_RULES, ALERT_RULES):
        assert not promql_metric_names(expr) & FORBIDDEN_METRICS, name
    assert "llamacpp:predicted_tokens_seconds" in promql_metric_names(
        "llamacpp:predicted_tokens_seconds > 0"
    )


def seconds(duration: str) -> float:
    """A PromQL duration like 90s, 5m, 1h30m in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def test_llamacpp_counters_use_windows_of_a_minute_or_more() -> None:
    # llama-server's counters move only when a request ends: short windows are sawtooth.
    for name, expr in rule_expressions(RECORDING_RULES, ALERT_RULES):
        for window in re.findall(r"llamacpp:\w+(?:\{[^}]*\})?\[(\w+)\]", expr):
            assert seconds(window) >= 60, f"{name}: [{window}] on a llamacpp counter"


def test_quantile_rules_record_nothing_without_requests() -> None:
    # histogram_quantile over rates that are all 0 gives NaN: every quantile rule keeps
    # only the models whose _count moved in the same window (gateway_test.yml shows it).
    quantiles = [
        (name, expr)
        for name, expr in rule_expressions(RECORDING_RULES, ALERT_RULES)
        if "histogram_quantile" in expr
    ]
    assert quantiles
    for name, expr in quantiles:
        histogram, window = re.findall(r"\((\w+)_bucket\[(\w+)\]", expr)[0]
        guard = (
            rf"and on \(host, model\) sum by \(host, model\) "
            rf"\(rate\({histogram}_count\[{window}\]\)\) > 0"
        )
        assert re.search(guard, " ".join(expr.split())), name


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name, _ in rule_expressions(RECORDING_RULES):
        assert re.fullmatch(r"model:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*", name), name


def test_promql_metric_name_extraction() -> None:
    expr = (
        'sum by (model) (rate(llamacpp:tokens_predicted_total{job="x",a=~"b|c"}[5m])) '
        "/ on (model) group_left (state) (model:foo:rate1m > 0.5e3) "
        'and absent(up{job="llama-exporter"}) unless time() - x_seconds offset 1h'
    )
    assert promql_metric_names(expr) == {
        "llamacpp:tokens_predicted_total",
        "model:foo:rate1m",
        "up",
        "x_seconds",
    }


def test_config_structure() -> None:
    config = load(PROMETHEUS_CONFIG)
    glob = config["global"]
    assert seconds(glob["scrape_interval"]) == 1
    assert seconds(glob["scrape_timeout"]) <= seconds(glob["scrape_interval"])
    assert seconds(glob["evaluation_interval"]) == 1
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["llama-server"]["file_sd_configs"] == [{"files": ["targets/llama-servers.json"]}]
    assert jobs["llama-exporter"]["file_sd_configs"] == [{"files": ["targets/llama-exporter.json"]}]
    # The service's series carry host themselves: keep it, no exported_host.
    assert jobs["llama-exporter"]["honor_labels"] is True
    assert config["rule_files"] == ["rules/*.yml"]
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["127.0.0.1:9093"]
    targets = PROMETHEUS_DIR / "targets"
    assert (targets / ".gitkeep").is_file()
    assert "*.json" in (targets / ".gitignore").read_text().split()


# ------------------------------------------------------------------------ the harness


class _StaticMetrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[str]:
    """An HTTP server answering a fixed /metrics page; yields host:port."""
    handler = type(
        "Handler",
        (_StaticMetrics,),
        {"body": b'llama_exporter_instance_up{model="m"} 1\nllamacpp:requests_processing 0\n'},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.prometheus
def test_harness_prometheus_loads_the_project_rules(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    with start_prometheus(tmp_path, targets_dir=targets, alertmanager_port=None) as prom:
        expected = {group["name"] for path in (RECORDING_RULES, ALERT_RULES) for group in
                    load(path)["groups"]}  # fmt: skip
        groups = prom.rules()
        assert {group["name"] for group in groups} == expected
        count = sum(len(group["rules"]) for group in groups)
        assert count == len(rule_expressions(RECORDING_RULES, ALERT_RULES))

        def all_evaluated_ok() -> bool:
            rules = [rule for group in prom.rules() for rule in group["rules"]]
            bad = [rule for rule in rules if rule["health"] == "err"]
            assert not bad, bad
            return all(rule["health"] == "ok" for rule in rules)

        prom.wait_for(all_evaluated_ok, timeout=15, what="every rule evaluated")
        assert prom.targets() == []
        assert prom.query("vector(1)")[0]["value"][1] == "1"


@pytest.mark.prometheus
def test_harness_prometheus_scrapes_file_sd_targets(tmp_path: Path, metrics_server: str) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    with start_prometheus(tmp_path, targets_dir=targets, alertmanager_port=None) as prom:
        write_targets(targets / "llama-exporter.json", [metrics_server])
        write_targets(targets / "llama-servers.json", [metrics_server], {"model": "m"})
        prom.wait_for(
            lambda: (
                prom.query('up{job="llama-exporter"} == 1')
                and prom.query('up{job="llama-server",model="m"} == 1')
            ),
            timeout=20,
            what="both jobs scraped",
        )
        assert prom.value('llama_exporter_instance_up{job="llama-exporter"}') == 1
        assert prom.value('llamacpp:requests_processing{model="m"}') == 0
        # A target that leaves file_sd goes stale: its series vanish, up does not turn 0.
        write_targets(targets / "llama-servers.json", [])
        prom.wait_for(
            lambda: not prom.query('up{job="llama-server"}'), timeout=20, what="stale target"
        )


@pytest.mark.prometheus
def test_harness_alertmanager_delivers_to_the_webhook(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    with (
        WebhookSink() as sink,
        start_alertmanager(tmp_path, sink.url) as am,
        start_prometheus(tmp_path, targets_dir=targets, alertmanager_port=am.port) as prom,
    ):
        prom.wait_for(
            lambda: any(f":{am.port}/" in url for url in prom.alertmanagers()),
            timeout=15,
            what="Prometheus to discover the Alertmanager",
        )
        am.post_alert({"alertname": "HarnessTest", "model": "m", "severity": "warning"})
        wait_until(lambda: sink.bodies(), what="webhook delivery")
        body = sink.bodies()[0]
        assert body["status"] == "firing"
        assert body["alerts"][0]["labels"]["model"] == "m"
        assert [a["labels"]["alertname"] for a in am.alerts()] == ["HarnessTest"]
