"""Liveness (GET /healthz) and readiness (GET /readyz), separate as Kubernetes probes expect.

Liveness answers while the event loop does: restarting the service would not fix
anything readiness finds. Readiness is what the service needs to do its work: the
config and the model list loaded, a writable state folder (models.json, instances.json,
the logs), and a supervisor that takes starts (started up, not shutting down).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from llama_exporter.http.api_json import ApiError
from llama_exporter.http.keys import CONFIG, SUPERVISOR

log = logging.getLogger(__name__)

OK = "ok"


@dataclass
class Startup:
    """How far the app's start-up went (set by app.py's lifecycle)."""

    config_loaded: bool = False  # the model list (config, model_dirs, models.json) is read
    supervisor_started: bool = False  # left-over instances dealt with: starts are taken


STARTUP = web.AppKey("startup", Startup)  # here, not in keys.py: keys.py is imported above


def readiness(
    startup: Startup, *, state_dir_error: str | None, shutting_down: bool
) -> dict[str, str]:
    """Each check's verdict: "ok", or why it is not ready (pure)."""
    if startup.supervisor_started and not shutting_down:
        supervisor = OK
    elif shutting_down:
        supervisor = "the service is shutting down"
    else:
        supervisor = "starting up (left-over instances not yet dealt with)"
    return {
        "config": OK if startup.config_loaded else "the model list is not loaded yet",
        "state_dir": OK if state_dir_error is None else f"not writable: {state_dir_error}",
        "supervisor": supervisor,
    }


def probe_writable(folder: Path) -> str | None:
    """None if a file can be created, written and removed in folder, else why not (blocking)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".readyz-") as probe:
            probe.write(b"1")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the service answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 with every check "ok", else 503 naming the checks that fail."""
    state_dir = request.app[CONFIG].state_dir
    error = await asyncio.to_thread(probe_writable, state_dir)
    if error is not None:  # the path goes to the log, not to an unauthenticated client
        log.warning("readiness: state folder %s is not writable: %s", state_dir, error)
    checks = readiness(
        request.app[STARTUP],
        state_dir_error=error,
        shutting_down=request.app[SUPERVISOR].shutting_down,
    )
    failing = {name: why for name, why in checks.items() if why != OK}
    if failing:
        why = "; ".join(f"{name}: {reason}" for name, reason in failing.items())
        raise ApiError(503, f"not ready: {why}", checks=checks)
    return web.json_response({"status": "ready", "checks": checks})


def add_routes(app: web.Application) -> None:
    """GET /healthz and GET /readyz (no token needed: auth.PUBLIC_PATHS)."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
