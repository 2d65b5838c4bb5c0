"""Run `llama-exporter serve` as a real child process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from promstack import free_port
from waiting import wait_until


def http_json(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body) for success and HTTP errors alike."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def http_text(url: str, timeout: float = 10.0) -> str:
    """GET a URL and return the body as text."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


@dataclass
class ServiceProcess:
    """A running service: its process, URL, config and state folder."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    state_dir: Path
    config_file: Path
    log_file: Path

    @property
    def api(self) -> str:
        return self.url + "/api/v1/llama"

    @property
    def instance_key(self) -> str:
        """The key every llama-server of this service requires (<state_dir>/instance.key)."""
        return (self.state_dir / "instance.key").read_text().strip()

    def instance_auth(self) -> dict[str, str]:
        """The header a test sends when it talks to one of the service's llama-servers."""
        return {"Authorization": f"Bearer {self.instance_key}"}

    def status(self, model: str) -> dict[str, Any]:
        """The service's status entry for one model."""
        _, body = http_json("GET", self.api + "/status")
        for entry in body["models"]:
            if entry["model"] == model:
                result: dict[str, Any] = entry
                return result
        raise KeyError(model)

    def wait_state(self, model: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
        """The model's status once it is in one of `states`."""

        def reached() -> dict[str, Any] | None:
            st = self.status(model)
            return st if st["state"] in states else None

        return wait_until(reached, f"{model} to be in {states}", limit=timeout)

    def log(self) -> str:
        """What the service printed so far."""
        return self.log_file.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_service(
    tmp: Path,
    config: dict[str, Any],
    *,
    port: int | None = None,
    timeout: float = 60.0,
    args: tuple[str, ...] = (),
) -> ServiceProcess:
    """Write the config, start `python -m llama_exporter serve`, wait for /healthz."""
    port = port or free_port()
    state_dir = tmp / "state"
    config = {"listen": {"host": "127.0.0.1", "port": port}, "state_dir": str(state_dir), **config}
    tmp.mkdir(parents=True, exist_ok=True)
    config_file = tmp / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = tmp / "service.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_exporter", "serve", "--config", str(config_file), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    service = ServiceProcess(
        proc, f"http://127.0.0.1:{port}", port, state_dir, config_file, log_file
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode}:\n{service.log()}")
        try:
            return http_json("GET", service.url + "/healthz", timeout=1)[0] == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(healthy, "the service to answer /healthz", limit=timeout)
    except AssertionError as err:
        if proc.poll() is None:  # not healthy in time: stop it, and say what it printed
            service.stop()
            raise AssertionError(f"{err}\n{service.log()}") from None
        raise
    return service
