"""`llama-exporter requests`: the request log as a table, and --follow as requests end."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from llama_exporter.cli.client import Client
from llama_exporter.requestlog.record import MAX_LIMIT

HEADER = (
    "TIME",
    "MODEL",
    "ENDPOINT",
    "STATUS",
    "QUEUE",
    "LOAD",
    "TTFT",
    "TIME_TAKEN",
    "TOKENS",
    "TOK/S",
)
FOLLOW_INTERVAL = 1.0  # seconds between polls with --follow


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def row(r: dict[str, Any]) -> list[str]:
    """One record's cells, in HEADER's order."""
    when = time.strftime("%H:%M:%S", time.localtime(r["arrived"]))
    status = "running" if r["state"] == "in_flight" else str(r["status"])
    if r.get("error_type") and r["state"] != "in_flight":
        status += f" {r['error_type']}"
    load = _secs(r["load_wait_s"])
    if r.get("triggered_load"):
        load += "*"  # this request started the load
    if r.get("evicted"):
        load += f" (evicted {','.join(r['evicted'])})"
    prompt, completion = r.get("prompt_tokens"), r.get("completion_tokens")
    tokens = "-" if prompt is None and completion is None else f"{prompt or 0}/{completion or 0}"
    tps = r.get("tokens_per_second")
    return [
        when,
        r["model"] or "-",
        r["endpoint"],
        status,
        _secs(r["queue_wait_s"]),
        load,
        _secs(r["ttft_s"]),
        _secs(r["duration_s"]),
        tokens,
        "-" if tps is None else f"{tps:.1f}",
    ]


def write_table(
    rows: Sequence[Sequence[str]], out: TextIO, widths: list[int] | None = None
) -> list[int]:
    """Rows padded to columns (at least widths); returns the widths used."""
    cols = len(HEADER)
    used = [max([len(r[i]) for r in rows] + [(widths or [0] * cols)[i]]) for i in range(cols)]
    for cells in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(cells, used, strict=True)).rstrip() + "\n")
    out.flush()
    return used


def _filters(args: argparse.Namespace) -> dict[str, str]:
    query: dict[str, str] = {}
    if args.model:
        query["model"] = args.model
    if args.status:
        query["status"] = args.status
    return query


def cmd_requests(
    args: argparse.Namespace,
    client: Client,
    *,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """The last N requests, oldest first; with --follow, then each request as it ends."""
    query = _filters(args)
    page = client.get("/requests", limit=str(args.n), **query)["requests"]
    records = list(reversed(page))
    widths = write_table([HEADER, *(row(r) for r in records)], out)
    if not args.follow:
        return 0
    shown = {r["id"] for r in records if r["state"] != "in_flight"}
    running = [r["arrived"] for r in records if r["state"] == "in_flight"]
    mark = min(running, default=max((r["arrived"] for r in records), default=time.time()))
    while True:
        sleep(FOLLOW_INTERVAL)
        answer = client.get("/requests", limit="1000", since=repr(mark), **query)["requests"]
        fresh = [r for r in reversed(answer) if r["state"] != "in_flight" and r["id"] not in shown]
        if fresh:
            widths = write_table([row(r) for r in fresh], out, widths)
            shown.update(r["id"] for r in fresh)
        # Next time from the oldest request still running (it may end later), else the newest.
        running = [r["arrived"] for r in answer if r["state"] == "in_flight"]
        newest = max((r["arrived"] for r in answer), default=mark)
        mark = min(running, default=newest)
        shown = {r["id"] for r in answer if r["arrived"] >= mark and r["id"] in shown}


def _count(text: str) -> int:
    """-n: how many, 1..1000 (the API's page size)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer 1..{MAX_LIMIT}, got {text!r}")
    return n


def add_parser(client_cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """The `requests` subcommand's arguments."""
    p = client_cmd("requests", cmd_requests, "show the gateway's request log")
    p.add_argument("-n", type=_count, default=50, help="how many recent requests (1..1000)")
    p.add_argument("--model", "-m", default=None, help="only this model's requests")
    p.add_argument("--status", "-s", default=None, help="a code (200), a class (5xx) or in_flight")
    p.add_argument("--follow", "-f", action="store_true", help="then show each request as it ends")
