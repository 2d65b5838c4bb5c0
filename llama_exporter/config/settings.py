"""Service configuration: frozen dataclasses and load_config().

The loader (load_config, ConfigError) is the single validation path used by both
``llama-exporter check-config`` and ``llama-exporter serve``. Parsing is pure
(parse_config takes the YAML data, the file path and the environment); only
check_files=True looks at the filesystem.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_PORT = 9777
DEFAULT_MAX_PARALLEL = 4
DEFAULT_LOG_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_WEBSOCKET_MAX_CLIENTS = 64
DEFAULT_MEMORY_HEADROOM = 0.10


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


HOST_LABEL_MAX = 128
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def validate_host_label(value: str) -> str | None:
    """Return what is wrong with a host label value, or None when it is valid."""
    if not value:
        return "must not be empty"
    if len(value) > HOST_LABEL_MAX:
        return f"must be at most {HOST_LABEL_MAX} characters, got {len(value)}"
    if not _HOST_LABEL_RE.fullmatch(value):
        bad = "".join(sorted(set(re.sub(r"[A-Za-z0-9._-]", "", value))))
        # ':' is refused on purpose: the label names a machine, Prometheus's `instance`
        # already carries host:port.
        return f"{value!r} contains {bad!r}: use only letters, digits, '.', '_' and '-'"
    return None


def default_host_label(hostname: str | None = None) -> str:
    """The machine's hostname (or `hostname`), made a valid host label: the default."""
    raw = socket.gethostname() if hostname is None else hostname
    name = re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:HOST_LABEL_MAX]
    return name or "localhost"


@dataclass(frozen=True)
class ModelConfig:
    """One model the service can run: a GGUF file and how to launch llama-server on it."""

    name: str
    path: Path
    ctx_size: int = 4096  # total context (-c); each slot gets ctx_size // parallel
    parallel: int = 2  # slots (-np)
    args: tuple[str, ...] = ()  # extra llama-server arguments
    env: Mapping[str, str] = field(default_factory=_empty_env)
    autostart: bool = False
    api_key: str | None = None  # passed as --api-key; the poller then sends it
    pinned: bool = False  # never evicted (nor unloaded when idle) by the gateway
    idle_ttl: float = 0.0  # seconds without a request before unloading; 0 = never
    stop_drain: float = 30.0  # an explicit stop waits this long for requests in flight


@dataclass(frozen=True)
class RestartPolicy:
    """What to do when an instance crashes or hangs."""

    enabled: bool = True
    max_retries: int = 5  # consecutive restarts before the model is marked failed
    backoff_initial: float = 1.0  # seconds before the first restart
    backoff_max: float = 30.0  # the delay doubles up to this
    stable_after: float = 60.0  # ready this long: the retry count starts again


@dataclass(frozen=True)
class PortRange:
    """Ports the service may give to llama-server instances (inclusive)."""

    first: int = 18080
    last: int = 18179

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class TargetsConfig:
    """Where Prometheus file-based service discovery targets are written."""

    directory: Path  # holds llama-servers.json and llama-exporter.json
    labels: Mapping[str, str] = field(default_factory=_empty_env)  # added to every group
    address: str | None = None  # host Prometheus should use; default: the listen host


@dataclass(frozen=True)
class PollConfig:
    """How the exporter reads running instances."""

    interval: float = 1.0
    timeout: float = 0.8  # per request
    history: int = 120  # samples kept per model
    idle_interval: float = 5.0  # an idle instance's reads (0: every interval); see pollrate


@dataclass(frozen=True)
class ModelDefaults:
    """Launch settings for models discovered in model_dirs or registered without them."""

    ctx_size: int = 4096
    parallel: int = 2
    args: tuple[str, ...] = ()
    pinned: bool = False
    idle_ttl: float = 0.0
    stop_drain: float = 30.0


WHEN_FULL = ("evict", "queue", "reject")


@dataclass(frozen=True)
class GatewayConfig:
    """The OpenAI-compatible gateway: what to do when the cap is full, the queue's bounds."""

    when_full: str = "evict"  # evict | queue | reject
    max_queue: int = 64  # requests waiting for the cap; past it: 429
    queue_timeout: float = 120.0  # seconds in the queue before 503
    max_body_bytes: int = 16 * 1024 * 1024  # larger request bodies: 413


@dataclass(frozen=True)
class RequestLogConfig:
    """The request log (<state_dir>/requests.db): how long it keeps what, and bodies or not."""

    enabled: bool = True
    retention: float = 7 * 86400.0  # seconds a record is kept
    max_rows: int = 1_000_000  # the oldest go past this many
    capture: bool = False  # keep request and response bodies for every model
    capture_models: tuple[str, ...] = ()  # ... or for these models only
    capture_max_bytes: int = 64 * 1024  # each body is cut at this many bytes

    def captures(self, model: str) -> bool:
        """Are model's request and response bodies kept?"""
        return self.capture or model in self.capture_models


@dataclass(frozen=True)
class Config:
    """The whole service configuration, validated."""

    source: Path | None  # the YAML file, None for the built-in default
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_parallel: int = DEFAULT_MAX_PARALLEL
    llama_server: Path = Path("llama-server")  # resolved to an executable by load_config
    ports: PortRange = PortRange()
    instance_host: str = "127.0.0.1"  # where llama-server instances listen
    instance_auth: bool = True  # every instance requires <state_dir>/instance.key
    ready_timeout: float = 120.0
    stop_grace: float = 10.0
    hang_timeout: float = 15.0  # a ready instance whose /health fails this long is restarted
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES  # an instance log this big is moved to <log>.1
    websocket_max_clients: int = DEFAULT_WEBSOCKET_MAX_CLIENTS  # more are refused (close 1013)
    restart: RestartPolicy = RestartPolicy()
    model_dirs: tuple[Path, ...] = ()
    defaults: ModelDefaults = ModelDefaults()
    models: tuple[ModelConfig, ...] = ()
    state_dir: Path = Path("~/.local/state/llama-exporter")
    targets: TargetsConfig | None = None  # None: <state_dir>/targets
    poll: PollConfig = PollConfig()
    api_token: str | None = None  # bearer token for all but /healthz, /readyz, the page shell
    scrape_token: str | None = None  # also accepted on /metrics and the HTTP SD route
    allow_unauthenticated: bool = False  # listen beyond loopback without api_token
    allowed_origins: tuple[str, ...] = ()  # web origins (besides our own) that may call the API
    allowed_hosts: tuple[str, ...] = ()  # Host names (besides ours) the service answers to
    gateway: GatewayConfig = GatewayConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    host_label: str = field(default_factory=default_host_label)  # the `host` label's value
    # device ("cpu", "cuda0", ...) -> bytes, or None for auto (the device's total less the
    # headroom). Empty: memory is not counted, only max_parallel.
    # Host memory is budgeted unless the file says otherwise (None: auto); {} turns it off.
    memory_budget: Mapping[str, int | None] = field(
        default_factory=lambda: MappingProxyType({"cpu": None})
    )
    memory_headroom: float = DEFAULT_MEMORY_HEADROOM  # share of a device kept free under auto

    @property
    def target_labels(self) -> dict[str, str]:
        """Labels of every target group handed to Prometheus: the static ones + host."""
        static = dict(self.targets.labels) if self.targets else {}
        return {**static, "host": self.host_label}

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def targets_dir(self) -> Path:
        return self.targets.directory if self.targets else self.state_dir / "targets"


# --- errors -------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A configuration problem: which file, which key, what is wrong and how to fix it."""

    def __init__(
        self,
        key: str,
        message: str,
        *,
        file: Path | None = None,
        hint: str | None = None,
        line: int | None = None,
    ) -> None:
        self.key = key
        self.message = message
        self.file = file
        self.hint = hint
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file) + (f" line {self.line}" if self.line else ""))
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        text = ": ".join(parts)
        return f"{text} (fix: {self.hint})" if self.hint else text


# --- model names --------------------------------------------------------------------------------

MODEL_NAME_MAX = 64
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def validate_model_name(name: str) -> str | None:
    """Return what is wrong with a model name, or None when it is valid."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    if not name:
        return "must not be empty"
    if len(name) > MODEL_NAME_MAX:
        return f"must be at most {MODEL_NAME_MAX} characters, got {len(name)}"
    if not _NAME_RE.fullmatch(name):
        bad = sorted(set(_NAME_BAD_CHARS.findall(name)))
        return f"{name!r} contains {''.join(bad)!r}: use only letters, digits, '.', '_' and '-'"
    return None


def sanitize_model_name(stem: str) -> str:
    """Turn a file stem into a valid model name (bad characters become '-', max 64)."""
    name = _NAME_BAD_CHARS.sub("-", stem)[:MODEL_NAME_MAX]
    return name or "model"


# --- values the config file and the API check alike ---------------------------------------------


def parse_seconds(value: object, *, zero_ok: bool = False) -> float:
    """value as a finite number of seconds, > 0 (>= 0 with zero_ok); ValueError says why not."""
    # bool is an int to Python, but `idle_ttl: true` is a mistake, not 1 second
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite number of seconds, got {value}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        bound = "0 or more" if zero_ok else "more than 0"
        raise ValueError(f"must be {bound} seconds, got {value}")
    return seconds


def parse_flag(value: object) -> bool:
    """value as a boolean (only true or false themselves); ValueError says why not."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


# Flags the service sets itself: a model's args must not repeat them.
_MANAGED_FLAGS = {
    "-m": "path",
    "--model": "path",
    "--host": "listen (the service picks the address)",
    "--port": "ports (the service picks the port)",
    "-c": "ctx_size",
    "--ctx-size": "ctx_size",
    "-np": "parallel",
    "--parallel": "parallel",
    "--api-key": "api_key",
    # Answers carry the alias as their "model": the service passes the model's name.
    "-a": "name (the service passes --alias <name>)",
    "--alias": "name (the service passes --alias <name>)",
}

_EMBEDDING_FLAGS = frozenset(("--embedding", "--embeddings"))
_TRUTHY = frozenset(("1", "true", "on", "enabled"))  # llama.cpp's is_truthy


def serves_embeddings(args: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether llama-server started with args and env answers /v1/embeddings (not 501)."""
    if any(arg in _EMBEDDING_FLAGS for arg in args):
        return True
    return env.get("LLAMA_ARG_EMBEDDINGS", "").strip().lower() in _TRUTHY


def find_managed_flag(args: Sequence[str]) -> tuple[int, str, str] | None:
    """First arg the service sets itself, as (index, flag, setting to use instead), or None."""
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in _MANAGED_FLAGS:
            return i, flag, _MANAGED_FLAGS[flag]
    return None
