"""prometheus/fleet.example.yml and scripts/fleet_config.py, which writes its per-host entries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import require_binary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fleet_config  # noqa: E402

EXAMPLE = ROOT / "prometheus" / "fleet.example.yml"
HOSTS = ROOT / "prometheus" / "fleet-hosts.yml"


def fleet_dir(tmp_path: Path, hosts: list[dict[str, Any]]) -> Path:
    """A copy of the example with a host list and a token file beside it; its path."""
    shutil.copy(EXAMPLE, tmp_path / "fleet.yml")
    (tmp_path / "fleet-hosts.yml").write_text(yaml.safe_dump(hosts))
    (tmp_path / "fleet-token").write_text("s3cret\n")
    (tmp_path / "fleet-instance.key").write_text("k" * 43 + "\n")
    shutil.copytree(ROOT / "prometheus" / "rules", tmp_path / "rules")
    return tmp_path / "fleet.yml"


TWO = [
    {"targets": ["10.1.0.1:9777"], "labels": {"host": "a"}},
    {"targets": ["box-b.lan:9000"], "labels": {"host": "b", "rack": "r2"}},
]


def test_shipped_example_matches_its_host_list() -> None:
    assert fleet_config.main(["--check", str(EXAMPLE)]) == 0
    hosts = fleet_config.read_hosts(HOSTS)
    config = yaml.safe_load(EXAMPLE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    urls = [sd["url"] for sd in jobs["llama-server"]["http_sd_configs"]]
    assert urls == [f"http://{address}/api/v1/llama/targets" for _, address in hosts]
    assert jobs["llama-exporter"]["file_sd_configs"] == [{"files": ["fleet-hosts.yml"]}]
    assert jobs["llama-exporter"]["honor_labels"] is True
    token = {"type": "Bearer", "credentials_file": "fleet-token"}
    assert jobs["llama-exporter"]["authorization"] == token
    assert all(sd["authorization"] == token for sd in jobs["llama-server"]["http_sd_configs"])
    # The instances' own /metrics: the fleet's one instance key.
    key = {"type": "Bearer", "credentials_file": "fleet-instance.key"}
    assert jobs["llama-server"]["authorization"] == key


def test_rewrites_only_the_block_one_entry_per_host(tmp_path: Path) -> None:
    path = fleet_dir(tmp_path, TWO)
    before = path.read_text()
    assert fleet_config.main([str(path)]) == 0
    after = path.read_text()
    config = yaml.safe_load(after)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sds = jobs["llama-server"]["http_sd_configs"]
    assert [sd["url"] for sd in sds] == [
        "http://10.1.0.1:9777/api/v1/llama/targets",
        "http://box-b.lan:9000/api/v1/llama/targets",
    ]
    assert all(sd["refresh_interval"] == "2s" for sd in sds)
    # Outside the block, nothing changed (comments included).
    head, tail = before.split("# BEGIN fleet hosts")[0], before.split("# END fleet hosts")[1]
    assert after.startswith(head) and after.endswith(tail)
    assert fleet_config.main(["--check", str(path)]) == 0
    assert fleet_config.main([str(path)]) == 0
    assert path.read_text() == after  # idempotent


def test_check_fails_when_the_host_list_changed(tmp_path: Path) -> None:
    path = fleet_dir(tmp_path, TWO)
    fleet_config.main([str(path)])
    (tmp_path / "fleet-hosts.yml").write_text(yaml.safe_dump(TWO[:1]))
    assert fleet_config.main(["--check", str(path)]) == 1


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([{"targets": ["10.1.0.1:9777"], "labels": {}}], "labels.host"),
        ([{"targets": ["10.1.0.1:9777"], "labels": {"host": "a b"}}], "labels.host"),
        ([{"targets": ["http://x:1"], "labels": {"host": "a"}}], "not host:port"),
        ([{"targets": ["x:1", "y:2"], "labels": {"host": "a"}}], "one address"),
        ([*TWO, {"targets": ["10.9.9.9:1"], "labels": {"host": "a"}}], "host listed twice"),
        ([*TWO, {"targets": ["10.1.0.1:9777"], "labels": {"host": "z"}}], "address listed twice"),
        ([], "one per host"),
    ],
)
def test_bad_host_lists_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hosts: list[dict[str, Any]], message: str
) -> None:
    path = fleet_dir(tmp_path, hosts)
    before = path.read_text()
    assert fleet_config.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "fleet-hosts.yml" in err, err
    assert path.read_text() == before  # nothing half-written


def test_missing_markers_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fleet_dir(tmp_path, TWO)
    path.write_text(path.read_text().replace("# BEGIN fleet hosts", "# begin"))
    assert fleet_config.main([str(path)]) == 2
    assert "BEGIN fleet hosts" in capsys.readouterr().err


@pytest.mark.prometheus
def test_promtool_accepts_the_written_config(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    path = fleet_dir(tmp_path, TWO)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fleet_config.py"), str(path)], check=True
    )
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The shipped file itself (its token file is yours to create).
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
