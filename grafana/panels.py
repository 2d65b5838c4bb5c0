"""Grafana panel and dashboard builders: the JSON shapes grafana/generate.py puts together.

Every panel gets a unit, a description and the ${datasource} variable on each query.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

DATASOURCE_UID = "llama-prometheus"  # grafana/provisioning/datasources/prometheus.yml
DS: Json = {"type": "prometheus", "uid": "${datasource}"}
REFRESH_INTERVALS = ["1s", "5s", "10s", "30s", "1m", "5m"]


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One Prometheus query of a panel (refId is set by panel())."""
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant or table,
        "range": not (instant or table),
        "format": "table" if table else "time_series",
    }


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> Json:
        """Grid position for a panel of this size; wraps to a new row when full."""
        if self.x + width > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.x += width
        self.row_height = max(self.row_height, height)
        return pos

    def new_id(self) -> int:
        """Next panel id."""
        self.next_id += 1
        return self.next_id - 1


def panel(
    layout: Layout,
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    *,
    size: tuple[int, int] = (12, 8),
    defaults: Json | None = None,
    options: Json | None = None,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
) -> Json:
    """A panel with a unit, a description and the datasource variable on every query."""
    for index, tgt in enumerate(targets):
        tgt["refId"] = chr(ord("A") + index)
    result: Json = {
        "id": layout.new_id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": layout.place(*size),
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
        "targets": targets,
    }
    if transformations:
        result["transformations"] = transformations
    return result


def timeseries(
    layout: Layout,
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    *,
    size: tuple[int, int] = (12, 8),
    bars: bool = False,
    stepped: bool = False,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> Json:
    """A time series chart: lines, or stacked bars."""
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "stepAfter" if stepped else "linear",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if bars else "none", "group": "A"},
    }
    defaults: Json = {"custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        layout, "timeseries", title, description, unit, targets,
        size=size, defaults=defaults, options=options,
    )  # fmt: skip


def thresholds(*steps: tuple[float | None, str]) -> Json:
    """Absolute thresholds: (None, base colour), (value, colour), ..."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def stat(
    layout: Layout,
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    *,
    size: tuple[int, int] = (4, 4),
    text_mode: str = "auto",
    steps: Json | None = None,
    mappings: list[Json] | None = None,
    decimals: int | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Json:
    """A single-value card (several queries show side by side)."""
    defaults: Json = {
        "thresholds": steps or thresholds((None, "green")),
        "mappings": mappings or [],
        "color": {"mode": "thresholds"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "horizontal",
    }
    return panel(
        layout, "stat", title, description, unit, targets,
        size=size, defaults=defaults, options=options,
    )  # fmt: skip


def datasource_variable() -> Json:
    """The ${datasource} variable every panel and query uses."""
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus (llama)", "value": DATASOURCE_UID},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def dashboard(uid: str, title: str, panels: list[Json], variables: list[Json]) -> Json:
    """Dashboard shell: 1 s refresh, last 15 minutes, links between the two dashboards."""
    return {
        "uid": uid,
        "title": title,
        "description": "llama-exporter: llama-server instances managed by the service.",
        "tags": ["llama", "llama-exporter"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": REFRESH_INTERVALS},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "title": "llama dashboards",
                "type": "dashboards",
                "tags": ["llama"],
                "asDropdown": True,
                "keepTime": True,
                "includeVars": False,
            }
        ],
        "panels": panels,
    }


def row(layout: Layout, title: str) -> Json:
    """A (not collapsed) row header across the whole width; the panels after it follow."""
    return {
        "id": layout.new_id(),
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": layout.place(24, 1),
        "panels": [],
    }
