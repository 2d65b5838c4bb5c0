"""A fleet end to end, all real: three services as separate processes on loopback (hosts
a, b, c, each with its own state folder, port and real llama-server on the real gemma
model; a and b run the same model name), and one real Prometheus running
prometheus/fleet.example.yml as shipped, with its host list and token file beside it
and its per-host entries written by scripts/fleet_config.py (the user's own step).

One module-scoped fleet; the test that kills host b's service brings it back (same port,
state folder and model) before it ends, so any test runs alone or in any order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promstack import PromHandle, require_binary, run_prometheus
from service_proc import ServiceProcess, start_service
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "grafana"))
import gateway_panels  # noqa: E402
import generate  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.prometheus]

TOKEN = "fleet-api-token"  # starts models, and the gateway's OpenAI key
SCRAPE_TOKEN = "fleet-scrape-token"  # Prometheus's: /metrics and HTTP SD only
# The instance key of every host (each service reuses the key it finds in its state folder).
INSTANCE_KEY = "fleet-instance-key-" + "k" * 32
HOSTS = {"a": "gemma", "b": "gemma", "c": "gemma-c"}  # a and b: the same model name
DISCOVERY_GOAL = 10.0  # seconds, reported (not asserted: these machines are noisy)


@dataclass
class Fleet:
    """Everything the fleet tests share."""

    services: dict[str, ServiceProcess]  # the current process of each host (revive() replaces)
    prom: PromHandle
    ports: dict[str, int]  # host -> its llama-server's port
    discovery: dict[str, float]  # host -> seconds from ready to discovered and scraped


def request(method: str, url: str, timeout: float = 180.0) -> tuple[int, Any]:
    """A request with the fleet's bearer token; (status, JSON body)."""
    req = urllib.request.Request(url, method=method)  # no body: nothing to declare
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def write_fleet_config(workdir: Path, services: dict[str, ServiceProcess]) -> Path:
    """fleet.example.yml as shipped, with a host list and a token file beside it."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "fleet.yml"
    shutil.copy(ROOT / "prometheus" / "fleet.example.yml", config)
    shutil.copytree(ROOT / "prometheus" / "rules", workdir / "rules")
    hosts = [
        {"targets": [f"127.0.0.1:{service.port}"], "labels": {"host": host}}
        for host, service in services.items()
    ]
    (workdir / "fleet-hosts.yml").write_text(yaml.safe_dump(hosts))
    (workdir / "fleet-token").write_text(SCRAPE_TOKEN + "\n")
    (workdir / "fleet-token").chmod(0o600)
    (workdir / "fleet-instance.key").write_text(INSTANCE_KEY + "\n")
    (workdir / "fleet-instance.key").chmod(0o600)
    script = ROOT / "scripts" / "fleet_config.py"
    subprocess.run([sys.executable, str(script), str(config)], check=True, timeout=60)
    check = subprocess.run(
        [require_binary("promtool"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return config


def service_config(
    host: str, index: int, llama_server_bin: Path, gemma_gguf: Path
) -> dict[str, Any]:
    """One host's service: its own host label, token, instance ports and model."""
    first = 18500 + 20 * index  # distinct instance ports per service
    return {
        "llama_server": str(llama_server_bin),
        "host_label": host,
        "api_token": TOKEN,
        "scrape_token": SCRAPE_TOKEN,
        "max_parallel": 1,
        "ports": {"first": first, "last": first + 19},
        "poll": {"interval": 1.0},
        "restart": {"max_retries": 0},
        "models": [
            {
                "name": HOSTS[host],
                "path": str(gemma_gguf),
                "ctx_size": 512,  # three llama-servers on 2 cores: keep them small
                "parallel": 2,
                "args": ["--threads", "1"],
            }
        ],
    }


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Fleet]:
    """Three services, then Prometheus on the fleet config, then the three models started."""
    tmp = tmp_path_factory.mktemp("fleet")
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, even on failure
        services: dict[str, ServiceProcess] = {}
        # Whichever process each host has at the end (a test may have replaced one).
        cleanup.callback(lambda: [service.stop() for service in services.values()])
        for index, host in enumerate(HOSTS):
            config = service_config(host, index, llama_server_bin, gemma_gguf)
            state = tmp / host / "state"  # start_service's state folder
            state.mkdir(parents=True)
            (state / "instance.key").write_text(INSTANCE_KEY + "\n")
            (state / "instance.key").chmod(0o600)
            services[host] = start_service(tmp / host, config)
        prom = cleanup.enter_context(run_prometheus(write_fleet_config(tmp / "prom", services)))

        ready_at: dict[str, float] = {}
        ports: dict[str, int] = {}
        errors: list[str] = []

        def start(host: str) -> None:
            try:
                ports[host] = start_model(services[host], host)
            except AssertionError as err:
                errors.append(str(err))
                return
            ready_at[host] = time.monotonic()

        threads = [threading.Thread(target=start, args=(host,)) for host in HOSTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors

        # Discovery, measured per instance from "ready" to "scraped with its host label".
        discovery: dict[str, float] = {}

        def discovered() -> bool:
            for host, model in HOSTS.items():
                if host in discovery:
                    continue
                query = f'up{{job="llama-server",host="{host}",model="{model}"}} == 1'
                if prom.query(query):
                    discovery[host] = time.monotonic() - ready_at[host]
            return len(discovery) == len(HOSTS)

        prom.wait_for(discovered, timeout=120, what="every llama-server discovered")
        figures = ", ".join(f"{h} {s:.1f} s" for h, s in sorted(discovery.items()))
        print(f"\nfleet discovery, ready -> scraped (goal {DISCOVERY_GOAL:.0f} s): {figures}")
        yield Fleet(services, prom, ports, discovery)


def start_model(service: ServiceProcess, host: str) -> int:
    """Start host's model and wait until it is ready; its llama-server's port."""
    status, body = request("POST", f"{service.api}/models/{HOSTS[host]}/start?wait=true")
    assert status == 200, f"{host}: {status} {body}\n{service.log()[-2000:]}"
    port: int = body["port"]
    return port


def revive(fleet: Fleet, host: str, llama_server_bin: Path, gemma_gguf: Path) -> None:
    """A killed host's service again, on its port and state folder, its model started and
    both scraped by Prometheus: the fleet as the other tests expect it."""
    old = fleet.services[host]
    config = service_config(host, list(HOSTS).index(host), llama_server_bin, gemma_gguf)
    service = start_service(old.config_file.parent, config, port=old.port)
    fleet.services[host] = service
    fleet.ports[host] = port = start_model(service, host)
    exporter = f'up{{job="llama-exporter",host="{host}"}} == 1'
    server = f'up{{job="llama-server",host="{host}",instance="127.0.0.1:{port}"}} == 1'
    fleet.prom.wait_for(
        lambda: fleet.prom.query(exporter) and fleet.prom.query(server),
        timeout=120,
        what=f"host {host} scraped again",
    )
    stale = [
        t
        for t in fleet.prom.targets()
        if t["labels"].get("host") == host
        and t["labels"]["job"] == "llama-server"
        and t["labels"]["instance"] != f"127.0.0.1:{port}"
    ]
    assert not stale, stale


def test_every_instance_discovered_with_its_host_label(
    fleet: Fleet, record_property: Callable[[str, object], None]
) -> None:
    prom = fleet.prom
    for host, seconds in fleet.discovery.items():
        record_property(f"discovery_seconds_{host}", round(seconds, 2))
    targets = prom.targets()
    servers = {
        (t["labels"]["host"], t["labels"]["model"]): t["labels"]["instance"]
        for t in targets
        if t["labels"]["job"] == "llama-server"
    }
    assert servers == {
        (host, model): f"127.0.0.1:{fleet.ports[host]}" for host, model in HOSTS.items()
    }
    exporters = {
        t["labels"]["host"]: t["labels"]["instance"]
        for t in targets
        if t["labels"]["job"] == "llama-exporter"
    }
    assert exporters == {h: f"127.0.0.1:{s.port}" for h, s in fleet.services.items()}
    # The service's own series carry its host label, and no exported_host appears.
    prom.wait_for(
        lambda: len(prom.query("llama_exporter_instance_up == 1")) == len(HOSTS),
        timeout=30,
        what="every service's llama_exporter_instance_up",
    )
    series = prom.query("llama_exporter_instance_up == 1")
    assert {(s["metric"]["host"], s["metric"]["model"]) for s in series} == set(HOSTS.items())
    assert not prom.query('{exported_host!=""}')
    # llama-server's own series get the host from the target the service handed out.
    assert {s["metric"]["host"] for s in prom.query("llamacpp:n_decode_total")} == set(HOSTS)


def test_every_overview_query_has_data_for_every_host(fleet: Fleet) -> None:
    for port in fleet.ports.values():  # one short generation each: tokens/s > 0
        status, body = request_completion(port)
        assert status == 200, body
    board = json.loads((ROOT / "grafana" / "dashboards" / "llama-overview.json").read_text())
    # The gateway row needs gateway traffic: tests/test_e2e_gateway.py checks it.
    _, board = generate.split_row(board, gateway_panels.ROW)
    pending = {
        (host, title, expr)
        for host in HOSTS
        for title, expr, _ in generate.panel_queries(board, {"host": host})
    }
    all_hosts = {(title, expr) for title, expr, _ in generate.panel_queries(board, {"host": ".*"})}
    prom = fleet.prom
    deadline = time.monotonic() + 120
    while (pending or all_hosts) and time.monotonic() < deadline:
        for host, title, expr in list(pending):
            result = prom.query(expr)
            if result and all(s["metric"].get("host", host) == host for s in result):
                pending.discard((host, title, expr))
        for title, expr in list(all_hosts):
            result = prom.query(expr)
            labelled = {s["metric"]["host"] for s in result if "host" in s["metric"]}
            if result and (labelled == set(HOSTS) or not labelled):
                all_hosts.discard((title, expr))
        if pending or all_hosts:
            time.sleep(1)
    assert not pending, f"queries without data for a host: {sorted(pending)}"
    assert not all_hosts, f"queries missing a host under All: {sorted(all_hosts)}"

    def generating_hosts() -> bool:  # the generations reach Prometheus within a poll + scrape
        per_host = prom.query("sum by (host) (rate(llama_exporter_tokens_generated_total[1m]))")
        return {s["metric"]["host"] for s in per_host if float(s["value"][1]) > 0} == set(HOSTS)

    prom.wait_for(generating_hosts, timeout=30, what="tokens/s > 0 on every host")


def request_completion(port: int) -> tuple[int, Any]:
    """An 8-token completion straight to a llama-server."""
    body = json.dumps({"prompt": "Once upon a time", "n_predict": 8, "ignore_eos": True})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {INSTANCE_KEY}"},
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        return resp.status, json.loads(resp.read())


def test_same_model_on_two_hosts_gives_two_series(fleet: Fleet) -> None:
    prom = fleet.prom
    shared = HOSTS["a"]
    for expr in (
        f'llama_exporter_instance_up{{model="{shared}"}}',
        f'up{{job="llama-server",model="{shared}"}}',
        f'llama_exporter_tokens_generated_total{{model="{shared}"}}',
        f'model:llama_exporter_tokens_generated:rate1m{{model="{shared}"}}',
        f'model:llama_exporter_context_used:ratio{{model="{shared}"}}',
    ):

        def two(expr: str = expr) -> list[dict[str, Any]] | None:
            result = prom.query(expr)
            return result if len(result) == 2 else None

        series = prom.wait_for(two, timeout=30, what=f"two series of {expr}") or []
        assert {s["metric"]["host"] for s in series} == {"a", "b"}, (expr, series)


def test_cardinality_per_host_and_model(
    fleet: Fleet, record_property: Callable[[str, object], None]
) -> None:
    """Series per model and per host, counted from real /metrics pages (for docs/FLEET.md)."""
    service = fleet.services["a"]

    def model_series() -> list[Any]:
        _, page = request_text(service.url + "/metrics")
        samples = [s for f in text_string_to_metric_families(page) for s in f.samples]
        assert samples and all(s.labels.get("host") == "a" for s in samples)
        return samples

    samples = model_series()
    per_model = sum(1 for s in samples if s.labels.get("model") == HOSTS["a"])
    # One streamed request through the gateway: its histograms appear for the model.
    body = {
        "model": HOSTS["a"],
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    req = urllib.request.Request(
        service.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        assert resp.status == 200
        resp.read()
    with_gateway = sum(1 for s in model_series() if s.labels.get("model") == HOSTS["a"])
    per_host = sum(1 for s in samples if "model" not in s.labels)
    slot_series = sum(1 for s in samples if "slot" in s.labels)
    _, own = request_text(f"http://127.0.0.1:{fleet.ports['a']}/metrics", INSTANCE_KEY)
    llamacpp = sum(len(f.samples) for f in text_string_to_metric_families(own))
    rules = fleet.prom.query(f'count({{__name__=~"model:.*",host="a",model="{HOSTS["a"]}"}})')
    recorded = int(float(rules[0]["value"][1])) if rules else 0
    figures = {
        "service_series_per_model": per_model,
        "service_series_per_model_after_a_gateway_request": with_gateway,
        "of_which_per_slot_2_slots": slot_series,
        "service_series_per_host": per_host,
        "llama_server_series_per_instance": llamacpp,
        "recording_rule_series_per_model": recorded,
        "prometheus_series_per_target": 5,  # up, scrape_duration_seconds, scrape_samples_*...
    }
    print("\ncardinality (host a, one model with 2 slots):", figures)
    for name, value in figures.items():
        record_property(name, value)
    assert per_model > 0 and per_host > 0 and llamacpp > 0 and recorded > 0


def request_text(url: str, token: str = SCRAPE_TOKEN) -> tuple[int, str]:
    """GET with Prometheus's scrape token (or another); (status, text)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read().decode()


def test_killing_one_service_fires_exporter_down_naming_its_host(
    fleet: Fleet, llama_server_bin: Path, gemma_gguf: Path
) -> None:
    try:
        kill_and_see_it_fire(fleet)
    finally:
        revive(fleet, "b", llama_server_bin, gemma_gguf)


def kill_and_see_it_fire(fleet: Fleet) -> None:
    """SIGKILL host b's service: LlamaExporterDown fires for b alone, its llama-server goes."""
    service = fleet.services["b"]
    _, status = request("GET", service.api + "/status")
    (entry,) = [m for m in status["models"] if m["model"] == HOSTS["b"]]
    llama = psutil.Process(entry["pid"])
    killed = time.monotonic()
    os.kill(service.proc.pid, signal.SIGKILL)
    service.proc.wait()

    def firing() -> list[dict[str, Any]]:
        return [
            alert
            for alert in fleet.prom.alerts()
            if alert["labels"]["alertname"] == "LlamaExporterDown" and alert["state"] == "firing"
        ]

    alerts = fleet.prom.wait_for(firing, timeout=150, what="LlamaExporterDown firing")
    print(f"\nLlamaExporterDown firing {time.monotonic() - killed:.1f} s after the kill (for: 30s)")
    assert [a["labels"]["host"] for a in alerts] == ["b"]
    assert alerts[0]["labels"]["instance"] == f"127.0.0.1:{service.port}"
    assert "on b (" in alerts[0]["annotations"]["summary"]
    assert "host b" in alerts[0]["annotations"]["description"]
    # Its llama-server went with it (PR_SET_PDEATHSIG); never leave one behind.
    try:
        wait_until(
            lambda: not llama.is_running() or llama.status() == psutil.STATUS_ZOMBIE,
            what="host b's llama-server gone",
        )
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            if llama.is_running() and llama.status() != psutil.STATUS_ZOMBIE:
                llama.kill()
    # The other hosts are fine.
    up = fleet.prom.query('up{job="llama-exporter"} == 1')
    assert {s["metric"]["host"] for s in up} == {"a", "c"}
