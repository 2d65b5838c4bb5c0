"""Command line: `serve`, `check-config`, and client commands for a running service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llama_exporter import __version__
from llama_exporter.cli import requests_cmd
from llama_exporter.cli.client import Client, ClientError, ServiceUnreachable
from llama_exporter.cli.commands import (
    EXIT_USAGE,
    ClientCommand,
    cmd_add,
    cmd_logs,
    cmd_models,
    cmd_ps,
    cmd_reload,
    cmd_remove,
    cmd_start,
    cmd_stop,
)
from llama_exporter.cli.serve import ServeError, cmd_serve
from llama_exporter.config.env import instance_exposure_warning
from llama_exporter.config.loader import load_config
from llama_exporter.config.settings import ConfigError, parse_seconds
from llama_exporter.config.sizes import format_size
from llama_exporter.memory.budgets import BudgetError, budgets_for


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file with the same code `serve` uses; start nothing."""
    config = load_config(args.file)
    try:
        budgets = budgets_for(config.memory_budget, config.memory_headroom)
    except BudgetError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    exposed = instance_exposure_warning(config.instance_host, config.instance_auth)
    if exposed is not None:
        print(f"{args.file}: warning: {exposed}", file=sys.stderr)
    names = ", ".join(m.name for m in config.models) or "none"
    memory = (
        ", ".join(f"{device} {format_size(size)}" for device, size in budgets.items())
        if budgets
        else "not counted (no memory_budget)"
    )
    print(
        f"{args.file}: OK ({len(config.models)} model(s): {names}; cap {config.max_parallel}; "
        f"memory {memory}; host label {config.host_label}; llama-server {config.llama_server})"
    )
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
