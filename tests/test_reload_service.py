"""Config reload triggers on the service as a process: SIGHUP, `llama-exporter reload`,
`serve --watch-config` (fake llama-server children)."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_proc import ServiceProcess, http_json, http_text, start_service
from test_cli import cli, fake_config
from waiting import wait_until

from llama_exporter.reload.watch import Debounce, look
from llama_exporter.testing.gguf_writer import write_minimal_gguf


def write(svc: ServiceProcess, data: dict[str, Any]) -> None:
    """Replace the file at once, as a deploy tool does (a reload may read it any time)."""
    temp = svc.config_file.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump(data))
    temp.replace(svc.config_file)


def current(svc: ServiceProcess) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(svc.config_file.read_text())
    return data


def models(svc: ServiceProcess) -> dict[str, dict[str, Any]]:
    _, body = http_json("GET", svc.api + "/models")
    return {m["name"]: m for m in body["models"]}


def reloads(svc: ServiceProcess, result: str) -> float:
    for line in http_text(svc.url + "/metrics").splitlines():
        if line.startswith('llama_exporter_config_reloads_total{host="') and result in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no config_reloads_total")


def instance_n_ctx(svc: ServiceProcess, model: str) -> int:
    """The running instance's own context per slot (its /props)."""
    url = svc.status(model)["url"]
    request = urllib.request.Request(url + "/props", headers=svc.instance_auth())
    with urllib.request.urlopen(request, timeout=10) as resp:
        props = json.loads(resp.read())
    return int(props["default_generation_settings"]["n_ctx"])


@pytest.fixture
def service(tmp_path: Path, fake_server_bin: Path) -> Iterator[ServiceProcess]:
    svc = start_service(tmp_path, fake_config(tmp_path, fake_server_bin))
    yield svc
    svc.stop()


def test_three_sighups_in_a_row_converge_on_the_last_file(service: ServiceProcess) -> None:
    assert http_json("POST", service.api + "/models/m0/start?wait=true")[0] == 200
    data = current(service)
    for ctx in (2048, 3072, 4096):
        data["models"][0]["ctx_size"] = ctx
        write(service, data)
        service.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: models(service)["m0"]["ctx_size"] == 4096, "the last file's ctx_size")

    def runs_last() -> bool:
        st = service.status("m0")
        return st["state"] == "ready" and instance_n_ctx(service, "m0") == 4096 // 2

    wait_until(runs_last, "m0 running with the last file's ctx_size")
    assert reloads(service, "failure") == 0
    assert service.proc.poll() is None


def test_cli_reload_and_a_refused_file(service: ServiceProcess) -> None:
    data = current(service)
    data["max_parallel"] = 2
    write(service, data)
    done = cli("reload", url=service.url)
    assert done.returncode == 0, done.stderr
    assert "max_parallel" in done.stdout
    data["listen"]["port"] = data["listen"]["port"] + 1
    write(service, data)
    refused = cli("reload", url=service.url)
    assert refused.returncode == 2
    assert "listen.port" in refused.stderr and "service restart" in refused.stderr
    assert str(service.config_file) in refused.stderr
    assert "reload failed" in service.log() and "listen.port" in service.log()


def test_watch_config_follows_the_file_and_model_dirs(
    tmp_path: Path, fake_server_bin: Path
) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    config = {**fake_config(tmp_path, fake_server_bin), "model_dirs": [str(folder)]}
    svc = start_service(tmp_path, config, args=("--watch-config",))
    try:
        data = current(svc)
        data["models"][1]["pinned"] = True
        write(svc, data)
        wait_until(lambda: models(svc)["m1"]["pinned"], "the edit applied by the watcher")
        write_minimal_gguf(folder / "found.gguf")
        wait_until(lambda: "found" in models(svc), "a GGUF file added to model_dirs")
        assert models(svc)["found"]["source"] == "discovered"
        (folder / "found.gguf").unlink()
        wait_until(lambda: "found" not in models(svc), "a GGUF file removed from model_dirs")
        assert reloads(svc, "success") >= 3
    finally:
        svc.stop()


def test_debounce_fires_once_after_a_quiet_spell() -> None:
    d = Debounce(("a",), quiet=0.3)
    assert not d.feed(("a",), 0.0)
    assert not d.feed(("b",), 1.0)  # changed: wait for quiet
    assert not d.feed(("c",), 1.1)  # still being written
    assert not d.feed(("c",), 1.3)
    assert d.feed(("c",), 1.45)  # 0.35 s without a change
    assert not d.feed(("c",), 2.0)  # once


def test_look_sees_the_file_and_gguf_names(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("a: 1\n")
    first = look(config, [tmp_path])
    (tmp_path / "x.gguf").write_bytes(b"")
    second = look(config, [tmp_path])
    assert first != second
    (tmp_path / "notes.txt").write_text("x")
    assert look(config, [tmp_path]) == second
    config.unlink()
    assert look(config, [tmp_path])[0] is None
