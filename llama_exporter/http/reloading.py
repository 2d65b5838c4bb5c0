"""Config reload over HTTP and signals: the settings handlers read per request, the route
POST /api/v1/llama/reload, SIGHUP, --watch-config, and who takes a reloaded Config."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from llama_exporter.config.env import exposure_error
from llama_exporter.config.loader import load_config
from llama_exporter.config.settings import Config, ConfigError
from llama_exporter.http import auth, guard
from llama_exporter.http.api_json import ApiError
from llama_exporter.http.ws import STATUS_EVENT, WebSocketHub, make_event
from llama_exporter.metrics.collector import relabel_host
from llama_exporter.metrics.targets import TargetsWriter
from llama_exporter.reload.apply import Outcome, Reloader
from llama_exporter.reload.watch import watch

log = logging.getLogger(__name__)

RELOAD_PATH = "/api/v1/llama/reload"


@dataclass
class Live:
    """What request handlers read at each request and a reload replaces as one."""

    config: Config
    tokens: auth.Tokens
    policy: guard.GuardPolicy
    machine_names: tuple[str, ...] = ()  # looked up once (getfqdn may wait on DNS)


def live_settings(config: Config, listen_host: str, previous: Live | None = None) -> Live:
    """The tokens and the Host/Origin policy of config for a service on listen_host."""
    if previous is not None:
        names = previous.machine_names
    elif listen_host in guard.WILDCARD_HOSTS:
        names = tuple(sorted(guard.machine_names()))
    else:
        names = ()
    return Live(
        config,
        auth.Tokens(config.api_token, config.scrape_token),
        guard.build_policy(
            listen_host,
            allowed_hosts=config.allowed_hosts,
            allowed_origins=config.allowed_origins,
            machine_names=names,
        ),
        names,
    )


def exposure_check(listen_host: str) -> Callable[[Config], ConfigError | None]:
    """A reloaded file must not leave a service on listen_host (--host too) without a token."""

    def check(config: Config) -> ConfigError | None:
        return exposure_error(
            listen_host, config.api_token, config.allow_unauthenticated, file=config.source
        )

    return check


def new_reloader(config: Config, listen_host: str, **parts: object) -> Reloader:
    """The Reloader of a service: reads config.source again with check-config's loader."""
    source = config.source
    return Reloader(
        config,
        load=lambda: load_config(source),
        check=exposure_check(listen_host),
        **parts,  # type: ignore[arg-type]
    )


def connect(
    reloader: Reloader,
    live: Live,
    listen_host: str,
    *,
    takers: list[Callable[[Config], None]],
    hub: WebSocketHub,
    targets: TargetsWriter,
    metrics: CollectorRegistry,
) -> None:
    """Who takes a reloaded Config, and the event every outcome publishes."""

    def take_http(config: Config) -> None:
        fresh = live_settings(config, listen_host, live)
        live.config, live.tokens, live.policy = fresh.config, fresh.tokens, fresh.policy
        hub.set_max_clients(config.websocket_max_clients)
        targets.reconfigure(config.targets_dir, config.target_labels, _address(config))
        relabel_host(metrics, config.host_label)

    reloader.on_config(take_http)
    for take in takers:
        reloader.on_config(take)

    def publish(outcome: Outcome) -> None:
        hub.publish(make_event(STATUS_EVENT, "", {"reload": outcome.to_json()}))

    reloader.on_outcome(publish)


def _address(config: Config) -> str | None:
    return config.targets.address if config.targets else None


def handler(reloader: Reloader) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /api/v1/llama/reload: 200 with what changed, 400 naming file, key and fix."""

    async def reload(request: web.Request) -> web.Response:
        # Shielded: a client that hangs up must not leave a reload half-applied.
        outcome = await asyncio.shield(reloader.reload())
        body = outcome.to_json()
        if not outcome.ok:
            error = body.pop("error")
            details = {k: error[k] for k in ("file", "key", "line", "fix")}
            raise ApiError(400, error["message"], reload=body, **details)
        return web.json_response(body)

    return reload


def lifecycle(
    reloader: Reloader, *, sighup: bool, watch_config: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: SIGHUP and the file watcher while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if sighup:
            loop.add_signal_handler(signal.SIGHUP, reloader.trigger, "SIGHUP")
        watcher = None
        if watch_config:
            watcher = asyncio.create_task(
                watch(
                    reloader.config.source,
                    lambda: reloader.config.model_dirs,
                    reloader.trigger,
                ),
                name="watch-config",
            )
        yield
        if sighup:
            loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await reloader.close()

    return run
