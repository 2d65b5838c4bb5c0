"""The gateway's panels (issue 8): a row on the overview and a row on the model dashboard.

Quantiles and the 5xx share come from the recording rules (1 minute windows), which
record nothing while a model has no requests: the charts show a gap, not NaN or 0.
Per-endpoint and wait quantiles are computed here over $__rate_interval, with the same
rule: only where requests were counted in the window.
"""

from __future__ import annotations

from panels import Json, Layout, row, target, timeseries

ROW = "Gateway (/v1)"
GATEWAY = "llama_exporter_gateway_"
RULE_TTFT = "model:llama_exporter_gateway_time_to_first_token_seconds:"
RULE_LATENCY = "model:llama_exporter_gateway_request_duration_seconds:"
RULE_ERRORS = "model:llama_exporter_gateway_requests_errors:ratio_rate1m"
RATE = "[$__rate_interval]"
HOST_MODEL = "{{host}} {{model}}"  # legend: a model name can repeat across hosts


def quantile(q: float, histogram: str, selector: str, by: str) -> str:
    """histogram_quantile over rate(), only for groups with requests in the window."""
    buckets = f"rate({histogram}_bucket{selector}{RATE})"
    count = f"rate({histogram}_count{selector}{RATE})"
    if not by:
        return f"histogram_quantile({q}, sum by (le) ({buckets})) and sum({count}) > 0"
    return (
        f"histogram_quantile({q}, sum by ({by}, le) ({buckets}))"
        f" and on ({by}) sum by ({by}) ({count}) > 0"
    )


def overview_row(lay: Layout, h: str) -> list[Json]:
    """Every model's gateway traffic, latency, queue and loads; h selects the hosts."""
    size = (8, 8)
    by = "by (host, model)"
    ev = '{reason="evicted",' + h[1:]
    return [
        row(lay, ROW),
        timeseries(lay, "Gateway requests/s", "Requests through the gateway per second, by "
                   "host, model and HTTP status code.", "reqps",
                   [target(f"sum by (host, model, code) (rate({GATEWAY}requests_total{h}{RATE}))",
                           "{{host}} {{model}} {{code}}")], size=size),
        timeseries(lay, "Gateway 5xx share", "Share of each model's gateway requests answered "
                   "5xx over 1 minute (4xx are the client's and do not count); a gap while a "
                   "model has no requests.", "percentunit",
                   [target(f"{RULE_ERRORS}{h}", HOST_MODEL)], size=size, maximum=1),
        timeseries(lay, "Gateway requests in flight", "Gateway requests running now (queued, "
                   "loading or streaming), per model.", "none",
                   [target(f"sum {by} ({GATEWAY}requests_in_flight{h})", HOST_MODEL)],
                   size=size, stepped=True),
        timeseries(lay, "Time to first token p95", "95th percentile over 1 minute of streamed "
                   "requests' arrival to first generated text (includes queueing and "
                   "loading); a gap without streamed requests.", "s",
                   [target(f"{RULE_TTFT}p95_rate1m{h}", HOST_MODEL)], size=size),
        timeseries(lay, "Request latency p95", "95th percentile over 1 minute of gateway "
                   "requests' arrival to last byte, every endpoint; a gap without requests.",
                   "s", [target(f"{RULE_LATENCY}p95_rate1m{h}", HOST_MODEL)], size=size),
        timeseries(lay, "Gateway queue", "Requests waiting for a place under each host's "
                   "parallel cap (every model busy or pinned).", "none",
                   [target(f"sum by (host) ({GATEWAY}queue_length{h})", "{{host}}")],
                   size=size, stepped=True),
        timeseries(lay, "Rejected requests", "Requests the gateway turned away per "
                   "$__rate_interval window: queue_full (429), timeout (503), or cancelled "
                   "(the client left the queue).", "none",
                   [target(f"sum by (host, model, reason) (increase({GATEWAY}rejected_total{h}"
                           f"{RATE}))", "{{host}} {{model}} {{reason}}")],
                   size=size, bars=True),
        timeseries(lay, "Model loads", "Instance starts per $__rate_interval window, per "
                   "model (on request, by the API, at start-up or crash restarts).", "none",
                   [target(f"sum {by} (increase(llama_exporter_model_loads_total{h}{RATE}))",
                           HOST_MODEL)], size=size, bars=True),
        timeseries(lay, "Evictions", "Models unloaded to make room for another under the "
                   "cap, per $__rate_interval window.", "none",
                   [target(f"sum {by} (increase(llama_exporter_model_unloads_total{ev}{RATE}))",
                           HOST_MODEL)],
                   size=size, bars=True),
    ]  # fmt: skip


def model_row(lay: Layout, m: str) -> list[Json]:
    """One model's gateway traffic, latencies, waits and loads; m is its label selector."""
    return [
        row(lay, ROW),
        timeseries(lay, "Gateway requests/s", "Requests for this model through the gateway "
                   "per second, by endpoint and HTTP status code.", "reqps",
                   [target(f"sum by (endpoint, code) (rate({GATEWAY}requests_total{m}{RATE}))",
                           "{{endpoint}} {{code}}")]),
        timeseries(lay, "Gateway requests in flight", "Gateway requests for this model "
                   "running now (queued, loading or streaming).", "none",
                   [target(f"sum({GATEWAY}requests_in_flight{m})", "in flight")],
                   stepped=True),
        timeseries(lay, "Time to first token", "Streamed requests: arrival to the first "
                   "generated text, including queueing and loading. Median and 95th "
                   "percentile over 1 minute, and the 95th over 5 minutes (the alert's); a "
                   "gap without streamed requests.", "s",
                   [target(f"{RULE_TTFT}p50_rate1m{m}", "p50 (1m)"),
                    target(f"{RULE_TTFT}p95_rate1m{m}", "p95 (1m)"),
                    target(f"{RULE_TTFT}p95_rate5m{m}", "p95 (5m)")]),
        timeseries(lay, "Request latency", "Arrival to last byte: median and 95th percentile "
                   "over 1 minute for every endpoint together, and the 95th per endpoint "
                   "over $__rate_interval; a gap without requests.", "s",
                   [target(f"{RULE_LATENCY}p50_rate1m{m}", "p50 (1m)"),
                    target(f"{RULE_LATENCY}p95_rate1m{m}", "p95 (1m)"),
                    target(quantile(0.95, f"{GATEWAY}request_duration_seconds", m, "endpoint"),
                           "p95 {{endpoint}}")]),
        timeseries(lay, "Queue wait / load wait", "95th percentile of the time requests "
                   "waited for a place under the cap (queue) and for the model to load "
                   "(load), over $__rate_interval. Every request counts, 0 when it did not wait "
                   "(so 0 here is normal use); a gap means no requests.", "s",
                   [target(quantile(0.95, f"{GATEWAY}queue_wait_seconds", m, ""),
                           "queue wait p95"),
                    target(quantile(0.95, f"{GATEWAY}load_wait_seconds", m, ""),
                           "load wait p95")]),
        timeseries(lay, "Time between tokens", "Gaps between streamed chunks carrying text: "
                   "median and 95th percentile over $__rate_interval.", "s",
                   [target(quantile(0.5, f"{GATEWAY}inter_token_seconds", m, ""), "p50"),
                    target(quantile(0.95, f"{GATEWAY}inter_token_seconds", m, ""), "p95")]),
        timeseries(lay, "Loads", "Starts of this model per $__rate_interval window, by "
                   "trigger: request (the gateway), api, autostart, restart (after a crash).",
                   "none",
                   [target("sum by (trigger) (increase(llama_exporter_model_loads_total"
                           f"{m}{RATE}))", "{{trigger}}")], bars=True),
        timeseries(lay, "Unloads", "Stops of this model per $__rate_interval window, by "
                   "reason: evicted (room for another model), idle (idle_ttl), api, shutdown.",
                   "none",
                   [target("sum by (reason) (increase(llama_exporter_model_unloads_total"
                           f"{m}{RATE}))", "{{reason}}")], bars=True),
    ]  # fmt: skip
