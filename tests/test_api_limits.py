"""API-registered models: only tuning flags and a few environment variables pass."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_api import API, Client, MakeClient, make_config

from llama_exporter.catalog.limits import ALLOWED_FLAGS, check_args, check_env, env_allowed
from llama_exporter.catalog.registry import Registry
from llama_exporter.http.app import create_app
from llama_exporter.testing.gguf_writer import write_minimal_gguf

# Each writes files, serves a folder, opens a port, loads code or weights, or fetches.
REFUSED_ARGS: list[list[str]] = [
    ["--log-file", "/tmp/x"],
    ["--log-file=/tmp/x"],
    ["--slot-save-path", "/tmp"],
    ["--path", "/"],
    ["--lora", "/tmp/a.gguf"],
    ["--lora-scaled", "/tmp/a.gguf", "1"],
    ["--control-vector", "/tmp/v.gguf"],
    ["-mm", "/tmp/p.gguf"],
    ["--mmproj", "/tmp/p.gguf"],
    ["-mmu", "http://x/p.gguf"],
    ["-hf", "org/repo"],
    ["-hfr", "org/repo"],
    ["--hf-repo", "org/repo"],
    ["--hf-file", "x.gguf"],
    ["-hft", "tok"],
    ["--hf-token=tok"],
    ["-hfd", "org/repo"],
    ["--api-key-file", "/etc/shadow"],
    ["--host", "0.0.0.0"],
    ["--host=0.0.0.0"],
    ["--port", "1"],
    ["-mu", "http://evil/x.gguf"],
    ["--model-url", "http://evil/x.gguf"],
    ["--chat-template-file", "/tmp/t.jinja"],
    ["--ssl-key-file", "/tmp/k"],
    ["--rpc", "10.0.0.1:50052"],
    ["-md", "/tmp/draft.gguf"],
    ["--models-dir", "/"],
    ["--media-path", "/"],
    ["--tools", "all"],
    ["--mcp-servers-config", "/tmp/c.json"],
    ["--webui-config-file", "/tmp/c.json"],
    ["--log-prompts-dir", "/tmp"],
    ["-lcs", "/tmp/cache"],
    ["--cors-origins", "*"],
    ["--no-slots"],
    ["--threads", "2", "--lora", "/tmp/a.gguf"],  # after an allowed flag and its value
    ["--jinja=/tmp/x"],  # a switch given a value
    ["--threads"],  # a value flag without its value
    ["stray"],
]
REFUSED_ENV = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PATH",
    "PYTHONPATH",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HOME",
    "GGML_BACKEND_PATH",
    "GGML_OPENCL_KERNEL_CACHE_DIR",
    "GGML_RPC_DEBUG",
    "LLAMA_ARG_HOST",
    "LLAMA_ARG_PORT",
    "LLAMA_ARG_LOG_FILE",
    "LLAMA_ARG_STATIC_PATH",
    "LLAMA_ARG_MODEL_URL",
    "LLAMA_ARG_HF_REPO",
    "LLAMA_ARG_MMPROJ",
    "LLAMA_ARG_API_KEY_FILE",
    "LLAMA_ARG_CHAT_TEMPLATE_FILE",
    "LLAMA_ARG_NO_LOG_FILE",
    "LLAMA_API_KEY",
]
ALLOWED_ARGS: list[list[str]] = [
    ["--threads", "4", "-tb", "4", "-b", "512", "-ub", "256"],
    ["-ngl", "99", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"],
    ["--flash-attn=auto", "--cache-type-k=f16"],
    ["--temp", "0.7", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.05", "-s", "-1"],
    ["--embeddings", "--pooling", "mean"],
    ["--jinja", "--no-context-shift", "-nkvo", "--cont-batching"],
    ["--reasoning-format", "none", "--override-tensor", "exps=CPU"],
]
ALLOWED_ENV = [
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "GGML_CUDA_NO_PINNED",
    "GGML_SCHED_DEBUG",
    "LLAMA_ARG_THREADS",
    "LLAMA_ARG_N_GPU_LAYERS",
    "LLAMA_ARG_FLASH_ATTN",
    "LLAMA_ARG_NO_HOST",
    "LLAMA_ARG_NO_KV_OFFLOAD",
]


def _refused_flag(args: list[str]) -> str:
    bad = next((a for a in args if a.split("=", 1)[0] not in ALLOWED_FLAGS or "=" in a), args[-1])
    return bad.split("=", 1)[0]


@pytest.mark.parametrize("args", REFUSED_ARGS, ids=lambda a: " ".join(a))
def test_refused_args_name_the_flag(args: list[str]) -> None:
    refused = check_args(args)
    assert refused is not None
    assert refused.field == "args"
    assert _refused_flag(args) in refused.message


@pytest.mark.parametrize("args", ALLOWED_ARGS, ids=lambda a: " ".join(a))
def test_tuning_args_pass(args: list[str]) -> None:
    assert check_args(args) is None


@pytest.mark.parametrize("name", REFUSED_ENV)
def test_refused_env_names_the_variable(name: str) -> None:
    refused = check_env({"OMP_NUM_THREADS": "2", name: "x"})
    assert refused is not None
    assert refused.field == "env"
    assert name in refused.message


@pytest.mark.parametrize("name", ALLOWED_ENV)
def test_allowed_env(name: str) -> None:
    assert env_allowed(name)
    assert check_env({name: "1"}) is None


@given(st.lists(st.sampled_from(sorted(ALLOWED_FLAGS)), max_size=6), st.text(max_size=12))
def test_a_refused_flag_is_found_wherever_it_hides(prefix: list[str], value: str) -> None:
    # Whatever allowed flags (with values) come first, --log-file is still seen.
    args: list[str] = []
    for flag in prefix:
        args.append(flag)
        if ALLOWED_FLAGS[flag]:
            args.append(value or "1")
    refused = check_args([*args, "--log-file", "/tmp/x"])
    assert refused is not None
    assert "--log-file" in refused.message


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path) -> Client:
    return await aiohttp_client(create_app(make_config(tmp_path, fake_server_bin, models=0)))


async def _register(client: Client, tmp_path: Path, **fields: Any) -> tuple[int, dict[str, Any]]:
    path = write_minimal_gguf(tmp_path / "api.gguf")
    resp = await client.post(f"{API}/models", json={"name": "api", "path": str(path), **fields})
    body: dict[str, Any] = await resp.json()
    return resp.status, body


@pytest.mark.parametrize("args", REFUSED_ARGS, ids=lambda a: " ".join(a))
async def test_each_refused_flag_answers_400(
    client: Client, tmp_path: Path, args: list[str]
) -> None:
    status, body = await _register(client, tmp_path, args=args)
    assert status == 400, body
    assert body["error"]["field"] == "args"
    assert _refused_flag(args) in body["error"]["message"]
    models = await (await client.get(f"{API}/models")).json()
    assert "api" not in [m["name"] for m in models["models"]]


@pytest.mark.parametrize("name", REFUSED_ENV)
async def test_each_refused_env_answers_400(client: Client, tmp_path: Path, name: str) -> None:
    status, body = await _register(client, tmp_path, env={name: "x"})
    assert status == 400, body
    assert body["error"]["field"] == "env"
    assert name in body["error"]["message"]


async def test_tuning_flags_and_env_register(client: Client, tmp_path: Path) -> None:
    status, body = await _register(
        client, tmp_path, args=["--threads", "2", "-fa", "on"], env={"OMP_NUM_THREADS": "2"}
    )
    assert status == 201, body
    assert body["args"] == ["--threads", "2", "-fa", "on"]


def test_models_json_written_before_the_limits_is_checked_on_load(
    tmp_path: Path, fake_server_bin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, fake_server_bin, models=0)
    good = write_minimal_gguf(tmp_path / "good.gguf")
    evil = write_minimal_gguf(tmp_path / "evil.gguf")
    entry = {"ctx_size": 512, "parallel": 1}
    state = {
        "version": 1,
        "models": [
            {"name": "good", "path": str(good), **entry, "args": ["-t", "2"], "env": {}},
            {"name": "evil", "path": str(evil), **entry, "args": [], "env": {"LD_PRELOAD": "x"}},
            {"name": "lora", "path": str(evil), **entry, "args": ["--lora", "/x"], "env": {}},
        ],
    }
    state_file = config.state_dir / "models.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps(state))
    caplog.set_level(logging.ERROR)
    registry = Registry(config)
    registry.load()
    assert registry.names() == ["good"]
    assert "model evil" in caplog.text and "LD_PRELOAD" in caplog.text
    assert "model lora" in caplog.text and "--lora" in caplog.text
    # Changing the registry keeps the refused entries in the file for the operator to fix.
    registry.remove("good")
    kept = json.loads(state_file.read_text())["models"]
    assert [m["name"] for m in kept] == ["evil", "lora"]
