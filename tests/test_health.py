"""Liveness (/healthz) and readiness (/readyz): the pure verdicts, the state-folder probe,
and both routes in process (start-up done, state folder gone and back, shutting down)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_api import make_config

from llama_exporter.http.app import create_app
from llama_exporter.http.health import OK, Startup, probe_writable, readiness
from llama_exporter.http.keys import SUPERVISOR

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.mark.parametrize("loaded", [False, True])
@pytest.mark.parametrize("started", [False, True])
@pytest.mark.parametrize("error", [None, "Permission denied"])
@pytest.mark.parametrize("shutting_down", [False, True])
def test_readiness_names_each_check_that_fails(
    loaded: bool, started: bool, error: str | None, shutting_down: bool
) -> None:
    checks = readiness(
        Startup(config_loaded=loaded, supervisor_started=started),
        state_dir_error=error,
        shutting_down=shutting_down,
    )
    assert set(checks) == {"config", "state_dir", "supervisor"}
    assert (checks["config"] == OK) is loaded
    assert (checks["state_dir"] == OK) is (error is None)
    assert (checks["supervisor"] == OK) is (started and not shutting_down)
    if error is not None:
        assert error in checks["state_dir"]
    if shutting_down:
        assert "shutting down" in checks["supervisor"]


def test_probe_writable(tmp_path: Path) -> None:
    assert probe_writable(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    assert probe_writable(tmp_path / "missing") is not None
    (tmp_path / "file").write_text("x")
    assert probe_writable(tmp_path / "file") is not None


async def test_readyz_and_healthz_over_http(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    # The state folder is reached through a symbolic link, so the test can swap what is
    # there in one atomic step: the service's own writers (the targets files, written in a
    # thread after start-up) recreate a missing folder, and would race a rename-and-write.
    real = tmp_path / "state"
    real.mkdir()
    link = tmp_path / "state-link"
    link.symlink_to(real)

    def point_state_dir_at(target: Path) -> None:
        swap = tmp_path / "state-link.new"
        swap.symlink_to(target)
        os.replace(swap, link)

    config = dataclasses.replace(make_config(tmp_path, fake_server_bin, token="T"), state_dir=link)
    client = await aiohttp_client(create_app(config))
    resp = await client.get("/readyz")  # no token needed, like /healthz
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {"status": "ready", "checks": dict.fromkeys(body["checks"], OK)}
    assert set(body["checks"]) == {"config", "state_dir", "supervisor"}

    # The state folder goes away (a file in its place): not ready, and it says why.
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("not a folder")
    point_state_dir_at(not_a_folder)
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503, body
    assert body["error"]["code"] == 503
    assert body["error"]["message"].startswith("not ready: state_dir: not writable")
    assert str(config.state_dir) not in body["error"]["message"]  # no path to the public
    assert body["error"]["checks"]["config"] == OK
    assert body["error"]["checks"]["supervisor"] == OK
    assert (await client.get("/healthz")).status == 200  # alive all the same
    point_state_dir_at(real)
    assert (await client.get("/readyz")).status == 200

    await client.app[SUPERVISOR].shutdown()
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503
    assert "supervisor: the service is shutting down" in body["error"]["message"]
    assert (await client.get("/healthz")).status == 200
