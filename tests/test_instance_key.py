"""The instance key: its file (made once, 0600, atomic), the command line and env, readers."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from promstack import free_port
from test_cli import cli

from llama_exporter.config.env import instance_exposure_warning
from llama_exporter.config.settings import ModelConfig
from llama_exporter.gateway.proxy import response_headers, upstream_headers
from llama_exporter.supervision.command import build_argv, child_env, reader_key
from llama_exporter.supervision.instance_key import (
    KEY_FILE,
    MIN_KEY_CHARS,
    InstanceKey,
    InstanceKeyError,
    check_key_text,
    load_or_create_instance_key,
)
from llama_exporter.supervision.process import LlamaProcess, health_status

MakeServer = Callable[..., Awaitable[TestServer]]


def test_made_once_with_mode_0600_and_32_random_bytes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_instance_key(state)
    assert key.path == state / KEY_FILE
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert key.path.read_text() == key.value + "\n"
    assert len(key.value) >= 43  # token_urlsafe(32): 32 bytes in base64url
    assert load_or_create_instance_key(state) == key  # reused, not replaced
    assert [p.name for p in state.iterdir()] == [KEY_FILE]  # no temp file left behind
    assert load_or_create_instance_key(tmp_path / "other").value != key.value


def test_the_value_is_not_in_the_repr(tmp_path: Path) -> None:
    key = load_or_create_instance_key(tmp_path)
    assert key.value not in repr(key) and str(key.path) in repr(key)


def test_concurrent_creators_all_get_the_one_key(tmp_path: Path) -> None:
    found: list[str] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        found.append(load_or_create_instance_key(tmp_path).value)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 1 and (tmp_path / KEY_FILE).read_text().strip() == found[0]


def test_an_existing_key_is_reused_and_its_mode_narrowed(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_text("k" * MIN_KEY_CHARS + "\n")
    path.chmod(0o644)
    key = load_or_create_instance_key(tmp_path)
    assert key == InstanceKey(path, "k" * MIN_KEY_CHARS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "is empty"),
        ("  \n", "is empty"),
        ("short\n", "at least 32"),
        ("a" * 40 + "\n" + "b" * 40, "one key on one line"),
        ("a" * 20 + " " + "b" * 20, "one key on one line"),
        ("#" + "a" * 40, "one key on one line"),
    ],
)
def test_an_unusable_key_file_is_refused_with_what_to_do(
    tmp_path: Path, text: str, words: str
) -> None:
    (tmp_path / KEY_FILE).write_text(text)
    with pytest.raises(InstanceKeyError) as err:
        load_or_create_instance_key(tmp_path)
    message = str(err.value)
    assert words in message and str(tmp_path / KEY_FILE) in message and "delete it" in message


def test_an_unwritable_state_dir_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        state = blocker / "state"  # a folder under a regular file: fails for root too
    else:
        tmp_path.chmod(0o500)
        state = tmp_path / "state"
    with pytest.raises(InstanceKeyError, match="state_dir"):
        load_or_create_instance_key(state)


@given(
    st.text(min_size=MIN_KEY_CHARS, alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E))
)
def test_any_long_printable_word_is_a_usable_key(word: str) -> None:
    expected = "must hold one key" if word.startswith("#") else None
    problem = check_key_text(word + "\n")
    assert (problem is None) if expected is None else (expected in str(problem))


MODEL = ModelConfig("g", Path("/m/g.gguf"), args=("-t", "2"))
KEY = InstanceKey(Path("/state/instance.key"), "S" * 43)


def test_the_key_file_and_cors_go_on_the_command_line_never_a_key() -> None:
    argv = build_argv("llama-server", MODEL, "127.0.0.1", 1, KEY.path)
    joined = " ".join(argv)
    assert "--api-key-file /state/instance.key --cors-origins none --no-cors-credentials" in joined
    assert argv[-2:] == ["-t", "2"]  # the model's args last: they may override CORS
    own = ModelConfig("g", Path("/g.gguf"), api_key="OWN")
    assert "OWN" not in build_argv("llama-server", own, "h", 1, KEY.path)
    assert "--api-key" not in build_argv("llama-server", own, "h", 1, None)
    assert "--api-key-file" not in build_argv("llama-server", MODEL, "h", 1, None)


def test_a_models_own_key_goes_in_the_environment() -> None:
    own = ModelConfig("g", Path("/g.gguf"), api_key="OWN", env={"A": "1"})
    assert child_env(own, {"PATH": "/bin"}) == {"PATH": "/bin", "A": "1", "LLAMA_API_KEY": "OWN"}
    assert child_env(MODEL, {"PATH": "/bin"}) is None  # ours, unchanged
    with_env = ModelConfig("g", Path("/g.gguf"), env={"A": "1"})
    assert child_env(with_env, {"PATH": "/bin"}) == {"PATH": "/bin", "A": "1"}


def test_readers_send_the_models_own_key_first() -> None:
    own = ModelConfig("g", Path("/g.gguf"), api_key="OWN")
    assert reader_key(own, KEY) == "OWN"
    assert reader_key(MODEL, KEY) == KEY.value
    assert reader_key(own, None) == "OWN"
    assert reader_key(MODEL, None) is None


@pytest.mark.parametrize(
    ("host", "auth", "warned"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),
        ("192.168.1.5", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_no_key_beyond_loopback_is_warned_about(host: str, auth: bool, warned: bool) -> None:
    warning = instance_exposure_warning(host, auth)
    assert (warning is not None) is warned
    if warning is not None:
        assert host in warning and "instance_auth: true" in warning


@pytest.mark.parametrize(("auth", "warned"), [("false", True), ("true", False)])
def test_check_config_warns_without_the_key_beyond_loopback(
    tmp_path: Path, fake_server_bin: Path, auth: str, warned: bool
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"llama_server: {fake_server_bin}\nstate_dir: {tmp_path / 'state'}\n"
        f"instance_auth: {auth}\ninstance_host: 0.0.0.0\n"
    )
    result = cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    warning = "warning: instance_auth is false and instance_host is 0.0.0.0"
    assert (warning in result.stderr) is warned, result.stderr


async def test_a_keyed_instance_requires_either_key_and_shows_neither(
    fake_server_bin: Path, tmp_path: Path
) -> None:
    key = load_or_create_instance_key(tmp_path / "state")
    own = ModelConfig("m", tmp_path / "m.gguf", api_key="OWN-" + "o" * 40)
    port = free_port()
    log_file = tmp_path / "m.log"
    proc = await LlamaProcess.spawn(
        fake_server_bin, own, "127.0.0.1", port, log_file, instance_key=key
    )
    try:
        await proc.wait_ready(30)
        assert await proc.health(1.0)
        async with aiohttp.ClientSession() as session:

            async def slots(token: str | None) -> int:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with session.get(f"http://127.0.0.1:{port}/slots", headers=headers) as r:
                    return r.status

            assert await slots(None) == 401
            assert await slots("wrong") == 401
            assert await slots(key.value) == 200
            assert await slots(own.api_key) == 200
        cmdline = await asyncio.to_thread(Path(f"/proc/{proc.pid}/cmdline").read_bytes)
        assert key.value.encode() not in cmdline and b"OWN-" not in cmdline
        assert str(key.path).encode() in cmdline
    finally:
        await proc.stop(5)
    text = await asyncio.to_thread(log_file.read_text)
    assert key.value not in text and "OWN-" not in text and "--api-key-file ***" in text


async def test_the_health_probe_sends_the_key(aiohttp_server: MakeServer) -> None:
    seen: list[str | None] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    assert server.port is not None
    assert await health_status("127.0.0.1", server.port, 5.0, api_key="K") == 200
    assert await health_status("127.0.0.1", server.port, 5.0) == 200
    assert seen == ["Bearer K", None]


async def test_the_gateway_passes_no_cors_header_of_an_instance() -> None:
    upstream = {"Access-Control-Allow-Origin": "none", "Content-Type": "application/json"}
    headers = upstream_headers({"Origin": "https://evil.example", "X-A": "1"}, "K")
    assert headers["Authorization"] == "Bearer K" and "Origin" not in headers
    assert response_headers(upstream) == {"Content-Type": "application/json"}
