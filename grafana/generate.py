#!/usr/bin/env python3
"""Write the Grafana dashboards (grafana/dashboards/*.json) from Python.

    python grafana/generate.py           # rewrite the JSON files
    python grafana/generate.py --check   # exit 1 if they are stale or a panel is wrong

The JSON is committed; --check (run by the tests) fails when it differs from what this
script writes, or when a panel queries a metric nothing exports, lacks a unit, a
description or the ${datasource} variable, or uses a rate window other than
$__rate_interval.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gateway_panels
import memory_panels
from metric_catalog import known_metrics, unknown_metrics
from panels import (
    DATASOURCE_UID as DATASOURCE_UID,  # re-exported: the tests read it here
)
from panels import (
    DS,
    Json,
    Layout,
    dashboard,
    datasource_variable,
    panel,
    stat,
    target,
    thresholds,
    timeseries,
)

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"
OVERVIEW_UID = "llama-overview"
MODEL_UID = "llama-model"
TOKENS_PER_SECOND = "suffix: tok/s"
HOST_MODEL = "{{host}} {{model}}"  # legend: a model name can repeat across hosts

# Values panel_queries() gives Grafana's built-in variables unless told otherwise.
DEFAULT_VARIABLES: dict[str, str] = {
    "host": ".*",  # "All"
    "__rate_interval": "1m",
    "__interval": "1s",
    "__range": "15m",
    "datasource": DATASOURCE_UID,
}


# ---------------------------------------------------------------------------- dashboards


def host_variable(*, multi: bool) -> Json:
    """The ${host} variable: the service's host_label (docs/FLEET.md), "All" by default."""
    query = "label_values(llama_exporter_instance_state, host)"
    return {
        "type": "query",
        "name": "host",
        "label": "Host",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "includeAll": True,
        "allValue": ".*",  # also matches series without a host label (older services)
        "multi": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
    }


def overview() -> Json:
    """Every model on every chosen host at a glance, with a link to each model's dashboard."""
    lay = Layout()
    h = '{host=~"$host"}'
    per_model = "by (host, model)"
    model_link = (
        f"/d/{MODEL_UID}/llama-model?var-host=${{__data.fields.host}}&var-model=${{__value.raw}}"
        "&${datasource:queryparam}&${__url_time_range}"
    )
    panels = [
        stat(lay, "Instances running", "Instances counted against the parallel cap "
             "(starting, ready, stopping, back-off), over the chosen hosts.", "none",
             [target(f"sum(llama_exporter_instances_running{h})")]),
        stat(lay, "Parallel cap", "Most instances the chosen hosts run at once (the sum of "
             "their caps); more starts are refused (429).", "none",
             [target(f"sum(llama_exporter_instances_max{h})")]),
        stat(lay, "Tokens/s (all models)", "Tokens generated per second over all models of "
             "the chosen hosts, live (includes requests in flight).", TOKENS_PER_SECOND,
             [target(f"sum(rate(llama_exporter_tokens_generated_total{h}[$__rate_interval]))")],
             decimals=1),
        stat(lay, "Host CPU", "Share of each host's CPU in use.", "percentunit",
             [target(f"max by (host) (llama_exporter_host_cpu_utilization_ratio{h})",
                     "{{host}}")],
             steps=thresholds((None, "green"), (0.9, "orange"))),
        stat(lay, "Host memory used", "Memory in use and in total over the chosen hosts.",
             "bytes",
             [target(f"sum(llama_exporter_host_memory_used_bytes{h})", "used"),
              target(f"sum(llama_exporter_host_memory_total_bytes{h})", "total")],
             text_mode="value_and_name"),
        stat(lay, "Alerts firing", "llama alerts firing now on the chosen hosts (see "
             "docs/OBSERVABILITY.md).", "none",
             [target('count(ALERTS{alertstate="firing",alertname=~"Llama.*",host=~"$host"}) '
                     "or vector(0)")],
             steps=thresholds((None, "green"), (1, "red"))),
        stat(lay, "Models running per host", "Fleet: models ready on each host.", "none",
             [target(f"count by (host) (llama_exporter_instance_up{h} == 1)", "{{host}}")],
             size=(12, 4), text_mode="value_and_name"),
        stat(lay, "Tokens/s per host", "Fleet: tokens generated per second on each host, "
             "all its models, live.", TOKENS_PER_SECOND,
             [target(f"sum by (host) (rate(llama_exporter_tokens_generated_total{h}"
                     "[$__rate_interval]))", "{{host}}")],
             size=(12, 4), text_mode="value_and_name", decimals=1),
        panel(
            lay, "table", "Models",
            "One row per model and host: state, live tokens/s, context in use, busy slots, "
            "restarts and refused starts since the service started, CPU and memory. "
            "Click a model for its dashboard.",
            "none",
            [
                target(f"max by (host, model, state) (llama_exporter_instance_state{h} == 1)",
                       table=True),
                target(f"sum {per_model} (rate(llama_exporter_tokens_generated_total{h}"
                       "[$__rate_interval]))", table=True),
                target(f"max {per_model} (llama_exporter_context_used_ratio{h})", table=True),
                target(f"max {per_model} (llama_exporter_slots_busy{h})", table=True),
                target(f"max {per_model} (llama_exporter_slots{h})", table=True),
                target(f"max {per_model} (llama_exporter_instance_restarts_total{h})",
                       table=True),
                target(f"max {per_model} (llama_exporter_instance_start_rejected_total{h})",
                       table=True),
                target(f"max {per_model} (llama_exporter_process_cpu_utilization_ratio{h})",
                       table=True),
                target(f"max {per_model} (llama_exporter_process_resident_memory_bytes{h})",
                       table=True),
            ],
            size=(24, 9),
            options={"showHeader": True, "sortBy": [{"displayName": "host", "desc": False}]},
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #A": True},
                        "indexByName": {"host": 0, "model": 1, "state": 2},
                        "renameByName": {
                            "Value #B": "tokens/s",
                            "Value #C": "context used",
                            "Value #D": "busy slots",
                            "Value #E": "slots",
                            "Value #F": "restarts",
                            "Value #G": "rejected starts",
                            "Value #H": "CPU",
                            "Value #I": "memory",
                        },
                    },
                },
            ],
            overrides=[
                {"matcher": {"id": "byName", "options": "model"},
                 "properties": [{"id": "links", "value": [
                     {"title": "Open the model dashboard", "url": model_link}]}]},
                {"matcher": {"id": "byName", "options": "tokens/s"},
                 "properties": [{"id": "unit", "value": TOKENS_PER_SECOND},
                                {"id": "decimals", "value": 1}]},
                {"matcher": {"id": "byName", "options": "context used"},
                 "properties": [{"id": "unit", "value": "percentunit"},
                                {"id": "thresholds",
                                 "value": thresholds((None, "green"), (0.8, "red"))},
                                {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
                {"matcher": {"id": "byName", "options": "CPU"},
                 "properties": [{"id": "unit", "value": "percentunit"}]},
                {"matcher": {"id": "byName", "options": "memory"},
                 "properties": [{"id": "unit", "value": "bytes"}]},
            ],
        ),
        timeseries(lay, "Tokens per second", "Generated tokens/s per model and host, live "
                   "from the service's exact counter (completed + in flight).",
                   TOKENS_PER_SECOND,
                   [target(f"sum {per_model} (rate(llama_exporter_tokens_generated_total{h}"
                           "[$__rate_interval]))", HOST_MODEL)]),
        timeseries(lay, "Context used", "Share of each model's context (all slots) in use; "
                   "above 80% a slot is close to shifting or truncating.", "percentunit",
                   [target(f"max {per_model} (llama_exporter_context_used_ratio{h})",
                           HOST_MODEL)],
                   maximum=1),
        timeseries(lay, "Busy slots", "Slots processing a request, per model and host.",
                   "none",
                   [target(f"max {per_model} (llama_exporter_slots_busy{h})", HOST_MODEL)],
                   stepped=True),
        timeseries(lay, "Requests waiting", "Requests queued in llama-server because every "
                   "slot is busy.", "none",
                   [target(f"max {per_model} (llama_exporter_requests_waiting{h})",
                           HOST_MODEL)],
                   stepped=True),
        timeseries(lay, "Restarts", "Automatic restarts after a crash or hang, per "
                   "$__rate_interval window.", "none",
                   [target(f"sum {per_model} (increase(llama_exporter_instance_restarts_total"
                           f"{h}[$__rate_interval]))", HOST_MODEL)], bars=True),
        timeseries(lay, "Rejected starts", "Starts refused because the parallel cap was "
                   "reached, per $__rate_interval window.", "none",
                   [target(f"sum {per_model} (increase("
                           f"llama_exporter_instance_start_rejected_total{h}[$__rate_interval]))",
                           HOST_MODEL)], bars=True),
        timeseries(lay, "Process CPU", "Each llama-server's share of its host's CPU.",
                   "percentunit",
                   [target(f"max {per_model} (llama_exporter_process_cpu_utilization_ratio{h})",
                           HOST_MODEL)]),
        timeseries(lay, "Process memory", "Each llama-server's resident memory (RSS).",
                   "bytes",
                   [target(f"max {per_model} (llama_exporter_process_resident_memory_bytes{h})",
                           HOST_MODEL)]),
        timeseries(lay, "Instances up", "1 while the service reports the model ready.",
                   "none",
                   [target(f"max {per_model} (llama_exporter_instance_up{h})", HOST_MODEL)],
                   stepped=True, maximum=1, size=(24, 6)),
        *gateway_panels.overview_row(lay, h),
        *memory_panels.overview_row(lay, h),
    ]  # fmt: skip
    return dashboard(
        OVERVIEW_UID, "llama: overview", panels, [datasource_variable(), host_variable(multi=True)]
    )


def model_dashboard() -> Json:
    """One model on one host in detail: the $host and $model variables."""
    lay = Layout()
    m = '{host=~"$host",model="$model"}'
    srv = '{job="llama-server",host=~"$host",model="$model"}'
    up_mapping = [
        {
            "type": "value",
            "options": {
                "0": {"text": "down", "color": "red"},
                "1": {"text": "up", "color": "green"},
            },
        }
    ]
    panels = [
        stat(lay, "State", "The instance's state as the service reports it (stopped, "
             "starting, ready, stopping, backoff, failed).", "none",
             [target(f"max by (state) (llama_exporter_instance_state{m} == 1)", "{{state}}")],
             text_mode="name"),
        stat(lay, "Ready / scraped", "Ready: the service says the instance is ready. "
             "Scraped: Prometheus reads its llama-server's /metrics.", "none",
             [target(f"llama_exporter_instance_up{m}", "ready"),
              target(f"max(up{srv})", "scraped")],
             text_mode="value_and_name", mappings=up_mapping),
        stat(lay, "Tokens generated", "All tokens generated since the service started "
             "(completed + in flight; kept across restarts).", "short",
             [target(f"llama_exporter_tokens_generated_total{m}")]),
        stat(lay, "Tokens/s", "Generated tokens per second, live (counter rate over "
             "$__rate_interval).", TOKENS_PER_SECOND,
             [target(f"sum(rate(llama_exporter_tokens_generated_total{m}[$__rate_interval]))")],
             decimals=1),
        stat(lay, "Context used / size", "Tokens in use over all slots / the context size "
             "(tokens).", "short",
             [target(f"llama_exporter_context_used_tokens{m}", "used"),
              target(f"llama_exporter_context_size_tokens{m}", "size")],
             text_mode="value_and_name"),
        stat(lay, "Context used", "Share of the context in use over all slots; red above "
             "80%.", "percentunit", [target(f"llama_exporter_context_used_ratio{m}")],
             steps=thresholds((None, "green"), (0.6, "orange"), (0.8, "red")),
             minimum=0, maximum=1),
        stat(lay, "Busy slots / slots", "Slots processing a request / all slots (-np).",
             "none",
             [target(f"llama_exporter_slots_busy{m}", "busy"),
              target(f"llama_exporter_slots{m}", "slots")],
             text_mode="value_and_name"),
        stat(lay, "Time per token", "Mean over busy slots of the seconds per generated "
             "token.", "s", [target(f"llama_exporter_time_per_token_seconds{m}")]),
        stat(lay, "Requests waiting", "Requests queued in llama-server: every slot is busy.",
             "none", [target(f"llama_exporter_requests_waiting{m}")],
             steps=thresholds((None, "green"), (1, "orange"))),
        stat(lay, "Restarts", "Automatic restarts after a crash or hang since the service "
             "started.", "none", [target(f"llama_exporter_instance_restarts_total{m}")],
             steps=thresholds((None, "green"), (1, "orange"), (3, "red"))),
        stat(lay, "Uptime", "Time since the instance became ready.", "s",
             [target(f"time() - llama_exporter_instance_ready_since_timestamp_seconds{m}")]),
        stat(lay, "Memory (RSS)", "llama-server's resident memory.", "bytes",
             [target(f"llama_exporter_process_resident_memory_bytes{m}")]),
        timeseries(lay, "Tokens per second", "Live: rate of the service's exact counter. "
                   "Smoothed: the service's ~5 s average. Completed requests: llama-server's "
                   "own counters over 1 minute (they move only when a request ends).",
                   TOKENS_PER_SECOND,
                   [target(f"sum(rate(llama_exporter_tokens_generated_total{m}"
                           "[$__rate_interval]))", "generated (live)"),
                    target(f"llama_exporter_tokens_per_second_smoothed{m}",
                           "generated (smoothed)"),
                    target(f"model:llamacpp_tokens_predicted:rate1m{m}",
                           "generated, completed requests (1m)"),
                    target(f"model:llamacpp_prompt_tokens:rate1m{m}",
                           "prompt, completed requests (1m)")]),
        timeseries(lay, "Tokens per second per slot", "Generation rate of each processing "
                   "slot.", TOKENS_PER_SECOND,
                   [target(f"llama_exporter_slot_tokens_per_second{m}", "slot {{slot}}")]),
        timeseries(lay, "Context used vs size", "Tokens in use (all slots and per slot) "
                   "against the context size.", "short",
                   [target(f"llama_exporter_context_used_tokens{m}", "used"),
                    target(f"llama_exporter_context_size_tokens{m}", "size"),
                    target(f"llama_exporter_slot_context_used_tokens{m}",
                           "slot {{slot}} used")]),
        timeseries(lay, "Busy vs idle slots", "Slots processing a request and idle slots, "
                   "stacked: the bar's height is the number of slots.", "none",
                   [target(f"llama_exporter_slots_busy{m}", "busy"),
                    target(f"llama_exporter_slots{m} - llama_exporter_slots_busy{m}", "idle")],
                   bars=True),
        timeseries(lay, "Time per token over time", "Seconds per generated token: live mean over "
                   "busy slots, per slot, and over completed requests (5 minutes).", "s",
                   [target(f"llama_exporter_time_per_token_seconds{m}", "mean (live)"),
                    target(f"llama_exporter_slot_time_per_token_seconds{m}", "slot {{slot}}"),
                    target(f"model:llamacpp_seconds_per_token:ratio_rate5m{m}",
                           "completed requests (5m)")]),
        timeseries(lay, "Requests waiting over time", "Requests queued because every slot is busy.",
                   "none", [target(f"llama_exporter_requests_waiting{m}", "waiting")],
                   stepped=True),
        timeseries(lay, "Process CPU", "llama-server's share of the whole host's CPU.",
                   "percentunit",
                   [target(f"llama_exporter_process_cpu_utilization_ratio{m}", "llama-server"),
                    target('llama_exporter_host_cpu_utilization_ratio{host=~"$host"}', "host")],
                   maximum=1),
        timeseries(lay, "Process memory", "llama-server's resident memory (RSS).", "bytes",
                   [target(f"llama_exporter_process_resident_memory_bytes{m}", "RSS")]),
        timeseries(lay, "Instance up", "Ready: the service's view. Scraped: Prometheus's "
                   "scrape of llama-server's /metrics (absent when it has no target).",
                   "none",
                   [target(f"llama_exporter_instance_up{m}", "ready"),
                    target(f"max(up{srv})", "scraped")],
                   stepped=True, maximum=1),
        timeseries(lay, "Poll and scrape duration", "The service's last poll of /slots and "
                   "/metrics, and Prometheus's scrape of llama-server; near 1 s samples get "
                   "lost.", "s",
                   [target(f"llama_exporter_poll_duration_seconds{m}", "service poll"),
                    target(f"max(scrape_duration_seconds{srv})", "Prometheus scrape")]),
        timeseries(lay, "Poll errors", "Failed reads of llama-server's endpoints by the "
                   "service, per $__rate_interval window.", "none",
                   [target(f"sum by (endpoint, reason) (increase(llama_exporter_poll_errors_total"
                           f"{m}[$__rate_interval]))", "{{endpoint}} {{reason}}")],
                   bars=True, size=(24, 6)),
        *gateway_panels.model_row(lay, m),
        *memory_panels.model_row(lay, m),
    ]  # fmt: skip
    model_variable: Json = {
        "type": "query",
        "name": "model",
        "label": "Model",
        "datasource": DS,
        "query": 'label_values(llama_exporter_instance_state{host=~"$host"}, model)',
        "definition": 'label_values(llama_exporter_instance_state{host=~"$host"}, model)',
        "refresh": 2,
        "sort": 1,
        "includeAll": False,
        "multi": False,
        "current": {},
        "options": [],
        "hide": 0,
        "regex": "",
    }
    # One host at a time (no "All"): every panel describes a single llama-server.
    host = {**host_variable(multi=False), "includeAll": False, "current": {}}
    return dashboard(
        MODEL_UID, "llama: model", panels, [datasource_variable(), host, model_variable]
    )


DASHBOARDS: dict[str, Callable[[], Json]] = {
    "llama-overview.json": overview,
    "llama-model.json": model_dashboard,
}


# ---------------------------------------------------------------------------- checks


def iter_panels(board: Json) -> Iterator[Json]:
    """Every panel, rows' nested panels included."""
    for item in board.get("panels", []):
        yield item
        yield from item.get("panels", [])


def split_row(board: Json, title: str) -> tuple[Json, Json]:
    """(the panels under the row titled `title`, every other panel), each as a board."""
    inside: list[Json] = []
    outside: list[Json] = []
    current = ""
    for item in board.get("panels", []):
        if item.get("type") == "row":
            current = item["title"]
        else:
            (inside if current == title else outside).append(item)
    return {**board, "panels": inside}, {**board, "panels": outside}


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}) in expr; unknown names raise KeyError."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():  # "$1" in a label_replace() replacement
            return match.group(0)
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries(board: Json, variables: dict[str, str]) -> list[tuple[str, str, str]]:
    """(panel title, expr with variables substituted, panel unit) for every query.

    Built-ins default to DEFAULT_VARIABLES ($__rate_interval -> 1m, ...); pass e.g.
    {"model": "gemma", "__rate_interval": "15s"} to override.
    """
    values = {**DEFAULT_VARIABLES, **variables}
    return [
        (p["title"], substitute(t["expr"], values), p["fieldConfig"]["defaults"]["unit"])
        for p in iter_panels(board)
        for t in p.get("targets", [])
    ]


_RATE_RANGE = re.compile(r"\b(?:rate|irate|increase)\s*\([^\[]*\[([^\]]*)\]")


def lint(board: Json, known: frozenset[str]) -> list[str]:
    """Problems in a dashboard: missing unit/description/datasource, rate windows, metrics."""
    problems: list[str] = []
    for p in iter_panels(board):
        if p.get("type") == "row":
            continue
        where = f"{board['uid']}: panel {p.get('title')!r}"
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: no unit")
        if not p.get("description"):
            problems.append(f"{where}: no description")
        if p.get("datasource") != DS:
            problems.append(f"{where}: datasource is not ${{datasource}}")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            if t.get("datasource") != DS:
                problems.append(f"{where}: query {t.get('refId')} has no ${{datasource}}")
            for window in _RATE_RANGE.findall(expr):
                if window != "$__rate_interval":
                    problems.append(f"{where}: rate window [{window}] is not $__rate_interval")
            for name in unknown_metrics(expr, known):
                problems.append(f"{where}: {name} is not exported by anything ({expr})")
    return problems


def render(board: Json) -> str:
    """The JSON text written to disk."""
    return json.dumps(board, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with --check compare and lint them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if stale or wrong")
    args = parser.parse_args(argv)
    known = known_metrics()
    problems: list[str] = []
    for filename, build in DASHBOARDS.items():
        board: Json = build()
        problems += lint(board, known)
        path = DASHBOARD_DIR / filename
        text = render(board)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                problems.append(f"{path}: stale, run python grafana/generate.py")
        else:
            DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
