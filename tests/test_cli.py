"""The command line and the service as a real process (fake llama-server children)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from promstack import free_port
from service_proc import ServiceProcess, http_json, start_service
from waiting import wait_until

from llama_exporter.testing.gguf_writer import write_minimal_gguf


def cli(
    *args: str, url: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m llama_exporter ARGS` and capture its output."""
    env = dict(os.environ)
    if url:
        env["LLAMA_EXPORTER_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "llama_exporter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def alive(pid: int) -> bool:
    """True if pid is a running process; a zombie counts as dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def fake_config(tmp: Path, fake_server_bin: Path, models: int = 2) -> dict[str, Any]:
    """Service config with fake models m0.. on the fake llama-server."""
    (tmp / "models").mkdir(parents=True, exist_ok=True)
    first = free_port()
    return {
        "llama_server": str(fake_server_bin),
        "ports": {"first": 21000 + first % 1000 * 10, "last": 21000 + first % 1000 * 10 + 9},
        "stop_grace": 3,
        "models": [
            {
                "name": f"m{i}",
                "path": str(write_minimal_gguf(tmp / "models" / f"m{i}.gguf")),
                "ctx_size": 1024,
                "parallel": 2,
            }
            for i in range(models)
        ],
    }


@pytest.fixture
def service(tmp_path: Path, fake_server_bin: Path) -> Iterator[ServiceProcess]:
    """The service as a process with two fake models."""
    svc = start_service(tmp_path, fake_config(tmp_path, fake_server_bin))
    yield svc
    svc.stop()


def test_check_config_accepts_a_good_file(tmp_path: Path, fake_server_bin: Path) -> None:
    config = tmp_path / "good.yaml"
    gguf = write_minimal_gguf(tmp_path / "a.gguf")
    config.write_text(f"llama_server: {fake_server_bin}\nmodels:\n  - name: a\n    path: {gguf}\n")
    result = cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "1 model(s): a" in result.stdout


def test_check_config_shows_budgets_and_says_a_gpu_needs_a_written_one(
    tmp_path: Path, fake_server_bin: Path
) -> None:
    """No NVML on this machine (nor a GPU): cuda0: auto cannot be resolved, and it says so."""
    config = tmp_path / "mem.yaml"
    config.write_text(f"llama_server: {fake_server_bin}\nmemory_budget: {{cpu: auto}}\n")
    result = cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "memory cpu " in result.stdout and "GiB" in result.stdout
    config.write_text(f"llama_server: {fake_server_bin}\nmemory_budget: {{cuda0: auto}}\n")
    result = cli("check-config", str(config))
    assert result.returncode == 2
    assert "memory_budget.cuda0" in result.stderr
    assert "llama-exporter[nvidia]" in result.stderr and "cuda0: 22GiB" in result.stderr


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("max_parallel: 0\n", "max_parallel", ""),
        ("max_paralel: 2\n", "max_paralel", "max_parallel"),
        ("models:\n  - name: a\n    path: /nope/a.gguf\n", "models[0].path", ""),
        ("llama_server: /nope/llama-server\n", "llama_server", ""),
        ("ports: {first: 100, last: 101}\n", "ports", ""),
        ("models: [}\n", "", "line"),
    ],
)
def test_check_config_names_file_key_and_problem(
    tmp_path: Path, fake_server_bin: Path, text: str, key: str, fragment: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        text if "llama_server" in text else f"llama_server: {fake_server_bin}\n{text}"
    )
    result = cli("check-config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert key in result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("via_flag", [False, True])
def test_serve_refuses_to_listen_beyond_loopback_without_a_token(
    tmp_path: Path, fake_server_bin: Path, via_flag: bool
) -> None:
    config = tmp_path / "open.yaml"
    port = free_port()
    host = "127.0.0.1" if via_flag else "0.0.0.0"
    config.write_text(
        f"llama_server: {fake_server_bin}\nstate_dir: {tmp_path / 'state'}\n"
        f"listen: {{host: {host}, port: {port}}}\n"
    )
    extra = ["--host", "0.0.0.0"] if via_flag else []
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_EXPORTER_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "llama_exporter", "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "api_token" in result.stderr
    assert "allow_unauthenticated" in result.stderr
    assert ("--host" if via_flag else "listen.host") in result.stderr
    assert "Traceback" not in result.stderr
    if not via_flag:
        check = cli("check-config", str(config))
        assert check.returncode == 2 and "api_token" in check.stderr


def test_client_commands_against_a_running_service(service: ServiceProcess) -> None:
    models = cli("models", url=service.url)
    assert models.returncode == 0, models.stderr
    assert "m0" in models.stdout and "m1" in models.stdout
    start = cli("start", "m0", "--wait", url=service.url)
    assert start.returncode == 0, start.stderr
    assert "ready" in start.stdout
    ps = cli("ps", url=service.url)
    assert ps.returncode == 0, ps.stderr
    lines = ps.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "PID"]
    assert "IN FLIGHT" in lines[0] and "IDLE" in lines[0]
    assert any(line.startswith("m0") and "ready" in line for line in lines)
    assert "1 of 4 running" in ps.stdout
    logs = cli("logs", "m0", "-n", "50", url=service.url)
    assert logs.returncode == 0, logs.stderr
    assert "starting: " in logs.stdout and "--metrics" in logs.stdout  # not just "no error"
    five = cli("logs", "m0", "-n", "5", url=service.url)
    assert 0 < len(five.stdout.splitlines()) <= 5
    unknown = cli("start", "nope", url=service.url)
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr
    stop = cli("stop", "m0", url=service.url)
    assert stop.returncode == 0
    assert "stopped" in stop.stdout


def test_add_with_gateway_settings_and_ps_shows_them(
    tmp_path: Path, service: ServiceProcess
) -> None:
    pin, ttl = (write_minimal_gguf(tmp_path / f"{n}.gguf") for n in ("pin", "ttl"))
    added = cli("add", "pin", str(pin), "--pinned", "--stop-drain", "2", url=service.url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"pin: registered ({pin}; pinned)"
    added = cli("add", "ttl", str(ttl), "--idle-ttl", "300", url=service.url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"ttl: registered ({ttl}; idle unload: 5m00s)"
    bad = cli("add", "bad", str(ttl), "--idle-ttl", "-1", url=service.url)
    assert bad.returncode == 2
    assert "--idle-ttl: must be 0 or more seconds, got -1" in bad.stderr
    _, body = http_json("GET", service.api + "/models")
    models = {m["name"]: m for m in body["models"]}
    assert (models["pin"]["pinned"], models["pin"]["stop_drain"]) == (True, 2.0)
    assert (models["ttl"]["pinned"], models["ttl"]["idle_ttl"]) == (False, 300.0)
    assert "bad" not in models
    for name in ("pin", "ttl"):
        assert cli("start", name, "--wait", url=service.url).returncode == 0
    ps = cli("ps", url=service.url)
    assert ps.returncode == 0, ps.stderr
    rows = {line.split()[0]: line for line in ps.stdout.splitlines()[1:-1]}
    assert rows["pin"].rstrip().endswith(", pinned")
    assert ", unload in 4m" in rows["ttl"] or ", unload in 5m00s" in rows["ttl"]


def test_client_says_when_no_service_answers() -> None:
    result = cli("ps", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "llama-exporter serve" in result.stderr


def _start_both(service: ServiceProcess) -> list[int]:
    pids = []
    for name in ("m0", "m1"):
        status, body = http_json("POST", service.api + f"/models/{name}/start?wait=true")
        assert status == 200, body
        pids.append(body["pid"])
    return pids


def test_sigterm_stops_every_instance_first(service: ServiceProcess) -> None:
    pids = _start_both(service)
    assert service.stop() == 0
    assert not any(alive(pid) for pid in pids)


def test_sigkill_of_the_service_leaves_no_llama_server(
    tmp_path: Path, fake_server_bin: Path
) -> None:
    config = fake_config(tmp_path, fake_server_bin)
    service = start_service(tmp_path, config)
    pids = _start_both(service)
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait()
    # The kernel's doing (PR_SET_PDEATHSIG); the limit only catches a hang.
    wait_until(lambda: not any(alive(pid) for pid in pids), "the llama-servers to be gone")
    # The next start finds nothing of its own left to clean and serves again.
    again = start_service(tmp_path, config, port=service.port)
    try:
        assert again.status("m0")["state"] == "stopped"
    finally:
        again.stop()


def test_a_second_service_on_the_same_state_dir_refuses_and_harms_nothing(
    service: ServiceProcess,
) -> None:
    pids = _start_both(service)
    second = cli("serve", "--config", str(service.config_file), "--port", str(free_port()))
    assert second.returncode == 2
    assert "another llama-exporter" in second.stderr
    assert str(service.state_dir) in second.stderr
    assert "Traceback" not in second.stderr
    assert all(alive(pid) for pid in pids)
    assert [service.status(m)["pid"] for m in ("m0", "m1")] == pids


def test_a_taken_port_is_a_clear_error(tmp_path: Path, service: ServiceProcess) -> None:
    result = cli(
        "serve",
        "--config",
        str(service.config_file),
        "--port",
        str(service.port),
        timeout=30,
    )
    # The state folder is locked first: either message is clear, neither is a traceback.
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    other = tmp_path / "other.yaml"
    other.write_text(
        service.config_file.read_text().replace(
            str(service.state_dir), str(tmp_path / "other-state")
        )
    )
    result = cli("serve", "--config", str(other), "--port", str(service.port), timeout=30)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{service.port}" in result.stderr


def test_sigterm_is_not_held_up_by_an_open_websocket(service: ServiceProcess) -> None:
    pids = _start_both(service)

    async def watch_then_terminate() -> int | None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(service.api + "/ws") as ws,
        ):
            await ws.receive(timeout=5)
            service.proc.send_signal(signal.SIGTERM)
            while True:
                msg = await ws.receive(timeout=20)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return ws.close_code

    code = asyncio.run(watch_then_terminate())
    assert code == aiohttp.WSCloseCode.GOING_AWAY
    assert service.proc.wait(timeout=20) == 0
    assert not any(alive(pid) for pid in pids)


def test_ps_idle_column_shows_idle_time_ttl_left_and_pinned() -> None:
    from llama_exporter.cli.fmt import fmt_idle

    base = {"state": "ready", "in_flight": 0, "pinned": False, "idle_ttl": 0, "last_used": 100.0}
    assert fmt_idle(base, 130.0) == "30s"
    assert fmt_idle({**base, "idle_ttl": 300}, 130.0) == "30s, unload in 4m30s"
    assert fmt_idle({**base, "pinned": True, "idle_ttl": 300}, 130.0) == "30s, pinned"
    assert fmt_idle({**base, "in_flight": 2}, 130.0) == "busy"
    assert fmt_idle({**base, "last_used": None}, 130.0) == "unused"
    assert fmt_idle({**base, "state": "stopped"}, 130.0) == "-"


def test_models_and_ps_show_the_memory_figures(
    tmp_path: Path, fake_server_bin: Path, gemma_gguf: Path
) -> None:
    """NEEDS is the estimate (the real gemma header; the fake server loads nothing)."""
    config = {
        "llama_server": str(fake_server_bin),
        "memory_budget": {"cpu": "2GiB"},
        "models": [{"name": "g", "path": str(gemma_gguf), "ctx_size": 2048, "parallel": 2}],
    }
    service = start_service(tmp_path, config)
    try:
        _, body = wait_until(
            lambda: (
                (r := http_json("GET", service.api + "/models"))[1]["models"][0]["memory"][
                    "estimate_bytes"
                ]
                and r
            ),
            "the estimate",
        )
        estimate = body["models"][0]["memory"]["estimate_bytes"]
        models = cli("models", url=service.url)
        header, row = models.stdout.splitlines()[:2]
        assert "NEEDS" in header and "REPORTED" in header
        assert f"{estimate / 1024**2:.1f} MB" in row, (estimate, row)
        assert cli("start", "g", "--wait", url=service.url).returncode == 0
        ps = cli("ps", url=service.url)
        assert ps.returncode == 0, ps.stderr
        assert "NEEDS" in ps.stdout.splitlines()[0]
        assert "memory cpu: " in ps.stdout and "reserved of 2.0 GB" in ps.stdout, ps.stdout
    finally:
        service.stop()
