"""The client commands: models, ps, start, stop, logs, add, rm, reload (HTTP to the service)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_exporter.cli.client import Client, ClientError
from llama_exporter.cli.fmt import fmt_bytes, fmt_duration, fmt_idle, table

EXIT_USAGE = 2
EXIT_CAP = 3

ClientCommand = Callable[[argparse.Namespace, Client], int]


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def cmd_models(args: argparse.Namespace, client: Client) -> int:
    """List the models the service knows."""
    models = client.get("/models")["models"]
    head = ["NAME", "SOURCE", "STATE", "ARCH", "QUANT", "SIZE", "CTX", "SLOTS", "NEEDS"]
    rows = [[*head, "REPORTED", "PATH"]]
    for m in models:
        meta = m.get("metadata") or {}
        memory = m.get("memory") or {}
        rows.append(
            [
                m["name"],
                m["source"],
                m["state"],
                str(meta.get("architecture") or "-"),
                str(meta.get("quantization") or "-"),
                fmt_bytes(meta.get("file_size")),
                str(m["ctx_size"]),
                str(m["parallel"]),
                fmt_bytes(memory.get("estimate_bytes")),
                fmt_bytes(memory.get("reported_bytes")),
                m["path"],
            ]
        )
    table(rows, sys.stdout)
    return 0


def cmd_ps(args: argparse.Namespace, client: Client) -> int:
    """Show running instances, like `ollama ps`."""
    status = client.get("/status")
    rows = [
        [
            "NAME",
            "STATE",
            "PID",
            "PORT",
            "UPTIME",
            "RESTARTS",
            "SLOTS",
            "CONTEXT",
            "TOK/S",
            "MEMORY",
            "NEEDS",
            "REPORTED",
            "IN FLIGHT",
            "IDLE",
            "LAST ERROR",
        ]
    ]
    now = time.time()
    figures = {m["name"]: m.get("memory") or {} for m in client.get("/models")["models"]}
    for st in status["models"]:
        memory = figures.get(st["model"], {})
        if st["state"] == "stopped" and not args.all:
            continue
        latest: dict[str, Any] = {}
        if st["state"] == "ready":
            try:
                latest = client.get(f"/models/{_q(st['model'])}/metrics").get("latest") or {}
            except ClientError:
                latest = {}
        slots = f"{latest['slots_busy']}/{latest['slots_total']}" if latest else "-"
        ctx = f"{latest['context_used_ratio'] * 100:.0f}%" if latest else "-"
        tps = f"{latest['tokens_per_second_smoothed']:.1f}" if latest else "-"
        error = (st.get("last_error") or "").splitlines()
        rows.append(
            [
                st["model"],
                st["state"],
                str(st["pid"] or "-"),
                str(st["port"] or "-"),
                fmt_duration(st["uptime_seconds"]),
                str(st["restarts"]),
                slots,
                ctx,
                tps,
                fmt_bytes(latest.get("rss_bytes")),
                fmt_bytes(memory.get("estimate_bytes")),
                fmt_bytes(memory.get("reported_bytes")),
                str(st.get("in_flight", 0)),
                fmt_idle(st, now),
                error[0][:60] if error else "",
            ]
        )
    table(rows, sys.stdout)
    devices = (status.get("memory") or {}).get("devices") or {}
    for device, use in devices.items():
        budget = use.get("budget_bytes")
        of = f" of {fmt_bytes(budget)}" if budget is not None else " (no budget)"
        print(f"memory {device}: {fmt_bytes(use['reserved_bytes'])} reserved{of}")
    print(f"{status['running']} of {status['cap']} running")
    return 0


def cmd_start(args: argparse.Namespace, client: Client) -> int:
    """Start a model; with --wait show progress until it is ready or has failed."""
    began = time.monotonic()
    try:
        st = client.post(f"/models/{_q(args.name)}/start")
    except ClientError as exc:
        if exc.status == 429:
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_CAP
        raise
    if not args.wait:
        print(f"{args.name}: {st['state']}")
        return 0
    tty = sys.stderr.isatty()
    last_line = 0.0
    while st["state"] in ("starting", "backoff"):
        elapsed = time.monotonic() - began
        if elapsed > args.timeout:
            print(f"\nerror: {args.name} not ready after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        if tty:
            print(f"\rstarting {args.name}: loading... {elapsed:5.1f}s", end="", file=sys.stderr)
        elif elapsed - last_line >= 5:
            print(f"starting {args.name}: loading... {elapsed:.0f}s", file=sys.stderr)
            last_line = elapsed
        time.sleep(0.1)
        st = _find(client.get("/status")["models"], args.name)
    if tty:
        print("", file=sys.stderr)
    elapsed = time.monotonic() - began
    if st["state"] == "ready":
        print(f"{args.name}: ready at {st['url']} in {elapsed:.1f}s (pid {st['pid']})")
        return 0
    print(
        f"error: {args.name} is {st['state']}: {st.get('last_error') or 'no reason given'}",
        file=sys.stderr,
    )
    return 1


def _find(statuses: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for st in statuses:
        if st["model"] == name:
            return st
    raise ClientError(404, f"model {name!r} is no longer known to the service")


def cmd_stop(args: argparse.Namespace, client: Client) -> int:
    """Stop a model."""
    st = client.post(f"/models/{_q(args.name)}/stop")
    print(f"{args.name}: {st['state']}")
    return 0


def cmd_logs(args: argparse.Namespace, client: Client) -> int:
    """Print the last lines of a model's llama-server output."""
    answer = client.get(f"/models/{_q(args.name)}/logs", lines=str(args.lines))
    for line in answer["lines"]:
        print(line)
    return 0


def cmd_add(args: argparse.Namespace, client: Client) -> int:
    """Register a GGUF file as a model."""
    body: dict[str, Any] = {"name": args.name, "path": str(Path(args.path).resolve())}
    if args.ctx_size is not None:
        body["ctx_size"] = args.ctx_size
    if args.parallel is not None:
        body["parallel"] = args.parallel
    for key in ("pinned", "idle_ttl", "stop_drain"):  # unset: the service's defaults apply
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    model = client.post("/models", body)
    ttl = fmt_duration(model["idle_ttl"]) if model.get("idle_ttl") else "never"
    gateway = "pinned" if model.get("pinned") else f"idle unload: {ttl}"
    print(f"{model['name']}: registered ({model['path']}; {gateway})")
    return 0


def cmd_remove(args: argparse.Namespace, client: Client) -> int:
    """Forget an API-registered model."""
    client.delete(f"/models/{_q(args.name)}")
    print(f"{args.name}: removed")
    return 0


def cmd_reload(args: argparse.Namespace, client: Client) -> int:
    """Ask the service to reload its config file; exit 2 when the file is refused."""
    try:
        done = client.post("/reload")
    except ClientError as exc:
        if exc.status != 400:
            raise
        print(f"error: reload refused, the running config stays: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    said = [f"{label} {', '.join(done[key])}" for key, label in RELOAD_PARTS if done.get(key)]
    print("reloaded: " + ("; ".join(said) or "no change"))
    return 0


RELOAD_PARTS = (
    ("added", "added"),
    ("removed", "removed"),
    ("restarted", "restarting"),
    ("changed_live", "changed live"),
    ("settings_live", "settings"),
)
