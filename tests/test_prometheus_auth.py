"""The shipped prometheus.yml's authorization block works against a service with tokens.

Real Prometheus (required in CI): the llama-exporter job with the block from
prometheus.yml uncommented scrapes with the scrape_token; the same job without
it is refused (401), so the token really guards /metrics.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import PROMETHEUS_CONFIG, PromHandle, free_port, require_binary
from service_proc import start_service
from test_cli import fake_config

pytestmark = pytest.mark.prometheus

API_TOKEN = "api-token-for-prometheus-test"
SCRAPE_TOKEN = "scrape-token-for-prometheus-test"
BLOCK = (
    "    # authorization:\n"
    "    #   type: Bearer\n"
    "    #   credentials_file: llama-exporter-scrape.token\n"
)


def _config(targets_dir: Path) -> dict[str, Any]:
    """prometheus.yml with the llama-exporter job's authorization block uncommented."""
    text = PROMETHEUS_CONFIG.read_text()
    assert BLOCK in text, "prometheus.yml no longer shows the authorization block"
    config: dict[str, Any] = yaml.safe_load(text.replace(BLOCK, BLOCK.replace("# ", "")))
    config.pop("alerting", None)
    config.pop("rule_files", None)
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "llama-exporter"]
    assert jobs and jobs[0]["authorization"]["credentials_file"] == "llama-exporter-scrape.token"
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(targets_dir / Path(name).name) for name in sd["files"]]
    unauthenticated = {k: v for k, v in jobs[0].items() if k != "authorization"}
    config["scrape_configs"].append({**unauthenticated, "job_name": "without-token"})
    return config


def test_prometheus_scrapes_with_the_scrape_token_and_not_without(
    tmp_path: Path, fake_server_bin: Path
) -> None:
    binary = require_binary("prometheus")
    config = {**fake_config(tmp_path, fake_server_bin), "api_token": API_TOKEN}
    config["scrape_token"] = SCRAPE_TOKEN
    service = start_service(tmp_path / "svc", config)
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    try:
        targets_dir = service.state_dir / "targets"
        (workdir / "llama-exporter-scrape.token").write_text(SCRAPE_TOKEN)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(_config(targets_dir)))
        port = free_port()
        argv = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with PromHandle("prometheus", argv, port, workdir) as prom:
            prom.wait_ready()

            def health() -> dict[str, tuple[str, str]] | None:
                found = {
                    t["labels"]["job"]: (t["health"], t.get("lastError", ""))
                    for t in prom.targets()
                    if t["labels"]["job"] in ("llama-exporter", "without-token")
                }
                settled = len(found) == 2 and all(h != "unknown" for h, _ in found.values())
                return found if settled else None

            found = prom.wait_for(health, timeout=60, what="both scrape jobs to report")
            assert found is not None
            assert found["llama-exporter"][0] == "up", found
            assert found["without-token"][0] == "down", found
            assert "401" in found["without-token"][1], found
            assert prom.value('up{job="llama-exporter"}') == 1
    finally:
        service.stop()
        shutil.rmtree(workdir / "data", ignore_errors=True)
