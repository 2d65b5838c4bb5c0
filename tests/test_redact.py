"""redact.py and every place a secret could show: /models, /status, logs, the log endpoint, CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_api import API, Client, MakeClient, _wait_state, make_config

from llama_exporter.config.settings import ModelConfig
from llama_exporter.http.app import create_app
from llama_exporter.redact import (
    MASK,
    is_secret_name,
    redact_args,
    redact_env,
    redact_output,
    redact_text,
    secret_values,
)
from llama_exporter.testing.gguf_writer import write_minimal_gguf

HF = "hf_FLAGSECRET123"
ENV_SECRET = "ENVSECRET456"
API_KEY = "APIKEYSECRET789"
ALL_SECRETS = (HF, ENV_SECRET, API_KEY)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("--api-key", True),
        ("--hf-token", True),
        ("-hft", True),
        ("--api-key-file", True),
        ("MY_API_TOKEN", True),
        ("db_Password", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("--threads", False),
        ("-ctk", False),
        ("--cache-type-k", False),
        ("OMP_NUM_THREADS", False),
        ("--keep", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_redact_args_hides_values_of_secret_flags_only() -> None:
    args = ["--api-key", "K1", "-t", "2", "--hf-token=V2", "-hft", "V3", "--my-secret", "V4"]
    assert redact_args(args) == [
        "--api-key",
        MASK,
        "-t",
        "2",
        f"--hf-token={MASK}",
        "-hft",
        MASK,
        "--my-secret",
        MASK,
    ]
    assert redact_args(["--threads", "2", "--jinja"]) == ["--threads", "2", "--jinja"]
    assert redact_args(["--api-key"]) == ["--api-key"]


def test_redact_env_and_secret_values() -> None:
    env = {"HF_TOKEN": "a", "OMP_NUM_THREADS": "2", "Db_Password": "b"}
    assert redact_env(env) == {"HF_TOKEN": MASK, "OMP_NUM_THREADS": "2", "Db_Password": MASK}
    args = ["--api-key", "K1", "--hf-token=V2", "-t", "2"]
    assert secret_values(args, env, ["K9", None]) == {"K1", "V2", "a", "b", "K9"}


def test_redact_text_hides_known_values_and_secret_looking_flags() -> None:
    line = "starting: llama-server --api-key abc --hf-token=def -t 2 HF_TOKEN=ghi n_tokens=5 zzz"
    out = redact_text(line, ["zzz"])
    for secret in ("abc", "def", "ghi", "zzz"):
        assert secret not in out
    assert "-t 2" in out and "n_tokens=5" in out  # llama-server's own numbers stay


_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=6, max_size=24)
_flag = st.sampled_from(["--api-key", "--hf-token", "-hft", "--x-password", "--my-TOKEN"])


@given(
    secret=_secret,
    flag=_flag,
    inline=st.booleans(),
    before=st.lists(st.sampled_from(["-t", "2", "--jinja", "-ngl", "99"]), max_size=4),
)
def test_a_secret_value_never_survives(
    secret: str, flag: str, inline: bool, before: list[str]
) -> None:
    args = [*before, f"{flag}={secret}"] if inline else [*before, flag, secret]
    if secret in " ".join(before):
        return
    assert secret not in " ".join(redact_args(args))
    known = secret_values(args, {})
    assert secret not in redact_text(f"log: value {secret}!", known)


# --- everywhere it could show ---------------------------------------------------------------


def _secret_model(tmp_path: Path, fake_args: tuple[str, ...] = ()) -> ModelConfig:
    path = write_minimal_gguf(tmp_path / "models" / "sec.gguf")
    return ModelConfig(
        name="sec",
        path=path,
        ctx_size=512,
        parallel=1,
        args=("--hf-token", HF, "--fake-print-args", *fake_args),
        env={"MY_SERVICE_TOKEN": ENV_SECRET},
        api_key=API_KEY,
    )


def _assert_clean(text: str, where: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text, f"{secret} shows in {where}"


async def test_secrets_never_appear_in_models_status_logs_or_the_log_endpoint(
    aiohttp_client: MakeClient,
    tmp_path: Path,
    fake_server_bin: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base = make_config(tmp_path, fake_server_bin, models=0)
    config = replace(base, models=(_secret_model(tmp_path, ("--fake-crash-after", "1")),))
    client: Client = await aiohttp_client(create_app(config))
    resp = await client.post(f"{API}/models/sec/start", params={"wait": "true"})
    assert resp.status == 200, await resp.text()
    models = await (await client.get(f"{API}/models")).text()
    assert "--hf-token" in models and MASK in models
    _assert_clean(models, "/models")
    # The crash puts the last log lines into last_error.
    status = await _wait_state(client, "sec", "backoff")
    assert "exited with code 1" in status["last_error"]
    _assert_clean(await (await client.get(f"{API}/status")).text(), "/status")
    logs = await (await client.get(f"{API}/models/sec/logs", params={"lines": "200"})).json()
    text = "\n".join(logs["lines"])
    assert "starting:" in text and "MY_SERVICE_TOKEN" in text
    _assert_clean(text, "the log endpoint")
    _assert_clean((config.log_dir / "sec.log").read_text(), "the instance log file")
    await client.post(f"{API}/models/sec/stop")
    _assert_clean(caplog.text, "the service's own log")


async def test_a_log_written_before_redaction_is_redacted_on_read(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    base = make_config(tmp_path, fake_server_bin, models=0)
    config = replace(base, models=(_secret_model(tmp_path),))
    config.log_dir.mkdir(parents=True)
    (config.log_dir / "sec.log").write_text(
        f"--- old starting: llama-server --api-key *** --hf-token {HF}\n"
        f"env MY_SERVICE_TOKEN={ENV_SECRET}\nsaw key {API_KEY}\n"
    )
    client: Client = await aiohttp_client(create_app(config))
    logs = await (await client.get(f"{API}/models/sec/logs")).json()
    assert len(logs["lines"]) == 3
    _assert_clean("\n".join(logs["lines"]), "the log endpoint")


def test_cli_ps_models_and_logs_show_no_secret(tmp_path: Path, fake_server_bin: Path) -> None:
    from service_proc import start_service
    from test_cli import fake_config

    config = fake_config(tmp_path, fake_server_bin, models=0)
    model = _secret_model(tmp_path, ("--fake-crash-after", "1"))
    config["models"] = [
        {
            "name": model.name,
            "path": str(model.path),
            "ctx_size": 512,
            "parallel": 1,
            "args": list(model.args),
            "env": dict(model.env),
            "api_key": API_KEY,
        }
    ]
    config["restart"] = {"enabled": False}
    service = start_service(tmp_path / "svc", config)
    try:

        def cli(*args: str) -> str:
            result = subprocess.run(
                [sys.executable, "-m", "llama_exporter", *args, "--url", service.url],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            return result.stdout + result.stderr

        cli("start", "sec", "--wait")
        service.wait_state("sec", {"failed", "stopped"}, timeout=30)
        ps = cli("ps", "--all")
        assert "sec" in ps
        for out, where in ((ps, "ps"), (cli("models"), "models"), (cli("logs", "sec"), "logs")):
            _assert_clean(out, where)
    finally:
        service.stop()
    _assert_clean(service.log(), "the service's log")


def test_the_tail_of_an_api_key_that_llama_server_logs_is_hidden() -> None:
    line = "0.00.032.370 I srv  init_listene: api_keys: ****5F_U\n"
    assert redact_output(line.encode(), [b"SECRET"]) == (
        b"0.00.032.370 I srv  init_listene: api_keys: ***\n"
    )
    assert redact_output(b"key SECRET here\n", [b"SECRET"]) == b"key *** here\n"
    assert redact_text(line) == "0.00.032.370 I srv  init_listene: api_keys: ***\n"
    assert redact_text("api_keys: 2 keys loaded") == "api_keys: 2 keys loaded"
