"""Throwaway Prometheus and Alertmanager processes running the project's configuration.

    prom = start_prometheus(tmp_path, targets_dir=targets, alertmanager_port=None)
    try:
        prom.wait_for(lambda: prom.query('up{job="llama-exporter"} == 1'), timeout=15)
    finally:
        prom.stop()

start_prometheus() copies prometheus/prometheus.yml and prometheus/rules/ into a folder
of its own, points the file_sd files at ``targets_dir`` and the Alertmanager at the
given port (or drops alerting), and waits for /-/ready. Binaries: ``prometheus``,
``promtool``, ``prometheus-alertmanager`` on PATH, or PROMETHEUS_BIN, PROMTOOL_BIN,
ALERTMANAGER_BIN. A missing binary skips the test locally and fails it when
LLAMA_EXPORTER_REQUIRE_REAL is set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import pytest
import yaml
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
INSTANCE_KEY_FILE = "keys/instance.key"  # the llama-server job's credentials_file

T = TypeVar("T")

_BINARIES = {
    "prometheus": ("PROMETHEUS_BIN", "prometheus"),
    "promtool": ("PROMTOOL_BIN", "promtool"),
    "alertmanager": ("ALERTMANAGER_BIN", "prometheus-alertmanager"),
}


def require_real() -> bool:
    """True when missing real components must fail the run instead of skipping."""
    return os.environ.get("LLAMA_EXPORTER_REQUIRE_REAL", "") not in ("", "0")


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (LLAMA_EXPORTER_REQUIRE_REAL set) for a missing component."""
    if require_real():
        pytest.fail(f"{what} (LLAMA_EXPORTER_REQUIRE_REAL is set: this must not skip)")
    pytest.skip(what)


def find_binary(kind: str) -> str | None:
    """Path of prometheus / promtool / alertmanager, or None."""
    env, name = _BINARIES[kind]
    explicit = os.environ.get(env)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which(name) or (shutil.which("alertmanager") if kind == "alertmanager" else None)
    return found


def require_binary(kind: str) -> str:
    """Path of the binary, or skip/fail the calling test."""
    found = find_binary(kind)
    if found is None:
        env, name = _BINARIES[kind]
        missing(
            f"{name} not found: apt-get install prometheus prometheus-alertmanager or set {env}"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET url; (status, body), HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_post(url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """POST JSON (or nothing) to url; (status, body), HTTP errors included."""
    data = b"" if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def write_targets(path: Path, addresses: list[str], labels: dict[str, str] | None = None) -> None:
    """Write a file_sd file with one target group, atomically (as the service does)."""
    groups = [{"targets": addresses, "labels": labels or {}}] if addresses else []
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)


class _Daemon:
    """A child process serving HTTP on 127.0.0.1:port, logging to a file."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
            )

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the process's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for GET /-/ready to answer 200; raise with the log if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if http_get(self.url + "/-/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL on timeout; always reaped."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PromHandle(_Daemon):
    """A running Prometheus and a small client for its HTTP API."""

    config_path: Path

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; the "data" member, or RuntimeError on an error answer."""
        query = "?" + urllib.parse.urlencode(params) if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise RuntimeError(f"{path} {params}: HTTP {status}: {payload}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: list of {"metric": {...}, "value": [ts, "v"]} (scalars as one item)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{expr}: {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def targets(self, state: str = "active") -> list[dict[str, Any]]:
        """Active (default) or dropped scrape targets."""
        data = self.api("targets", {"state": state})
        key = "activeTargets" if state == "active" else "droppedTargets"
        found: list[dict[str, Any]] = data[key]
        return found

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def rules(self) -> list[dict[str, Any]]:
        """Rule groups with each rule's health and state."""
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def alertmanagers(self) -> list[str]:
        """URLs of the Alertmanagers Prometheus sends to."""
        data = self.api("alertmanagers")
        return [str(am["url"]) for am in data["activeAlertmanagers"]]

    def reload(self) -> None:
        """Re-read the configuration (needs --web.enable-lifecycle, which we pass)."""
        status, body = http_post(self.url + "/-/reload")
        if status != 200:
            raise RuntimeError(f"reload: HTTP {status}: {body!r}")

    def wait_for_data(self, queries: list[tuple[str, str, str]], *, timeout: float) -> None:
        """Poll every (title, expr, unit) until it answers at least one series; fail on NaN,
        negative values, ratios above 1, or queries still empty at the timeout."""
        pending = {(title, expr): unit for title, expr, unit in queries}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for (title, expr), unit in list(pending.items()):
                result = self.query(expr)
                if not result:
                    continue
                for series in result:
                    value = float(series["value"][1])
                    assert value == value, (title, expr, series)  # not NaN
                    assert value >= 0, (title, expr, series)
                    if unit == "percentunit" or expr.endswith("ratio"):
                        assert value <= 1.0, (title, expr, series)
                del pending[(title, expr)]
            time.sleep(2)
        assert not pending, f"queries without data: {sorted(pending)}"

    def wait_for(
        self, predicate: Callable[[], T | None], *, timeout: float = 20.0, what: str = ""
    ) -> T:
        """wait_until() at Prometheus's pace, failing with Prometheus's log tail attached."""
        try:
            return wait_until(predicate, what, limit=timeout, step=0.25)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- prometheus log ---\n{self.log_tail()}") from None


class AMHandle(_Daemon):
    """A running Alertmanager."""

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2)."""
        status, body = http_get(self.url + "/api/v2/alerts")
        if status != 200:
            raise RuntimeError(f"alerts: HTTP {status}: {body!r}")
        found: list[dict[str, Any]] = json.loads(body)
        return found

    def post_alert(self, labels: dict[str, str], annotations: dict[str, str] | None = None) -> None:
        """Push one firing alert straight into Alertmanager (for testing the receiver)."""
        status, body = http_post(
            self.url + "/api/v2/alerts", [{"labels": labels, "annotations": annotations or {}}]
        )
        if status != 200:
            raise RuntimeError(f"post alert: HTTP {status}: {body!r}")


def prometheus_config(
    targets_dir: Path, alertmanager_port: int | None, instance_key: Path | None = None
) -> dict[str, Any]:
    """The project's prometheus.yml, with file_sd files in targets_dir and the given AM.

    instance_key: the service's <state_dir>/instance.key, which the llama-server job's
    credentials_file then names (Prometheus runs as our user here: no copy is needed).
    """
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(targets_dir / Path(name).name) for name in sd["files"]]
        auth = job.get("authorization", {})
        if instance_key is not None and auth.get("credentials_file") == INSTANCE_KEY_FILE:
            auth["credentials_file"] = str(instance_key)
    if alertmanager_port is None:
        config.pop("alerting", None)
    else:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        }
    return config


def start_prometheus(
    tmp: Path,
    *,
    targets_dir: Path,
    alertmanager_port: int | None,
    instance_key: Path | None = None,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> PromHandle:
    """Start Prometheus with the project's config and rules in tmp/prometheus; wait for ready.

    instance_key: the service's key file, for scraping its llama-servers (see
    prometheus_config).
    """
    workdir = tmp / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(RULES_DIR, workdir / "rules", dirs_exist_ok=True)
    config_path = workdir / "prometheus.yml"
    if instance_key is None:  # targets that need no key: any file the job can read
        (workdir / INSTANCE_KEY_FILE).parent.mkdir(exist_ok=True)
        (workdir / INSTANCE_KEY_FILE).write_text("no-instance-key-in-this-test\n")
    config = prometheus_config(targets_dir, alertmanager_port, instance_key)
    config_path.write_text(yaml.safe_dump(config))
    return run_prometheus(config_path, port=port, extra_args=extra_args, timeout=timeout)


def run_prometheus(
    config_path: Path,
    *,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> PromHandle:
    """Start Prometheus on a config file as it is (data and log beside it); wait for ready."""
    binary = require_binary("prometheus")
    workdir = config_path.parent
    port = port or free_port()
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        *extra_args,
    ]
    handle = PromHandle("prometheus", argv, port, workdir)
    handle.config_path = config_path
    handle.wait_ready(timeout)
    return handle


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """One webhook receiver, no waiting: every alert is sent within about a second."""
    return {
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname", "host", "model"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
    }


def start_alertmanager(
    tmp: Path, webhook_url: str, *, port: int | None = None, timeout: float = 30.0
) -> AMHandle:
    """Start Alertmanager (gossip off) sending to webhook_url; wait for ready."""
    binary = require_binary("alertmanager")
    workdir = tmp / "alertmanager"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
    port = port or free_port()
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    handle = AMHandle("alertmanager", argv, port, workdir)
    handle.wait_ready(timeout)
    return handle


class WebhookSink:
    """An HTTP server on 127.0.0.1 keeping every JSON body POSTed to it (a webhook receiver)."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        received = self.received
        lock = threading.Lock()
        self._lock = lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with lock:
                    received.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self) -> list[Any]:
        """A copy of what was received so far."""
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
