"""HTTP control API under /api/v1/llama/: routes and JSON views (errors: api_json.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from llama_exporter.catalog import registry as reg
from llama_exporter.gateway.routes import Gateway
from llama_exporter.http import auth, openapi
from llama_exporter.http.api_json import ApiError, body_field, json_body, query_flag
from llama_exporter.http.keys import (
    GATEWAY,
    HISTOGRAM,
    HUB,
    LIVE,
    METRICS,
    REGISTRY,
    RELOADER,
    STORE,
    SUPERVISOR,
)
from llama_exporter.http.ws import METRICS_EVENT, STATUS_EVENT, Event, make_event
from llama_exporter.metrics.exposition import render
from llama_exporter.metrics.targets import render_file_sd
from llama_exporter.monitoring.store import HostSample
from llama_exporter.redact import redact_args, redact_lines, redact_text, secret_values
from llama_exporter.states import COUNTS_AGAINST_CAP, InstanceStatus, State

PREFIX = "/api/v1/llama"
MAX_LOG_LINES = 10_000

# -- JSON views ---------------------------------------------------------------


def status_json(
    status: InstanceStatus, now: float, gateway: Gateway | None = None
) -> dict[str, Any]:
    """One instance's status as the API shows it (with the gateway's view of its use)."""
    use = (
        gateway.status_fields(status.model)
        if gateway is not None
        else {"pinned": False, "idle_ttl": 0.0, "in_flight": 0, "last_used": None}
    )
    return {
        "model": status.model,
        "state": str(status.state),
        "since": status.since,
        "pid": status.pid,
        "port": status.port,
        "url": status.base_url,
        "uptime_seconds": status.uptime(now),
        "restarts": status.restarts,
        "retries": status.retries,
        "last_error": None if status.last_error is None else redact_text(status.last_error),
        "next_retry_at": status.next_retry_at,
        **use,
    }


def host_json(host: HostSample | None) -> dict[str, Any] | None:
    """The host's CPU and memory as the API shows them (None before the first sample)."""
    return None if host is None else dataclasses.asdict(host)


def model_json(model: reg.Model, status: InstanceStatus) -> dict[str, Any]:
    """A registry entry with its metadata and state."""
    cfg = model.config
    info = model.info
    return {
        "name": cfg.name,
        "source": model.source,
        "path": str(cfg.path),
        "ctx_size": cfg.ctx_size,
        "parallel": cfg.parallel,
        "args": redact_args(cfg.args),
        "autostart": cfg.autostart,
        "pinned": cfg.pinned,
        "idle_ttl": cfg.idle_ttl,
        "stop_drain": cfg.stop_drain,
        "state": str(status.state),
        "metadata": None if info is None else dataclasses.asdict(info),
        "metadata_error": model.error,
    }


# -- handlers -----------------------------------------------------------------


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    request.app[REGISTRY].get(name)  # 404 for an unknown model
    return name


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the service's own metrics."""
    body = render(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_models(request: web.Request) -> web.Response:
    """Every model the registry knows, with metadata and state."""
    supervisor = request.app[SUPERVISOR]
    models = [model_json(m, supervisor.status(m.config.name)) for m in request.app[REGISTRY].all()]
    return web.json_response({"models": models})


async def add_model(request: web.Request) -> web.Response:
    """Register a GGUF file as a model (persisted across restarts)."""
    body = await json_body(request)
    known = {"name", "path", "ctx_size", "parallel", "args", "env"}
    known |= {"pinned", "idle_ttl", "stop_drain"}  # checked by the registry, as in the config
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(
            400, f"unknown field {unknown[0]!r}; known: {sorted(known)}", field=unknown[0]
        )
    args = body_field(body, "args", list) or []
    if not all(isinstance(a, str) for a in args):
        raise ApiError(400, "field 'args' must be a list of strings", field="args")
    env = body_field(body, "env", dict) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ApiError(400, "field 'env' must map strings to strings", field="env")
    model = await request.app[REGISTRY].aadd(
        body_field(body, "name", str, required=True),
        Path(body_field(body, "path", str, required=True)),
        ctx_size=body_field(body, "ctx_size", int),
        parallel=body_field(body, "parallel", int),
        args=tuple(args),
        env=env,
        pinned=body.get("pinned"),
        idle_ttl=body.get("idle_ttl"),
        stop_drain=body.get("stop_drain"),
    )
    status = request.app[SUPERVISOR].status(model.config.name)
    return web.json_response(model_json(model, status), status=201)


async def delete_model(request: web.Request) -> web.Response:
    """Forget an API-registered model (409 while it runs)."""
    name = _name(request)
    status = request.app[SUPERVISOR].status(name)
    if status.state in COUNTS_AGAINST_CAP:
        raise ApiError(409, f"model {name!r} is {status.state}: stop it first")
    removal = request.app[REGISTRY].begin_remove(name)  # gone from the list from here on
    request.app[SUPERVISOR].forget(name)
    request.app[STORE].forget(name)  # no series of a deleted model linger in /metrics
    request.app[HISTOGRAM].forget(name)
    await asyncio.shield(removal)  # models.json is written in a thread
    return web.json_response({"deleted": name})


async def start_model(request: web.Request) -> web.Response:
    """Start a model; with ?wait=true answer when it is ready or has failed."""
    name = _name(request)
    wait = query_flag(request, "wait")
    supervisor = request.app[SUPERVISOR]
    gateway = request.app[GATEWAY]
    # An explicit start counts as use; ?evict=true makes room like a gateway request.
    status = await gateway.scheduler.start_for_api(name, evict=query_flag(request, "evict"))
    if wait:
        status = await supervisor.wait_settled(name)
        if status.state is not State.READY:
            raise ApiError(
                502,
                f"model {name!r} did not start: {status.last_error or status.state}",
                instance=status_json(status, time.time(), gateway),
            )
    code = 200 if status.state is State.READY else 202
    return web.json_response(status_json(status, time.time(), gateway), status=code)


async def stop_model(request: web.Request) -> web.Response:
    """Stop a model (SIGTERM, then SIGKILL after the grace period)."""
    name = _name(request)
    # Shielded: a client that hangs up (or a shutdown) must not leave it half-stopped.
    status = await asyncio.shield(request.app[SUPERVISOR].stop(name))
    return web.json_response(status_json(status, time.time(), request.app[GATEWAY]))


async def status(request: web.Request) -> web.Response:
    """Every model's state, pid, port, uptime, restarts, last error; running count and cap."""
    supervisor = request.app[SUPERVISOR]
    now = time.time()
    return web.json_response(
        {
            "models": [status_json(s, now, request.app[GATEWAY]) for s in supervisor.statuses()],
            "running": supervisor.running_count,
            "cap": supervisor.cap,
            "host": host_json(request.app[STORE].host),
        }
    )


async def logs(request: web.Request) -> web.Response:
    """The last N lines of a model's llama-server output."""
    name = _name(request)
    raw = request.query.get("lines", "100")
    try:
        lines = int(raw)
    except ValueError:
        lines = -1
    if not 1 <= lines <= MAX_LOG_LINES:
        raise ApiError(
            400, f"lines must be an integer from 1 to {MAX_LOG_LINES}, got {raw!r}", field="lines"
        )
    tail = await asyncio.to_thread(request.app[SUPERVISOR].log_tail, name, lines)
    # Lines written before redaction existed (or by llama-server itself) are checked again.
    cfg = request.app[REGISTRY].get(name).config
    secrets = secret_values(cfg.args, cfg.env, [cfg.api_key])
    return web.json_response({"model": name, "lines": redact_lines(tail, secrets)})


async def model_metrics(request: web.Request) -> web.Response:
    """Latest live values of a model and its recent history."""
    name = _name(request)
    store = request.app[STORE]
    latest = store.latest(name)
    return web.json_response(
        {
            "model": name,
            "state": str(request.app[SUPERVISOR].status(name).state),
            "latest": None if latest is None else latest.to_dict(),
            "history": [snap.to_dict() for snap in store.history(name)],
        }
    )


async def targets(request: web.Request) -> web.Response:
    """Prometheus HTTP service discovery: one target group per ready instance."""
    config = request.app[LIVE].config
    groups = render_file_sd(
        request.app[SUPERVISOR].statuses(),
        labels=config.target_labels,
        address=config.targets.address if config.targets else None,
    )
    return web.json_response(groups)


def initial_events(app: web.Application, model: str | None) -> Iterable[Event]:
    """What a newly connected WebSocket client is sent: current status and metrics."""
    now = time.time()
    store = app[STORE]
    last = app[RELOADER].counts.last
    if model is None and last is not None and not last.ok:  # the page shows it until fixed
        yield make_event(STATUS_EVENT, "", {"reload": last.to_json()})
    for st in app[SUPERVISOR].statuses():
        if model is not None and st.model != model:
            continue
        yield make_event(STATUS_EVENT, st.model, status_json(st, now, app[GATEWAY]))
        latest = store.latest(st.model)
        if latest is not None:
            yield make_event(METRICS_EVENT, st.model, latest.to_dict())


@auth.websocket_auth
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Live llama-metrics:update and llama-status:update events (?model=NAME filters)."""
    app = request.app
    tokens = app[LIVE].tokens

    def known(name: str) -> bool:
        try:
            app[REGISTRY].get(name)
        except reg.UnknownModel:
            return False
        return True

    return await app[HUB].handle(
        request,
        lambda m: initial_events(app, m),
        known,
        authenticate=lambda ws: auth.authenticate_websocket(request, ws, tokens),
    )


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3 description of every route."""
    return web.json_response(openapi.describe())


def add_routes(app: web.Application) -> None:
    """Register every route of the service (each described in openapi.py)."""
    app.router.add_get("/metrics", metrics)
    app.router.add_get(f"{PREFIX}/models", list_models)
    app.router.add_post(f"{PREFIX}/models", add_model)
    app.router.add_delete(f"{PREFIX}/models/{{name}}", delete_model)
    app.router.add_post(f"{PREFIX}/models/{{name}}/start", start_model)
    app.router.add_post(f"{PREFIX}/models/{{name}}/stop", stop_model)
    app.router.add_get(f"{PREFIX}/models/{{name}}/logs", logs)
    app.router.add_get(f"{PREFIX}/models/{{name}}/metrics", model_metrics)
    app.router.add_get(f"{PREFIX}/status", status)
    app.router.add_get(f"{PREFIX}/targets", targets)
    app.router.add_get(f"{PREFIX}/ws", websocket)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi_json)
