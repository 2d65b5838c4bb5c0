"""docker-compose.yml: structure only (no Docker engine in the test environment)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from promstack import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    """The parsed compose file."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def services() -> dict[str, Any]:
    """The compose services by name."""
    found: dict[str, Any] = compose()["services"]
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, options) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes", []):
        # The source may contain ${VAR:-default}, whose ':' is not a separator.
        match = re.fullmatch(r"(\$\{[^}]*\}[^:]*|[^:]+):([^:]+)(?::(\w+))?", entry)
        assert match, entry
        mounts.append((match.group(1), match.group(2), match.group(3) or ""))
    return mounts


def test_services_present() -> None:
    assert set(services()) == {"instance-key", "prometheus", "alertmanager", "grafana"}
    volumes = {"instance-key", "prometheus-data", "alertmanager-data", "grafana-data"}
    assert set(compose()["volumes"]) == volumes


def test_every_repo_bind_mount_exists_and_is_read_only() -> None:
    for name, service in services().items():
        for source, target, options in bind_mounts(service):
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
                assert options == "ro", f"{name}: {source} -> {target} should be read-only"


def test_every_service_uses_host_networking() -> None:
    # The service writes 127.0.0.1 targets; Prometheus must reach them, and Grafana and
    # Prometheus reach 127.0.0.1:9090 / :9093 in turn.
    for name, service in services().items():
        assert service.get("network_mode") == "host", name
        assert "ports" not in service, f"{name}: ports are ignored with host networking"


def test_prometheus_mounts_match_its_config() -> None:
    prom = services()["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert "--web.listen-address=127.0.0.1:9090" in prom["command"]
    mounts = {target: source for source, target, _ in bind_mounts(prom)}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "./prometheus/rules"
    targets = mounts["/etc/prometheus/targets"]
    assert targets.startswith("${LLAMA_EXPORTER_TARGETS_DIR:-")
    assert targets.endswith("/.local/state/llama-exporter/targets}")


def test_prometheus_gets_a_copy_of_the_instance_key_it_can_read() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "llama-server"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "keys/instance.key"}
    copier = services()["instance-key"]
    sources = {target: source for source, target, _ in bind_mounts(copier)}
    source = sources["/run/llama/instance.key"]
    assert source.startswith("${LLAMA_EXPORTER_INSTANCE_KEY:-")
    assert source.endswith("/.local/state/llama-exporter/instance.key}")
    assert sources["/keys"] == "instance-key"
    # Prometheus runs as nobody (65534): the copy is its own, readable by it alone.
    script = copier["command"][-1]
    assert "-o 65534 -g 65534 -m 0400 /run/llama/instance.key /keys/instance.key" in script
    prom = services()["prometheus"]
    assert prom["depends_on"]["instance-key"]["condition"] == "service_completed_successfully"
    mounts = {target: (source, options) for source, target, options in bind_mounts(prom)}
    assert mounts["/etc/prometheus/keys"] == ("instance-key", "ro")


def test_alertmanager_config_is_mounted() -> None:
    am = services()["alertmanager"]
    assert "--cluster.listen-address=" in am["command"]
    assert "--web.listen-address=127.0.0.1:9093" in am["command"]
    mounts = {source for source, _, _ in bind_mounts(am)}
    assert "./prometheus/alertmanager.yml" in mounts


def test_no_plaintext_password() -> None:
    env = services()["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GF_ADMIN_PASSWORD:\?[^}]+\}", password), password
    text = COMPOSE.read_text(encoding="utf-8")
    assert not re.search(r"PASSWORD[^\n]*:-", text), "a password must not have a default"
    assert "admin:admin" not in text


def test_grafana_provisioning_and_refresh() -> None:
    grafana = services()["grafana"]
    mounts = {source: target for source, target, _ in bind_mounts(grafana)}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["environment"]["GF_DASHBOARDS_MIN_REFRESH_INTERVAL"] == "1s"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboards = Path(mounts["./grafana/dashboards"])
    assert Path(home).parent == dashboards
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).is_file()


def test_images_are_pinned() -> None:
    for name, service in services().items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
