"""What exists to be queried: the service's metric contract, llama-server's own names,
Prometheus built-ins and our recording rules; plus a PromQL metric-name extractor.

One place for both the dashboard generator's ``--check`` and the Prometheus rule tests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE_MD = ROOT / "docs" / "ARCHITECTURE.md"
RECORDING_RULES = ROOT / "prometheus" / "rules" / "recording.yml"
ALERT_RULES = ROOT / "prometheus" / "rules" / "alerts.yml"

CONTRACT_PREFIX = "llama_exporter_"
CONTRACT_HEADING = "## Service metrics"

# llama-server's own /metrics (see /work/shared/LLAMA_SERVER.md). The token counters
# move only when a request ends.
LLAMACPP_METRICS: frozenset[str] = frozenset(
    {
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_tokens_cached_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:n_decode_total",
        "llamacpp:n_tokens_max",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:n_busy_slots_per_decode",
    }
)

# Exported by llama-server but reset by every read of /metrics (by anyone): with
# Prometheus reading every second they are noise. Nothing of ours may use them.
FORBIDDEN_METRICS: frozenset[str] = frozenset(
    {"llamacpp:prompt_tokens_seconds", "llamacpp:predicted_tokens_seconds"}
)

# Series Prometheus itself writes for every target and for alerts.
PROMETHEUS_BUILTINS: frozenset[str] = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def contract_metrics(architecture_md: Path = ARCHITECTURE_MD) -> frozenset[str]:
    """Full metric names of the service's contract table in docs/ARCHITECTURE.md."""
    text = architecture_md.read_text(encoding="utf-8")
    start = text.index(CONTRACT_HEADING)
    names: set[str] = set()
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or cells[0] in ("name", "") or "---" in line:
            continue
        kind = cells[1]
        for base in (part.strip() for part in cells[0].split("/")):
            full = CONTRACT_PREFIX + base
            if kind == "histogram":
                names.update(full + suffix for suffix in _HISTOGRAM_SUFFIXES)
            else:
                names.add(full)
    if not names:
        raise ValueError(f"{architecture_md}: no metric table under {CONTRACT_HEADING!r}")
    return frozenset(names)


def _rules(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def recording_rule_names(path: Path = RECORDING_RULES) -> frozenset[str]:
    """Names recorded by prometheus/rules/recording.yml."""
    return frozenset(str(rule["record"]) for rule in _rules(path) if "record" in rule)


def rule_expressions(*paths: Path) -> list[tuple[str, str]]:
    """(rule name, expr) of every recording and alerting rule in the given files."""
    return [
        (str(rule.get("record") or rule.get("alert")), str(rule["expr"]))
        for path in paths
        for rule in _rules(path)
    ]


def known_metrics() -> frozenset[str]:
    """Every name a rule or a panel may query."""
    return contract_metrics() | LLAMACPP_METRICS | PROMETHEUS_BUILTINS | recording_rule_names()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "atan2"}
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, labels, keywords or variables)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    # A selector written as {__name__="..."} names its metric in a matcher.
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def unknown_metrics(expr: str, known: frozenset[str]) -> list[str]:
    """Names in expr that nothing exports, and names nothing of ours may use."""
    names = promql_metric_names(expr)
    return sorted((names - known) | (names & FORBIDDEN_METRICS))
