"""Wiring: build every component, connect their events, run background work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from llama_exporter.catalog.gguf_meta import GGUFInfoCache
from llama_exporter.catalog.registry import Registry
from llama_exporter.config.settings import Config
from llama_exporter.gateway.routes import Gateway
from llama_exporter.http import api, api_json, auth, guard, health, keys, reloading, requests_api
from llama_exporter.http.ws import (
    METRICS_EVENT,
    REQUEST_EVENT,
    STATUS_EVENT,
    WebSocketHub,
    make_event,
)
from llama_exporter.memory.book import MemoryBook
from llama_exporter.metrics.collector import StartDurationHistogram, WithHost, build_registry
from llama_exporter.metrics.targets import TargetsWriter
from llama_exporter.monitoring.derive import ModelSnapshot
from llama_exporter.monitoring.poller import Poller
from llama_exporter.monitoring.store import MetricsStore
from llama_exporter.reload.metrics import ReloadMetrics
from llama_exporter.requestlog.log import RequestLog
from llama_exporter.requestlog.record import Record
from llama_exporter.states import InstanceStatus
from llama_exporter.supervision.instance_key import load_or_create_instance_key
from llama_exporter.supervision.process import SpawnFn
from llama_exporter.supervision.supervisor import Supervisor
from llama_exporter.web import static_routes as page

log = logging.getLogger(__name__)


def _log_failure(task: asyncio.Task[Any]) -> None:
    """Log a background task that died with an error (it would otherwise go unseen)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def create_app(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    spawn: SpawnFn | None = None,
    sighup: bool = False,
    watch_config: bool = False,
) -> web.Application:
    """The aiohttp application with every component wired; started by cleanup_ctx.

    sighup: reload the config on SIGHUP (serve); watch_config: and on each change of the
    file or of the GGUF files in model_dirs.
    """
    listen_host = host or config.host
    live = reloading.live_settings(config, listen_host)
    # Outermost first: errors become JSON, then Host/Origin/body checks, then the token.
    # Both read the live settings at each request: a reload replaces them.
    app = web.Application(
        middlewares=[
            api_json.error_middleware,
            guard.guard_middleware(lambda: live.policy, api_json.refusal_response),
            auth.auth_middleware(lambda: live.tokens, api_json.refusal_response),
        ],
        # Gateway bodies may be larger than aiohttp's 1 MiB default (gateway.max_body_bytes).
        client_max_size=max(1024**2, config.gateway.max_body_bytes + 1),
    )
    registry = Registry(config, gguf_cache=GGUFInfoCache())  # loaded at start-up, off the loop
    histogram = StartDurationHistogram(host=config.host_label)
    # Read (or made, on the first start) before the loop runs: serve calls this first.
    key = load_or_create_instance_key(config.state_dir) if config.instance_auth else None
    supervisor = Supervisor(
        config,
        registry.model_source(),
        spawn=spawn,
        observe_start_duration=histogram.observe,
        instance_host=config.instance_host,
        instance_key=key,
        # every ready load's buffer sizes become the model's learned figure (in a thread)
        learn=MemoryBook(config.state_dir).learn_lines,
    )
    store = MetricsStore(config.poll.history)
    request_log = (
        RequestLog(config.request_log, config.state_dir) if config.request_log.enabled else None
    )
    gateway = Gateway(config, supervisor, requests=request_log)
    hub = WebSocketHub(max_clients=config.websocket_max_clients)
    address = config.targets.address if config.targets else None
    targets = TargetsWriter(config.targets_dir, config.target_labels, address, supervisor.statuses)

    app[keys.CONFIG] = config
    app[keys.REGISTRY] = registry
    app[keys.SUPERVISOR] = supervisor
    app[keys.STORE] = store
    app[keys.HUB] = hub
    app[keys.HISTOGRAM] = histogram
    app[keys.GATEWAY] = gateway
    if request_log is not None:
        app[keys.REQUEST_LOG] = request_log
    startup = app[health.STARTUP] = health.Startup()
    app[keys.METRICS] = build_registry(
        store=store,
        statuses=supervisor.statuses,
        counters=supervisor.counters,
        models=registry.model_infos,
        running=lambda: supervisor.running_count,
        cap=lambda: supervisor.cap,
        histogram=histogram,
        host=config.host_label,
    )
    app[keys.METRICS].register(WithHost(gateway.metrics, config.host_label))

    def forget(name: str) -> None:  # what a removed model leaves behind, as DELETE does
        store.forget(name)
        histogram.forget(name)

    reloader = reloading.new_reloader(
        config, listen_host, registry=registry, supervisor=supervisor, forget=forget
    )
    app[keys.LIVE] = live
    app[keys.RELOADER] = reloader
    app[keys.METRICS].register(WithHost(ReloadMetrics(lambda: reloader.counts), config.host_label))
    health.add_routes(app)
    api.add_routes(app)
    app.router.add_post(reloading.RELOAD_PATH, reloading.handler(reloader))
    gateway.add_routes(app)
    requests_api.add_routes(app)
    page.add_routes(app)

    def publish_metrics(snap: ModelSnapshot) -> None:
        if hub.client_count:  # to_dict() costs more than the rest of a poll's bookkeeping
            hub.publish(make_event(METRICS_EVENT, snap.model, snap.to_dict()))

    def publish_status(status: InstanceStatus) -> None:
        hub.publish(
            make_event(STATUS_EVENT, status.model, api.status_json(status, time.time(), gateway))
        )

    def publish_request(record: Record) -> None:
        if hub.client_count:  # nothing to build when nobody listens
            hub.publish(make_event(REQUEST_EVENT, record.model, record.to_json()))

    async def request_log_lifecycle(app: web.Application) -> AsyncIterator[None]:
        # First in, last out: the gateway's requests are over when the log closes.
        if request_log is None:
            yield
            return
        request_log.start()
        unsubscribe = request_log.subscribe(publish_request)
        yield
        unsubscribe()
        await request_log.close()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await registry.aload()  # model folders and models.json are read in a thread
        startup.config_loaded = True
        poller = Poller(config, store, in_flight=gateway.scheduler.in_flight_of)
        reloading.connect(
            reloader,
            live,
            listen_host,
            takers=[supervisor.reconfigure, gateway.reconfigure, poller.reconfigure],
            hub=hub,
            targets=targets,
            metrics=app[keys.METRICS],
        )
        poller.start()  # host gauges (and the task count) from the start, not the first ready
        unsubscribe = [
            supervisor.subscribe(targets.on_status),
            supervisor.subscribe(poller.on_status),
            supervisor.subscribe(publish_status),
            store.subscribe(publish_metrics),
        ]
        await supervisor.recover()
        startup.supervisor_started = True
        targets.on_status(None)
        targets.write_self(host or config.host, port or config.port)
        background = [
            asyncio.create_task(registry.load_metadata(), name="gguf-metadata"),
            asyncio.create_task(supervisor.start_autostart(), name="autostart"),
        ]
        for task in background:
            task.add_done_callback(_log_failure)
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for undo in unsubscribe:
            undo()
        await poller.close()
        targets.on_status(None)
        await targets.flush()  # the last state on disk before the loop ends

    async def begin_shutdown(app: web.Application) -> None:
        # on_shutdown runs before aiohttp waits for in-flight requests: stop the
        # instances now, so a WebSocket client or a waiting start cannot delay it.
        await hub.close()
        await supervisor.shutdown()

    app.cleanup_ctx.append(request_log_lifecycle)
    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(gateway.lifecycle)
    app.cleanup_ctx.append(reloading.lifecycle(reloader, sighup=sighup, watch_config=watch_config))
    app.on_shutdown.append(begin_shutdown)
    return app
