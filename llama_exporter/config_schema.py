"""The YAML schema of the config file: one checker per key, each naming what is wrong.

Only ``config.parse_config`` uses this module; everything it builds is defined in
``config.py``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llama_exporter.config import (
    DEFAULT_LOG_MAX_BYTES,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_PORT,
    DEFAULT_WEBSOCKET_MAX_CLIENTS,
    ENV_API_TOKEN,
    ENV_SCRAPE_TOKEN,
    WHEN_FULL,
    Config,
    ConfigError,
    GatewayConfig,
    ModelConfig,
    ModelDefaults,
    PollConfig,
    PortRange,
    RestartPolicy,
    TargetsConfig,
    _empty_env,
    _env_token,
    default_host_label,
    default_state_dir,
    expand_path,
    exposure_error,
    find_managed_flag,
    parse_flag,
    parse_seconds,
    resolve_llama_server,
    validate_host_label,
    validate_model_name,
)
from llama_exporter.guard import normalise_origin, split_host

_LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_TYPES = (int, float)


class Parser:
    """Turns a YAML mapping into Config; every failure is a ConfigError naming the key."""

    def __init__(self, file: Path | None, env: Mapping[str, str], check_files: bool) -> None:
        self.file = file
        self.env = env
        self.check_files = check_files
        self.base = file.parent if file is not None else None

    def error(self, key: str, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(key, message, file=self.file, hint=hint)

    # -- typed values

    def mapping(self, value: object, key: str, allowed: Sequence[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            where = key or "the top level"
            raise self.error(
                key, f"must be a mapping, got {_kind(value)}", f"write {where} as key: value lines"
            )
        for name in value:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = (
                    f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
                )
                raise self.error(_join(key, str(name)), "unknown key", hint)
        return value

    def integer(self, value: object, key: str, minimum: int = 1, maximum: int | None = None) -> int:
        if maximum is not None:
            what = f"an integer {minimum}..{maximum}"
        else:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be {what}, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            raise self.error(key, f"must be {what}, got {value}")
        return value

    def seconds(self, value: object, key: str) -> float:
        try:
            return parse_seconds(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def seconds_or_zero(self, value: object, key: str) -> float:
        try:
            return parse_seconds(value, zero_ok=True)
        except ValueError as exc:
            raise self.error(key, str(exc), "0 means never") from None

    def boolean(self, value: object, key: str) -> bool:
        try:
            return parse_flag(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def word(self, value: object, key: str) -> str:
        """A string, or a number written without quotes (args, env values)."""
        if isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}", "quote the value")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, got {_kind(value)}", 'write it as ["a", "b"]')
        return tuple(self.word(item, f"{key}[{i}]") for i, item in enumerate(value))

    def str_map(self, value: object, key: str) -> Mapping[str, str]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {_kind(value)}")
        return MappingProxyType(
            {str(k): self.word(v, _join(key, str(k))) for k, v in value.items()}
        )

    def path(self, value: object, key: str) -> Path:
        return expand_path(self.string(value, key), self.env, self.base)

    # -- sections

    def config(self, data: object) -> Config:
        top = self.mapping(data, "", _TOP_KEYS)
        listen = self.mapping(top.get("listen"), "listen", ("host", "port"))
        host = self.string(listen.get("host", "127.0.0.1"), "listen.host")
        port = self.integer(listen.get("port", DEFAULT_PORT), "listen.port", 1, 65535)
        max_parallel = self.integer(top.get("max_parallel", DEFAULT_MAX_PARALLEL), "max_parallel")
        ports = self.ports(top.get("ports"), max_parallel, port)
        defaults = self.defaults(top.get("defaults"))
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
            models=self.models(top.get("models"), defaults),
            state_dir=state_dir,
            targets=self.targets(top.get("targets"), state_dir),
            poll=self.poll(top.get("poll")),
            api_token=token,
            scrape_token=self.token(top, "scrape_token"),
            allow_unauthenticated=allow_open,
            allowed_origins=self.checked_list(top, "allowed_origins", normalise_origin),
            allowed_hosts=self.checked_list(top, "allowed_hosts", split_host),
            gateway=self.gateway(top.get("gateway")),
            host_label=host_label,
        )

    def host_label(self, value: object) -> str:
        if value is None:
            return default_host_label()
        if isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool):
            value = str(value)  # `host_label: 7` is a fine name for box 7
        if not isinstance(value, str):
            raise self.error("host_label", f"must be a string, got {_kind(value)}", "quote it")
        problem = validate_host_label(value)
        if problem is not None:
            raise self.error(
                "host_label", problem, "name the machine as in its hostname, e.g. gpu-box-1"
            )
        return value

    def token(self, top: Mapping[str, Any], key: str) -> str | None:
        """A token from its environment variable (which wins) or the file."""
        from_env = _env_token(
            self.env, ENV_SCRAPE_TOKEN if key == "scrape_token" else ENV_API_TOKEN
        )
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
                f"must be a list of folders, got {_kind(value)}",
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

    def defaults(self, value: object) -> ModelDefaults:
        raw = self.mapping(value, "defaults", _DEFAULTS_KEYS)
        base = ModelDefaults()
        ctx = self.integer(raw.get("ctx_size", base.ctx_size), "defaults.ctx_size")
        parallel = self.integer(raw.get("parallel", base.parallel), "defaults.parallel")
        self.check_ctx(ctx, parallel, "defaults")
        args = self.args(raw["args"], "defaults.args") if "args" in raw else base.args
        return ModelDefaults(
            ctx_size=ctx,
            parallel=parallel,
            args=args,
            pinned=self.boolean(raw.get("pinned", base.pinned), "defaults.pinned"),
            idle_ttl=self.seconds_or_zero(raw.get("idle_ttl", base.idle_ttl), "defaults.idle_ttl"),
            stop_drain=self.seconds_or_zero(
                raw.get("stop_drain", base.stop_drain), "defaults.stop_drain"
            ),
        )

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

    def check_ctx(self, ctx: int, parallel: int, key: str) -> None:
        if ctx < parallel:
            raise self.error(
                _join(key, "ctx_size"),
                f"{ctx} is less than parallel ({parallel}): each slot needs context",
                "raise ctx_size or lower parallel",
            )

    def args(self, value: object, key: str) -> tuple[str, ...]:
        args = self.strings(value, key)
        managed = find_managed_flag(args)
        if managed is not None:
            i, flag, setting = managed
            raise self.error(
                f"{key}[{i}]",
                f"{flag} is set by the service",
                f"use the model's {setting} setting instead",
            )
        return args

    def models(self, value: object, defaults: ModelDefaults) -> tuple[ModelConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(
                "models", f"must be a list, got {_kind(value)}", "write each model as '- name: ...'"
            )
        models: list[ModelConfig] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            model = self.model(item, f"models[{i}]", defaults)
            if model.name in seen:
                raise self.error(
                    f"models[{i}].name",
                    f"duplicate model name {model.name!r} (also models[{seen[model.name]}])",
                    "give every model its own name",
                )
            seen[model.name] = i
            models.append(model)
        return tuple(models)

    def model(self, value: object, key: str, defaults: ModelDefaults) -> ModelConfig:
        raw = self.mapping(value, key, _MODEL_KEYS)
        for required in ("name", "path"):
            if raw.get(required) is None:
                raise self.error(_join(key, required), "is required")
        name = self.string(raw["name"], f"{key}.name")
        problem = validate_model_name(name)
        if problem:
            raise self.error(f"{key}.name", problem)
        path = self.gguf_path(raw["path"], f"{key}.path")
        ctx = self.integer(raw.get("ctx_size", defaults.ctx_size), f"{key}.ctx_size")
        parallel = self.integer(raw.get("parallel", defaults.parallel), f"{key}.parallel")
        self.check_ctx(ctx, parallel, key)
        api_key = raw.get("api_key")
        return ModelConfig(
            name=name,
            path=path,
            ctx_size=ctx,
            parallel=parallel,
            args=self.args(raw["args"], f"{key}.args") if "args" in raw else defaults.args,
            env=self.str_map(raw["env"], f"{key}.env") if raw.get("env") else _empty_env(),
            autostart=self.boolean(raw.get("autostart", False), f"{key}.autostart"),
            api_key=None if api_key is None else self.string(api_key, f"{key}.api_key"),
            pinned=self.boolean(raw.get("pinned", defaults.pinned), f"{key}.pinned"),
            idle_ttl=self.seconds_or_zero(
                raw.get("idle_ttl", defaults.idle_ttl), f"{key}.idle_ttl"
            ),
            stop_drain=self.seconds_or_zero(
                raw.get("stop_drain", defaults.stop_drain), f"{key}.stop_drain"
            ),
        )

    def gguf_path(self, value: object, key: str) -> Path:
        path = self.path(value, key)
        if path.suffix != ".gguf":
            raise self.error(key, f"{path} does not end in .gguf", "point it at a GGUF model file")
        if self.check_files:
            if not path.exists():
                raise self.error(
                    key, f"{path} does not exist", "fix the path or download the model"
                )
            if not path.is_file():
                raise self.error(
                    key, f"{path} is not a regular file", "point it at a GGUF model file"
                )
        return path

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
    "models",
)
_DEFAULTS_KEYS = ("ctx_size", "parallel", "args", "pinned", "idle_ttl", "stop_drain")
_GATEWAY_KEYS = ("when_full", "max_queue", "queue_timeout", "max_body_bytes")
_RESTART_KEYS = ("enabled", "max_retries", "backoff_initial", "backoff_max", "stable_after")
_MODEL_KEYS = (
    "name",
    "path",
    "ctx_size",
    "parallel",
    "args",
    "env",
    "autostart",
    "api_key",
    "pinned",
    "idle_ttl",
    "stop_drain",
)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind(value: object) -> str:
    """How a YAML value reads to a user: 'a list', 'a string ('x')'."""
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r}"
