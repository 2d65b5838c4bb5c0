"""The gateway's HTTP side: OpenAI routes, /upstream passthrough, the summary, errors.

Errors are answered in OpenAI's format, {"error": {"message", "type", "code"}}, so
OpenAI clients show them as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from llama_exporter.config.settings import Config, ModelConfig, serves_embeddings
from llama_exporter.gateway import proxy
from llama_exporter.gateway.body import model_from_body, read_body
from llama_exporter.gateway.metrics import RequestMetrics
from llama_exporter.gateway.policy import ttl_left
from llama_exporter.gateway.recording import admitted, fill, wants_stream
from llama_exporter.gateway.scheduler import Admission, GatewayError, Scheduler
from llama_exporter.gateway.sse import StreamWatch, Usage
from llama_exporter.requestlog.log import RequestLog
from llama_exporter.requestlog.record import Record, captured
from llama_exporter.states import ShuttingDown, UnknownModel
from llama_exporter.supervision.ledger import ModelTooBig
from llama_exporter.supervision.supervisor import Supervisor

log = logging.getLogger(__name__)

EMBEDDINGS = "/v1/embeddings"
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", EMBEDDINGS)
UPSTREAM_ENDPOINT = "/upstream"
SUMMARY_PATH = "/api/v1/llama/gateway"


def upstream_path(raw_path: str) -> str:
    """The llama-server path and query of /upstream/{model}/{path}, still percent-encoded.

    Decoded, %3F would become a query and %2F a new path segment. Model names have no
    slash, so the fourth part of the split is everything after the model.
    """
    parts = raw_path.split("/", 3)
    return "/" + (parts[3] if len(parts) > 3 else "")


def error_response(err: GatewayError) -> web.Response:
    """err as OpenAI's error JSON."""
    body = {"error": {"message": err.message, "type": err.kind, "code": err.code}}
    return web.json_response(body, status=err.status, headers=err.headers)


class Gateway:
    """One OpenAI-compatible endpoint for every model: routes, scheduler, proxy, metrics."""

    def __init__(
        self,
        config: Config,
        supervisor: Supervisor,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        requests: RequestLog | None = None,
    ) -> None:
        self.config = config
        self.requests = requests  # the request log (None: off)
        self._sup = supervisor
        self._clock = clock
        self._mono = monotonic
        self.metrics = RequestMetrics(
            in_flight=lambda: dict(self.scheduler.in_flight),
            queue_length=lambda: self.scheduler.queue_length,
            models=supervisor.models.names,
            lifecycle=supervisor.lifecycle_counts,
            endpoints=(*OPENAI_ROUTES, UPSTREAM_ENDPOINT),
        )
        self.scheduler = Scheduler(
            supervisor, config.gateway, self.metrics, clock=clock, monotonic=monotonic
        )
        self._session: aiohttp.ClientSession | None = None

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config (gateway.*; per-model settings are read at each use)."""
        self.config = config
        self.scheduler.reconfigure(config.gateway)

    # -- wiring ------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register the gateway's routes on app."""
        for path in OPENAI_ROUTES:
            app.router.add_post(path, self._openai_handler(path))
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_route("*", "/upstream/{model}/{path:.*}", self.upstream)
        app.router.add_get(SUMMARY_PATH, self.summary_handler)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the upstream client session and the idle-unload loop."""
        self._session = proxy.new_session()
        idle = asyncio.create_task(self.scheduler.run_idle_loop(), name="gateway-idle")
        yield
        idle.cancel()
        await asyncio.gather(idle, return_exceptions=True)
        await self.scheduler.close()
        await self._session.close()

    # -- views -------------------------------------------------------------------------

    def status_fields(self, name: str) -> dict[str, Any]:
        """What the gateway adds to a model's status JSON."""
        model = self._model_or_none(name)
        return {
            "pinned": model.pinned if model else False,
            "idle_ttl": model.idle_ttl if model else 0.0,
            "in_flight": self.scheduler.in_flight_of(name),
            "last_used": self.scheduler.last_used.get(name),
        }

    def ttl_left(self, name: str, ready_at: float | None) -> float | None:
        """Seconds until a ready model is unloaded for idleness, None if it never is."""
        model = self._model_or_none(name)
        if model is None or model.pinned:
            return None
        last = self.scheduler.last_used.get(name, ready_at or self._clock())
        return ttl_left(last, model.idle_ttl, self._clock())

    def summary(self) -> dict[str, Any]:
        """The queue and, per model, requests in flight, queued, last minute, TTFT p50/p95."""
        now = self._mono()
        models: dict[str, Any] = {}
        for name in self._sup.models.names():
            window = self.metrics.window(name, now)
            models[name] = {
                "in_flight": self.scheduler.in_flight_of(name),
                "queued": self.scheduler.queued(name),
                "requests_last_minute": window.requests,
                "ttft_p50_seconds": window.ttft_p50,
                "ttft_p95_seconds": window.ttft_p95,
            }
        return {
            "queue_length": self.scheduler.queue_length,
            "max_queue": self.config.gateway.max_queue,
            "when_full": self.config.gateway.when_full,
            "models": models,
        }

    def _model_or_none(self, name: str) -> ModelConfig | None:
        try:
            return self._sup.models.get(name)
        except KeyError:
            return None

    # -- handlers ----------------------------------------------------------------------

    def _openai_handler(self, path: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            arrived = self._mono()
            model = ""  # counted under the model once it is known
            try:
                body = await read_body(request, self.config.gateway.max_body_bytes)
                name, stream = model_from_body(body)
                self._known(name)  # an unknown name stays out of the metrics' labels
                model = name
                if path == EMBEDDINGS:
                    self._check_embeddings(model)
            except GatewayError as err:
                self.metrics.request_done(model, path, err.status, arrived, self._mono())
                self._log_refused(request, model, path, err, arrived)
                return error_response(err)
            return await self._serve(request, model, path, path, body, arrived, stream)

        handler.__doc__ = f"POST {path}: routed by the body's model, loaded on demand."
        return handler

    async def upstream(self, request: web.Request) -> web.StreamResponse:
        """Any method on /upstream/{model}/{path}: passed to that model's llama-server."""
        arrived = self._mono()
        name = request.match_info["model"]
        try:
            self._known(name)
            body = await read_body(request, self.config.gateway.max_body_bytes)
        except GatewayError as err:
            self.metrics.request_done("", UPSTREAM_ENDPOINT, err.status, arrived, self._mono())
            self._log_refused(request, "", UPSTREAM_ENDPOINT, err, arrived)
            return error_response(err)
        path = upstream_path(request.raw_path)
        stream = wants_stream(body)  # any body; the log's guess until the answer shows
        return await self._serve(request, name, UPSTREAM_ENDPOINT, path, body, arrived, stream)

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models: every known model in OpenAI's list format, with its state."""
        data = []
        for status in self._sup.statuses():
            data.append(
                {
                    "id": status.model,
                    "object": "model",
                    "created": int(status.ready_at or status.since),
                    "owned_by": "llama-exporter",
                    "state": str(status.state),
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def summary_handler(self, request: web.Request) -> web.Response:
        """GET /api/v1/llama/gateway: the queue and per-model request figures."""
        return web.json_response(self.summary())

    # -- the request path ----------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        model: str,
        endpoint: str,
        upstream_path: str,
        body: bytes,
        arrived: float,
        stream: bool = False,
    ) -> web.StreamResponse:
        code: int = 500
        lease = None
        watch = StreamWatch(arrived)
        usage = None
        self.metrics.request_arrived(model, arrived)
        record = self._log_begin(request, model, endpoint, body, arrived, stream)
        admission = Admission()
        outcome: proxy.Outcome | None = None
        failure: GatewayError | None = None
        try:
            lease = await self.scheduler.acquire(model, admission)
            if record is not None:
                admitted(record, admission)
            if self._session is None:
                raise GatewayError(503, "the gateway is not running", "server_error", "stopped")
            url = f"{lease.status.base_url}{upstream_path}"
            capture = self.requests.capture_limit(model) if self.requests is not None else 0
            response, outcome = await proxy.forward(
                request, self._session, url, body, lease.status.api_key, watch, self._mono, capture
            )
            code, usage = outcome.code, outcome.usage
            return response
        except GatewayError as err:
            failure = err
        except UnknownModel:  # deleted from the registry while the request waited
            failure = self._not_found(model)
        except ModelTooBig as exc:
            failure = GatewayError(400, str(exc), "invalid_request_error", "model_too_big")
        except ShuttingDown:
            failure = GatewayError(
                503, "the service is shutting down", "server_error", "shutting_down"
            )
        except proxy.UpstreamUnreachable as exc:
            failure = GatewayError(
                502,
                f"llama-server for model {model!r} did not answer: {exc}",
                "server_error",
                "upstream_unreachable",
            )
        except asyncio.CancelledError:
            code = proxy.CLIENT_CLOSED
            raise
        finally:
            if lease is not None:
                lease.release()
            if failure is not None:
                code = failure.status
            self._observe(model, watch, usage)
            now = self._mono()
            self.metrics.request_done(model, endpoint, code, arrived, now)
            if record is not None and self.requests is not None:
                fill(record, code, now - arrived, admission, watch, outcome, failure)
                self.requests.end(record)
        assert failure is not None  # every other way out returned or raised
        return error_response(failure)

    # -- the request log ---------------------------------------------------------------

    def _log_begin(
        self,
        request: web.Request,
        model: str,
        endpoint: str,
        body: bytes,
        arrived: float,
        stream: bool = False,
    ) -> Record | None:
        """A request in flight in the log (None when the log is off)."""
        if self.requests is None:
            return None
        wall = self._clock() - (self._mono() - arrived)  # arrival in unix time
        record = self.requests.begin(
            model,
            endpoint,
            arrived=wall,
            stream=stream,
            client=request.remote or "",
        )
        limit = self.requests.capture_limit(model)
        if limit and body:  # (refused before routing: no body is passed, none kept)
            record.request_body = captured(body, limit)
        return record

    def _log_refused(
        self, request: web.Request, model: str, endpoint: str, err: GatewayError, arrived: float
    ) -> None:
        """A request answered before it was routed (bad body, unknown model): logged ended."""
        record = self._log_begin(request, model, endpoint, b"", arrived)
        if record is not None and self.requests is not None:
            record.status, record.error_type, record.error_message = (
                err.status, err.kind, err.message,
            )  # fmt: skip
            record.duration_s = self._mono() - arrived
            self.requests.end(record)

    def _observe(self, model: str, watch: StreamWatch, usage: Usage | None) -> None:
        """What a request's stream showed, also for streams cut short."""
        labels = (model,)
        if watch.ttft is not None:
            self.metrics.first_token(model, watch.ttft, self._mono())
        for gap in watch.gaps:
            self.metrics.inter_token.observe(labels, gap)
        if usage is not None:
            if usage.prompt_tokens is not None:
                self.metrics.prompt_tokens.observe(labels, usage.prompt_tokens)
            if usage.completion_tokens is not None:
                self.metrics.completion_tokens.observe(labels, usage.completion_tokens)

    def _check_embeddings(self, name: str) -> None:
        """Refuse at once what llama-server would refuse with 501 after a load (and eviction)."""
        model = self._model_or_none(name)
        if model is None or serves_embeddings(model.args, model.env):
            return
        raise GatewayError(
            400,
            f"model {name!r} does not serve embeddings: it is started without --embeddings. "
            "Add --embeddings to its args (and --pooling mean for models without a pooling "
            "type of their own, such as gemma), then restart it",
            "invalid_request_error",
            "embeddings_not_enabled",
        )

    def _known(self, name: str) -> None:
        try:
            self._sup.models.get(name)
        except (UnknownModel, KeyError):
            raise self._not_found(name) from None

    def _not_found(self, name: str) -> GatewayError:
        known = ", ".join(self._sup.models.names()) or "none"
        return GatewayError(
            404,
            f"model {name!r} does not exist; known models: {known}",
            "invalid_request_error",
            "model_not_found",
        )
