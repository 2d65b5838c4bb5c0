"""The YAML schema of the config file: one checker per key, each naming what is wrong.

This module holds the top level and the service's sections (listen, ports, restart,
targets, poll, gateway, tokens...); the model sections are in ``config_models`` and
the typed values in ``config_values``. Only ``config.parse_config`` uses it;
everything it builds is defined in ``config.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llama_exporter.config.env import (
    ENV_API_TOKEN,
    ENV_SCRAPE_TOKEN,
    default_state_dir,
    env_token,
    exposure_error,
    resolve_llama_server,
)
from llama_exporter.config.origins import normalise_origin, split_host
from llama_exporter.config.schema_models import ModelSchema
from llama_exporter.config.settings import (
    DEFAULT_LOG_MAX_BYTES,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_PORT,
    DEFAULT_WEBSOCKET_MAX_CLIENTS,
    WHEN_FULL,
    Config,
    GatewayConfig,
    PollConfig,
    PortRange,
    RequestLogConfig,
    RestartPolicy,
    TargetsConfig,
    _empty_env,
    default_host_label,
    validate_host_label,
)
from llama_exporter.config.values import NUMBER_TYPES, Values, kind_of

_LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Parser(Values):
    """Turns a YAML mapping into Config; every failure is a ConfigError naming the key."""

    def __init__(self, file: Path | None, env: Mapping[str, str], check_files: bool) -> None:
        super().__init__(file, env, check_files)
        self.model_schema = ModelSchema(file, env, check_files)

    def config(self, data: object) -> Config:
        top = self.mapping(data, "", _TOP_KEYS)
        listen = self.mapping(top.get("listen"), "listen", ("host", "port"))
        host = self.string(listen.get("host", "127.0.0.1"), "listen.host")
        port = self.integer(listen.get("port", DEFAULT_PORT), "listen.port", 1, 65535)
        max_parallel = self.integer(top.get("max_parallel", DEFAULT_MAX_PARALLEL), "max_parallel")
        ports = self.ports(top.get("ports"), max_parallel, port)
        defaults = self.model_schema.defaults(top.get("defaults"))
        state_dir = (
            self.path(top["state_dir"], "state_dir")
            if top.get("state_dir") is not None
            else default_state_dir(self.env)
        )
        token = self.token(top, "api_token")
        allow_open = self.boolean(top.get("allow_unauthenticated", False), "allow_unauthenticated")
        exposed = exposure_error(host, token, allow_open, file=self.file)
        if exposed is not None:
            raise exposed
        host_label = self.host_label(top.get("host_label"))
        return Config(
            source=self.file,
            host=host,
            port=port,
            max_parallel=max_parallel,
            llama_server=self.llama_server(top.get("llama_server")),
            ports=ports,
            instance_host=self.string(top.get("instance_host", "127.0.0.1"), "instance_host"),
            instance_auth=self.boolean(top.get("instance_auth", True), "instance_auth"),
            ready_timeout=self.seconds(top.get("ready_timeout", 120.0), "ready_timeout"),
            stop_grace=self.seconds(top.get("stop_grace", 10.0), "stop_grace"),
            hang_timeout=self.seconds(top.get("hang_timeout", 15.0), "hang_timeout"),
            log_max_bytes=self.integer(
                top.get("log_max_bytes", DEFAULT_LOG_MAX_BYTES), "log_max_bytes", 4096
            ),
            websocket_max_clients=self.integer(
                top.get("websocket_max_clients", DEFAULT_WEBSOCKET_MAX_CLIENTS),
                "websocket_max_clients",
            ),
            restart=self.restart(top.get("restart")),
            model_dirs=self.model_dirs(top.get("model_dirs")),
            defaults=defaults,
            models=self.model_schema.models(top.get("models"), defaults),
            state_dir=state_dir,
            targets=self.targets(top.get("targets"), state_dir),
            poll=self.poll(top.get("poll")),
            api_token=token,
            scrape_token=self.token(top, "scrape_token"),
            allow_unauthenticated=allow_open,
            allowed_origins=self.checked_list(top, "allowed_origins", normalise_origin),
            allowed_hosts=self.checked_list(top, "allowed_hosts", split_host),
            gateway=self.gateway(top.get("gateway")),
            request_log=self.request_log(top.get("request_log")),
            host_label=host_label,
        )

    def host_label(self, value: object) -> str:
        if value is None:
            return default_host_label()
        if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
            value = str(value)  # `host_label: 7` is a fine name for box 7
        if not isinstance(value, str):
            raise self.error("host_label", f"must be a string, got {kind_of(value)}", "quote it")
        problem = validate_host_label(value)
        if problem is not None:
            raise self.error(
                "host_label", problem, "name the machine as in its hostname, e.g. gpu-box-1"
            )
        return value

    def token(self, top: Mapping[str, Any], key: str) -> str | None:
        """A token from its environment variable (which wins) or the file."""
        from_env = env_token(self.env, ENV_SCRAPE_TOKEN if key == "scrape_token" else ENV_API_TOKEN)
        value = top.get(key)
        return from_env or (None if value is None else self.string(value, key))

    def checked_list(
        self, top: Mapping[str, Any], key: str, parse: Callable[[str], object]
    ) -> tuple[str, ...]:
        """A list of strings each of which parse() accepts (not None)."""
        value = top.get(key)
        if value is None:
            return ()
        items = self.strings(value, key)
        for i, item in enumerate(items):
            if parse(item) is None:
                example = "http://host:port" if key == "allowed_origins" else "name or name:port"
                raise self.error(f"{key}[{i}]", f"{item!r} is not valid", f"write it as {example}")
        return items

    def llama_server(self, value: object) -> Path:
        explicit: Path | None = None
        if value is not None:
            text = self.string(value, "llama_server")
            # A bare name such as "llama-server" is looked up on PATH, not beside the config.
            bare = "/" not in text and not text.startswith("~")
            explicit = Path(text) if bare else self.path(text, "llama_server")
        if not self.check_files:
            return explicit or Path("llama-server")
        return resolve_llama_server(explicit, self.env, file=self.file)

    def ports(self, value: object, max_parallel: int, listen_port: int) -> PortRange:
        raw = self.mapping(value, "ports", ("first", "last"))
        first = self.integer(raw.get("first", PortRange.first), "ports.first", 1, 65535)
        last = self.integer(raw.get("last", PortRange.last), "ports.last", 1, 65535)
        if first > last:
            raise self.error("ports", f"first ({first}) is after last ({last})", "swap them")
        ports = PortRange(first, last)
        if ports.size < max_parallel:
            raise self.error(
                "ports",
                f"{first}..{last} holds {ports.size} ports,"
                f" fewer than max_parallel ({max_parallel})",
                f"widen the range to at least {max_parallel} ports or lower max_parallel",
            )
        if first <= listen_port <= last:
            raise self.error(
                "listen.port",
                f"{listen_port} is inside the instance port range {first}..{last}",
                "pick a listen port outside ports.first..ports.last",
            )
        return ports

    def restart(self, value: object) -> RestartPolicy:
        raw = self.mapping(value, "restart", _RESTART_KEYS)
        base = RestartPolicy()
        policy = RestartPolicy(
            enabled=self.boolean(raw.get("enabled", base.enabled), "restart.enabled"),
            max_retries=self.integer(
                raw.get("max_retries", base.max_retries), "restart.max_retries", 0
            ),
            backoff_initial=self.seconds(
                raw.get("backoff_initial", base.backoff_initial), "restart.backoff_initial"
            ),
            backoff_max=self.seconds(
                raw.get("backoff_max", base.backoff_max), "restart.backoff_max"
            ),
            stable_after=self.seconds(
                raw.get("stable_after", base.stable_after), "restart.stable_after"
            ),
        )
        if policy.backoff_max < policy.backoff_initial:
            raise self.error(
                "restart.backoff_max",
                f"{policy.backoff_max:g} is less than backoff_initial ({policy.backoff_initial:g})",
                "make backoff_max at least backoff_initial",
            )
        return policy

    def model_dirs(self, value: object) -> tuple[Path, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(
                "model_dirs",
                f"must be a list of folders, got {kind_of(value)}",
                "write it as [~/models]",
            )
        dirs = []
        for i, item in enumerate(value):
            key = f"model_dirs[{i}]"
            folder = self.path(item, key)
            if self.check_files and not folder.is_dir():
                what = "does not exist" if not folder.exists() else "is not a directory"
                raise self.error(key, f"{folder} {what}", "create the folder or remove the entry")
            dirs.append(folder)
        return tuple(dirs)

    def gateway(self, value: object) -> GatewayConfig:
        raw = self.mapping(value, "gateway", _GATEWAY_KEYS)
        base = GatewayConfig()
        when_full = raw.get("when_full", base.when_full)
        if when_full not in WHEN_FULL:
            raise self.error(
                "gateway.when_full",
                f"must be one of {', '.join(WHEN_FULL)}, got {when_full!r}",
                "evict unloads the least recently used idle model, queue waits, reject answers 429",
            )
        return GatewayConfig(
            when_full=str(when_full),
            max_queue=self.integer(raw.get("max_queue", base.max_queue), "gateway.max_queue", 0),
            queue_timeout=self.seconds(
                raw.get("queue_timeout", base.queue_timeout), "gateway.queue_timeout"
            ),
            max_body_bytes=self.integer(
                raw.get("max_body_bytes", base.max_body_bytes), "gateway.max_body_bytes"
            ),
        )

    def request_log(self, value: object) -> RequestLogConfig:
        raw = self.mapping(value, "request_log", _REQUEST_LOG_KEYS)
        base = RequestLogConfig()
        capture = raw.get("capture", base.capture)
        models: tuple[str, ...] = ()
        if isinstance(capture, list):  # the models whose bodies are kept
            models, capture = self.strings(capture, "request_log.capture"), False
        return RequestLogConfig(
            enabled=self.boolean(raw.get("enabled", base.enabled), "request_log.enabled"),
            retention=self.seconds(raw.get("retention", base.retention), "request_log.retention"),
            max_rows=self.integer(raw.get("max_rows", base.max_rows), "request_log.max_rows"),
            capture=self.boolean(capture, "request_log.capture"),
            capture_models=models,
            capture_max_bytes=self.integer(
                raw.get("capture_max_bytes", base.capture_max_bytes),
                "request_log.capture_max_bytes",
            ),
        )

    def targets(self, value: object, state_dir: Path) -> TargetsConfig | None:
        if value is None:
            return None
        raw = self.mapping(value, "targets", ("directory", "labels", "address"))
        labels = (
            self.str_map(raw["labels"], "targets.labels") if raw.get("labels") else _empty_env()
        )
        for label in labels:
            key = f"targets.labels.{label}"
            if not _LABEL_RE.fullmatch(label) or label.startswith("__"):
                raise self.error(
                    key,
                    "is not a valid Prometheus label name",
                    "use [a-zA-Z_][a-zA-Z0-9_]*, no leading __",
                )
            if label == "model":
                raise self.error(
                    key, "'model' is set per instance by the service", "pick another label name"
                )
            if label == "host":
                raise self.error(
                    key, "'host' is set from the host_label setting", "set host_label instead"
                )
        directory = raw.get("directory")
        address = raw.get("address")
        return TargetsConfig(
            directory=(
                self.path(directory, "targets.directory")
                if directory is not None
                else state_dir / "targets"
            ),
            labels=labels,
            address=None if address is None else self.string(address, "targets.address"),
        )

    def poll(self, value: object) -> PollConfig:
        raw = self.mapping(value, "poll", ("interval", "timeout", "history", "idle_interval"))
        base = PollConfig()
        idle = raw.get("idle_interval", base.idle_interval)
        return PollConfig(
            interval=self.seconds(raw.get("interval", base.interval), "poll.interval"),
            timeout=self.seconds(raw.get("timeout", base.timeout), "poll.timeout"),
            history=self.integer(raw.get("history", base.history), "poll.history"),
            idle_interval=self.seconds_or_zero(idle, "poll.idle_interval"),
        )


_TOP_KEYS = (
    "listen",
    "instance_host",
    "instance_auth",
    "max_parallel",
    "llama_server",
    "ports",
    "ready_timeout",
    "stop_grace",
    "hang_timeout",
    "log_max_bytes",
    "websocket_max_clients",
    "restart",
    "model_dirs",
    "defaults",
    "state_dir",
    "targets",
    "poll",
    "api_token",
    "host_label",
    "scrape_token",
    "allow_unauthenticated",
    "allowed_origins",
    "allowed_hosts",
    "gateway",
    "request_log",
    "models",
)
_GATEWAY_KEYS = ("when_full", "max_queue", "queue_timeout", "max_body_bytes")
_REQUEST_LOG_KEYS = (
    "enabled", "retention", "max_rows", "capture", "capture_max_bytes",
)  # fmt: skip
_RESTART_KEYS = ("enabled", "max_retries", "backoff_initial", "backoff_max", "stable_after")
