"""The llama-server command line and environment for one model, and the key its readers send.

Pure: plain values in, an argument list (never a shell) and an environment out. No key is
ever on the command line (it would show in /proc/PID/cmdline and ps): the service's key
is read by llama-server from its file, a model's own api_key from the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from llama_exporter.config.settings import ModelConfig
from llama_exporter.supervision.instance_key import InstanceKey

# llama-server answers every origin by default (it echoes Origin, with credentials).
# This build sets its --cors-origins value verbatim as Access-Control-Allow-Origin, and
# "none" is no origin a browser can have (those are "null" or scheme://host[:port]):
# no web page gets a CORS grant. A model's own args come later and may override it.
CORS_ORIGINS = "none"
API_KEY_ENV = "LLAMA_API_KEY"  # llama-server reads a model's own api_key from it


def build_argv(
    binary: Path | str, model: ModelConfig, host: str, port: int, key_file: Path | None = None
) -> list[str]:
    """The llama-server command line for one model (an argument list, never a shell).

    --alias: answers name the model as the client asked for it, not by its GGUF path.
    No key is on it: the service's key is read from key_file, and a model's own api_key
    goes in the environment (see child_env), so neither shows in /proc/PID/cmdline or ps.
    """
    argv = [str(binary), "-m", str(model.path), "--alias", model.name]
    argv += ["--host", host, "--port", str(port)]
    argv += ["--metrics", "-c", str(model.ctx_size), "-np", str(model.parallel)]
    # -lv 4: the load logs every buffer it allocates (memory/report.py learns the model's
    # figure from them); about 2.4 KB more log per request. A -lv in args comes later: it wins.
    argv += ["-lv", "4"]
    if key_file is not None:
        argv += ["--api-key-file", str(key_file)]
    argv += ["--cors-origins", CORS_ORIGINS, "--no-cors-credentials"]
    return argv + list(model.args)


def child_env(model: ModelConfig, base: Mapping[str, str]) -> dict[str, str] | None:
    """The environment of the model's llama-server: base + its env + its own api_key.

    None (inherit ours unchanged) when the model adds nothing. llama-server accepts the
    key of LLAMA_API_KEY and those of --api-key-file alike.
    """
    if not model.env and not model.api_key:
        return None
    env = {**base, **model.env}
    if model.api_key:
        env[API_KEY_ENV] = model.api_key
    return env


def reader_key(model: ModelConfig, instance_key: InstanceKey | None) -> str | None:
    """The key the service's readers send to this model's instance (its own one first)."""
    return model.api_key or (instance_key.value if instance_key is not None else None)
