"""`llama-exporter requests` against the service as a process (fake llama-server children)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from openai import NotFoundError, OpenAI
from service_proc import ServiceProcess
from test_cli import cli, service  # noqa: F401  (the fixture)
from waiting import wait_until


def ask(svc: ServiceProcess, model: str) -> None:
    client = OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )


def test_requests_lists_filters_and_follows(service: ServiceProcess, tmp_path: Path) -> None:  # noqa: F811
    ask(service, "m0")
    ask(service, "m0")
    with pytest.raises(NotFoundError):
        ask(service, "nope")
    out = cli("requests", "-n", "10", url=service.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "MODEL", "ENDPOINT", "STATUS"]
    assert [line.split()[1] for line in lines[1:]] == ["m0", "m0", "-"]  # oldest first
    assert "404 invalid_request_error" in lines[3]
    assert "*" in lines[1].split()[5]  # the first request started m0's load
    only = cli("requests", "--model", "m0", "--status", "2xx", url=service.url)
    assert len(only.stdout.splitlines()) == 3
    bad = cli("requests", "--status", "abc", url=service.url)
    assert bad.returncode == 1 and "status must be" in bad.stderr
    many = cli("requests", "-n", "5000", url=service.url)
    assert many.returncode == 2 and "-n: must be an integer 1..1000" in many.stderr

    env = {**os.environ, "LLAMA_EXPORTER_URL": service.url}
    follow = subprocess.Popen(
        [sys.executable, "-m", "llama_exporter", "requests", "-n", "1", "--follow"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen: list[str] = []
    assert follow.stdout is not None
    stdout = follow.stdout
    reader = threading.Thread(target=lambda: seen.extend(iter(stdout.readline, "")))
    reader.start()
    try:
        wait_until(lambda: len(seen) >= 2, "the first table")
        ask(service, "m1")
        wait_until(lambda: any(line.split()[1] == "m1" for line in seen[2:]), "m1's request")
    finally:
        follow.terminate()
        follow.wait(timeout=10)
        reader.join(timeout=10)
    assert [line.split()[1] for line in seen[2:]] == ["m1"]  # shown once
