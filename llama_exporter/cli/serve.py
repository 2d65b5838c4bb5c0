"""The `serve` command: one service per state folder, its port bound first, then the app."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import IO

from llama_exporter import __version__
from llama_exporter.config.env import exposure_error, instance_exposure_warning
from llama_exporter.config.loader import load_config
from llama_exporter.supervision.instance_key import InstanceKeyError

log = logging.getLogger(__name__)


def _config_path(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    env = os.environ.get("LLAMA_EXPORTER_CONFIG")
    return Path(env) if env else None


class ServeError(Exception):
    """The service cannot start (its state folder is in use, its port is taken, ...)."""


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold <state_dir>/lock for the life of the process: one service per state folder.

    A second service on the same folder would kill the first one's llama-servers as
    "left over from a previous run" and overwrite its target files.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ServeError(
            f"another llama-exporter (pid {holder}) is using {state_dir}: stop it, or give "
            "this one another state_dir (config) or LLAMA_EXPORTER_STATE_DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind the service's port before anything starts, so a taken port fails first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror} (is another service using that "
            "port? pick another with --port or listen.port)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the control service until SIGTERM/SIGINT, then stop every instance."""
    from aiohttp import web

    from llama_exporter.http.app import create_app

    config = load_config(_config_path(args.config))
    host = args.host or config.host
    port = args.port or config.port
    if args.host:
        exposed = exposure_error(
            host, config.api_token, config.allow_unauthenticated, where="--host"
        )
        if exposed is not None:
            raise exposed
    lock = lock_state_dir(config.state_dir)
    sock = listen_socket(host, port)
    try:
        if not config.instance_auth:
            log.warning(
                "%s",
                instance_exposure_warning(config.instance_host, False)
                or "instance_auth is false: llama-server instances answer anyone on this host "
                "without a key",
            )
        try:  # creates <state_dir>/instance.key on the first start (before the loop runs)
            app = create_app(
                config, host=host, port=port, sighup=True, watch_config=args.watch_config
            )
        except InstanceKeyError as exc:
            raise ServeError(str(exc)) from None
        log.info(
            "llama-exporter %s on http://%s:%d (config: %s, cap %d, state %s)",
            __version__,
            host,
            port,
            config.source or "built-in default",
            config.max_parallel,
            config.state_dir,
        )
        # handler_cancellation: a client that hangs up cancels its gateway request, which
        # closes the upstream connection so llama-server frees the slot.
        web.run_app(app, sock=sock, print=None, access_log=None, handler_cancellation=True)
    finally:
        sock.close()
        lock.close()
    return 0
