#!/usr/bin/env python3
"""Write a fleet Prometheus config's per-host http_sd entries from its host list.

    python scripts/fleet_config.py prometheus/fleet.example.yml          # rewrite in place
    python scripts/fleet_config.py --check prometheus/fleet.example.yml  # exit 1 if stale

Prometheus cannot turn a file of hosts into one http_sd_configs entry each, so this
does it: the host list is the file_sd file of the config's `llama-exporter` job
(`fleet-hosts.yml`), the token is that job's `authorization.credentials_file`, and
the entries go between the `# BEGIN fleet hosts` and `# END fleet hosts` lines of the
`llama-server` job. Nothing else in the file is touched. Needs only PyYAML.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

SD_PATH = "/api/v1/llama/targets"
REFRESH = "2s"  # a new instance is a target within about this + Prometheus's 5 s tick
BEGIN = re.compile(r"^(?P<indent>[ ]*)# BEGIN fleet hosts\b.*$", re.M)
END = re.compile(r"^[ ]*# END fleet hosts\b.*$", re.M)
HOST_LABEL = re.compile(r"[A-Za-z0-9._-]{1,128}")  # as the service's host_label
ADDRESS = re.compile(r"[^\s/:]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")


class FleetError(Exception):
    """A problem in the config or the host list, with what to do about it."""


def _job(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    for job in config.get("scrape_configs") or []:
        if isinstance(job, dict) and job.get("job_name") == name:
            return job
    raise FleetError(f"{path}: no scrape job named {name!r} (start from fleet.example.yml)")


def hosts_file(config: dict[str, Any], path: Path) -> Path:
    """The host list: the one file_sd file of the llama-exporter job."""
    job = _job(config, "llama-exporter", path)
    files = [f for sd in job.get("file_sd_configs") or [] for f in sd.get("files") or []]
    if len(files) != 1 or any(c in files[0] for c in "*?["):
        raise FleetError(
            f"{path}: job llama-exporter must read exactly one file_sd file (no glob), "
            f"got {files}: list the hosts in one file such as fleet-hosts.yml"
        )
    return path.parent / str(files[0])


def read_hosts(path: Path) -> list[tuple[str, str]]:
    """(host label, address) of every service in a file_sd file, checked."""
    try:
        groups = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FleetError(f"{path}: cannot read the host list: {err}") from None
    except yaml.YAMLError as err:
        raise FleetError(f"{path}: not YAML: {err}") from None
    if not isinstance(groups, list) or not groups:
        raise FleetError(f"{path}: must be a list of target groups, one per host")
    hosts: list[tuple[str, str]] = []
    for i, group in enumerate(groups):
        where = f"{path}: [{i}]"
        if not isinstance(group, dict):
            raise FleetError(f"{where}: must be a mapping with targets and labels")
        targets = group.get("targets")
        labels = group.get("labels") or {}
        host = labels.get("host") if isinstance(labels, dict) else None
        if not isinstance(targets, list) or len(targets) != 1:
            raise FleetError(f"{where}.targets: one address (host:port) per group, got {targets}")
        address = str(targets[0])
        if not ADDRESS.fullmatch(address):
            raise FleetError(f"{where}.targets[0]: {address!r} is not host:port (no scheme)")
        if not isinstance(host, str) or not HOST_LABEL.fullmatch(host):
            raise FleetError(
                f"{where}.labels.host: {host!r}: set it to the service's host_label "
                "(letters, digits, '.', '_', '-')"
            )
        hosts.append((host, address))
    for kind, index in (("host", 0), ("address", 1)):
        values = [h[index] for h in hosts]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise FleetError(f"{path}: {kind} listed twice: {', '.join(dupes)}")
    return hosts


def block(config: dict[str, Any], path: Path, hosts: list[tuple[str, str]], indent: str) -> str:
    """The http_sd entries, one per host, with the llama-exporter job's scheme and token."""
    job = _job(config, "llama-exporter", path)
    scheme = job.get("scheme", "http")
    auth = job.get("authorization")
    lines: list[str] = []
    for _, address in hosts:
        lines += [
            f"{indent}- url: {scheme}://{address}{SD_PATH}",
            f"{indent}  refresh_interval: {REFRESH}",
        ]
        if isinstance(auth, dict) and auth.get("credentials_file"):
            lines += [
                f"{indent}  authorization:",
                f"{indent}    type: {auth.get('type', 'Bearer')}",
                f"{indent}    credentials_file: {auth['credentials_file']}",
            ]
    return "".join(line + "\n" for line in lines)


def render(path: Path) -> tuple[str, str]:
    """(current text, text with the per-host block rewritten) of a fleet config."""
    text = path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise FleetError(f"{path}: not YAML: {err}") from None
    if not isinstance(config, dict):
        raise FleetError(f"{path}: not a Prometheus config")
    _job(config, "llama-server", path)
    begin, end = BEGIN.search(text), END.search(text)
    if begin is None or end is None or end.start() < begin.end():
        raise FleetError(
            f"{path}: no '# BEGIN fleet hosts' ... '# END fleet hosts' lines in the "
            "llama-server job's http_sd_configs (copy them from fleet.example.yml)"
        )
    hosts = read_hosts(hosts_file(config, path))
    entries = block(config, path, hosts, begin.group("indent"))
    new = text[: begin.end() + 1] + entries + text[end.start() :]
    return text, new


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or --check) the per-host block of each config given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("config", type=Path, nargs="+", help="fleet Prometheus config file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = False
    for path in args.config:
        try:
            old, new = render(path)
        except (FleetError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.check:
            if old != new:
                print(f"{path}: stale, run python scripts/fleet_config.py {path}", file=sys.stderr)
                stale = True
        elif old != new:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(path)  # Prometheus may reload at any moment: never half a file
            print(f"{path}: wrote {new.count('- url: ')} http_sd entries")
        else:
            print(f"{path}: up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
