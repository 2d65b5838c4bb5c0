"""Service configuration: frozen dataclasses and load_config().

The loader (load_config, ConfigError) is the single validation path used by both
``llama-exporter check-config`` and ``llama-exporter serve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_PORT = 9777
DEFAULT_MAX_PARALLEL = 4


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


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


@dataclass(frozen=True)
class ModelDefaults:
    """Launch settings for models discovered in model_dirs or registered without them."""

    ctx_size: int = 4096
    parallel: int = 2
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole service configuration, validated."""

    source: Path | None  # the YAML file, None for the built-in default
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_parallel: int = DEFAULT_MAX_PARALLEL
    llama_server: Path = Path("llama-server")  # resolved to an executable by load_config
    ports: PortRange = PortRange()
    ready_timeout: float = 120.0
    stop_grace: float = 10.0
    hang_timeout: float = 15.0  # a ready instance whose /health fails this long is restarted
    restart: RestartPolicy = RestartPolicy()
    model_dirs: tuple[Path, ...] = ()
    defaults: ModelDefaults = ModelDefaults()
    models: tuple[ModelConfig, ...] = ()
    state_dir: Path = Path("~/.local/state/llama-exporter")
    targets: TargetsConfig | None = None  # None: <state_dir>/targets
    poll: PollConfig = PollConfig()
    api_token: str | None = None  # bearer token for mutating API calls

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def targets_dir(self) -> Path:
        return self.targets.directory if self.targets else self.state_dir / "targets"
