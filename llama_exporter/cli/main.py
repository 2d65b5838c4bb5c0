"""Command line: `serve`, `check-config`, and client commands for a running service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from llama_exporter import __version__
from llama_exporter.cli import requests_cmd
from llama_exporter.cli.client import Client, ClientError, ServiceUnreachable
from llama_exporter.cli.serve import ServeError, cmd_serve
from llama_exporter.config.env import instance_exposure_warning
from llama_exporter.config.loader import load_config
from llama_exporter.config.settings import ConfigError, parse_seconds

EXIT_USAGE = 2
EXIT_CAP = 3


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file with the same code `serve` uses; start nothing."""
    config = load_config(args.file)
    exposed = instance_exposure_warning(config.instance_host, config.instance_auth)
    if exposed is not None:
        print(f"{args.file}: warning: {exposed}", file=sys.stderr)
    names = ", ".join(m.name for m in config.models) or "none"
    print(
        f"{args.file}: OK ({len(config.models)} model(s): {names}; cap {config.max_parallel}; "
        f"host label {config.host_label}; llama-server {config.llama_server})"
    )
    return 0


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def cmd_models(args: argparse.Namespace, client: Client) -> int:
    """List the models the service knows."""
    models = client.get("/models")["models"]
    rows = [["NAME", "SOURCE", "STATE", "ARCH", "QUANT", "SIZE", "CTX", "SLOTS", "PATH"]]
    for m in models:
        meta = m.get("metadata") or {}
        rows.append(
            [
                m["name"],
                m["source"],
                m["state"],
                str(meta.get("architecture") or "-"),
                str(meta.get("quantization") or "-"),
                _fmt_bytes(meta.get("file_size")),
                str(m["ctx_size"]),
                str(m["parallel"]),
                m["path"],
            ]
        )
    _table(rows, sys.stdout)
    return 0


def _fmt_idle(st: dict[str, Any], now: float) -> str:
    """Time since the last gateway request or start, and the idle TTL left (or pinned)."""
    if st["state"] != "ready":
        return "-"
    if st.get("in_flight"):
        idle = "busy"
    elif st.get("last_used") is not None:
        idle = _fmt_duration(max(0.0, now - st["last_used"]))
    else:
        idle = "unused"
    if st.get("pinned"):
        return f"{idle}, pinned"
    ttl = st.get("idle_ttl") or 0
    if ttl > 0 and st.get("last_used") is not None and not st.get("in_flight"):
        left = max(0.0, st["last_used"] + ttl - now)
        return f"{idle}, unload in {_fmt_duration(left)}"
    return idle


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
            "IN FLIGHT",
            "IDLE",
            "LAST ERROR",
        ]
    ]
    now = time.time()
    for st in status["models"]:
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
                _fmt_duration(st["uptime_seconds"]),
                str(st["restarts"]),
                slots,
                ctx,
                tps,
                _fmt_bytes(latest.get("rss_bytes")),
                str(st.get("in_flight", 0)),
                _fmt_idle(st, now),
                error[0][:60] if error else "",
            ]
        )
    _table(rows, sys.stdout)
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
    ttl = _fmt_duration(model["idle_ttl"]) if model.get("idle_ttl") else "never"
    gateway = "pinned" if model.get("pinned") else f"idle unload: {ttl}"
    print(f"{model['name']}: registered ({model['path']}; {gateway})")
    return 0


def _seconds(text: str) -> float:
    """argparse type: 0 or more seconds, by the config file's rule."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    try:
        return parse_seconds(value, zero_ok=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


ClientCommand = Callable[[argparse.Namespace, Client], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="llama-exporter",
        description="Run llama.cpp models on demand and watch them with Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("LLAMA_EXPORTER_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the control service")
    serve.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="YAML config (default: $LLAMA_EXPORTER_CONFIG, else built-in)",
    )
    serve.add_argument("--host", default=None, help="listen address (overrides the config)")
    serve.add_argument("--port", type=int, default=None, help="listen port (overrides the config)")
    serve.add_argument(
        "--watch-config",
        action="store_true",
        help="reload when the config file or the GGUF files in model_dirs change",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    def client_cmd(name: str, func: ClientCommand, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--url", default=None, help="service URL (default $LLAMA_EXPORTER_URL)")
        p.add_argument(
            "--token", default=None, help="API token (default $LLAMA_EXPORTER_API_TOKEN)"
        )
        p.set_defaults(client_func=func)
        return p

    client_cmd("models", cmd_models, "list known models")
    ps = client_cmd("ps", cmd_ps, "show running instances")
    ps.add_argument("--all", "-a", action="store_true", help="include stopped models")
    start = client_cmd("start", cmd_start, "start a model")
    start.add_argument("name")
    start.add_argument(
        "--wait", "-w", action="store_true", help="wait until ready, showing progress"
    )
    start.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (with --wait)")
    stop = client_cmd("stop", cmd_stop, "stop a model")
    stop.add_argument("name")
    logs = client_cmd("logs", cmd_logs, "show a model's llama-server output")
    logs.add_argument("name")
    logs.add_argument("--lines", "-n", type=int, default=100)
    add = client_cmd("add", cmd_add, "register a GGUF file as a model")
    add.add_argument("name")
    add.add_argument("path")
    add.add_argument("--ctx-size", type=int, default=None)
    add.add_argument("--parallel", type=int, default=None)
    add.add_argument(
        "--pinned",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never evicted nor unloaded when idle (default: the config's defaults)",
    )
    add.add_argument(
        "--idle-ttl",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="unload after this long without a request, 0 = never (default: defaults)",
    )
    add.add_argument(
        "--stop-drain",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="a stop waits this long for requests in flight (default: defaults)",
    )
    rm = client_cmd("rm", cmd_remove, "forget a model registered with `add`")
    rm.add_argument("name")
    client_cmd("reload", cmd_reload, "reload the service's config file (as SIGHUP does)")
    requests_cmd.add_parser(client_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llama-exporter` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        parser.error(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {args.log_level!r}")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if hasattr(args, "client_func"):
            func: ClientCommand = args.client_func
            return func(args, Client.from_env(args.url, args.token))
        result: int = args.func(args)
        return result
    except (ConfigError, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except ServiceUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
