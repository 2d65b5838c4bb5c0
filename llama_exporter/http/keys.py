"""The typed keys of the aiohttp application's state (what the handlers share)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from llama_exporter.catalog.registry import Registry
from llama_exporter.config.settings import Config
from llama_exporter.gateway.routes import Gateway
from llama_exporter.http.reloading import Live
from llama_exporter.http.ws import WebSocketHub
from llama_exporter.metrics.collector import StartDurationHistogram
from llama_exporter.monitoring.store import MetricsStore
from llama_exporter.reload.apply import Reloader
from llama_exporter.requestlog.log import RequestLog
from llama_exporter.supervision.supervisor import Supervisor

CONFIG = web.AppKey("config", Config)  # as started; what a reload changes is in LIVE
LIVE = web.AppKey("live", Live)  # the current config, tokens and Host/Origin policy
RELOADER = web.AppKey("reloader", Reloader)
REGISTRY = web.AppKey("registry", Registry)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
STORE = web.AppKey("store", MetricsStore)
HUB = web.AppKey("hub", WebSocketHub)
METRICS = web.AppKey("metrics", CollectorRegistry)
HISTOGRAM = web.AppKey("start_histogram", StartDurationHistogram)
GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_LOG = web.AppKey("request_log", RequestLog)  # absent when request_log.enabled is false
