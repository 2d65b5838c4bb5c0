"""Instances reachable only through the service (issue 17), all real: the service as a
process, two real llama-servers on the gemma model, one keyed by the service's instance
key, one by its own api_key.

Straight to an instance port, without the key: a cross-origin text/plain POST, a foreign
Host, GETs of /slots, /props, /metrics answer 401 with no CORS grant, and nothing is
generated. Through the service everything still works (gateway, /upstream, the poller's
live figures, `llama-exporter ps`), and neither key shows in any instance's command
line, any file of the state folder, the service's log or any API answer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_proc import ServiceProcess, http_json, http_text, start_service
from waiting import wait_until

pytestmark = [pytest.mark.real]

KEYED, OWN = "keyed", "own-key"
OWN_KEY = "model-own-api-key-" + "q" * 24
EVIL = "https://evil.example"
# llama-server's endpoints that answer without a key (its get_public_endpoints; the web
# UI's files are public too, but this build serves none: "/" is a 404). README lists them.
PUBLIC = ("/health", "/v1/health")
GUARDED = ("/slots", "/props", "/metrics", "/v1/models")
CHAT = json.dumps({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8})


@dataclass
class Keyed:
    """The service, its instance key and each model's instance port."""

    service: ServiceProcess
    key: str
    ports: dict[str, int]
    pids: dict[str, int]


def raw(
    port: int, method: str, path: str, headers: dict[str, str], body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (Host included); (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"127.0.0.1:{port}", **headers}.items():
            conn.putheader(name, value)
        data = body.encode() if body is not None else b""
        if body is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data or None)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def counters(port: int, key: str) -> dict[str, float]:
    """llama-server's own counters of work done (read with the key)."""
    status, _, body = raw(port, "GET", "/metrics", {"Authorization": f"Bearer {key}"})
    assert status == 200
    wanted = {"llamacpp:prompt_tokens_total", "llamacpp:n_decode_total"}
    return {
        s.name: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name in wanted
    }


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Keyed]:
    """The service with both models started."""
    tmp = tmp_path_factory.mktemp("instance-auth")
    model = {"path": str(gemma_gguf), "ctx_size": 1024, "parallel": 2, "args": ["-t", "1"]}
    config = {
        "llama_server": str(llama_server_bin),
        "max_parallel": 2,
        "poll": {"interval": 1.0},
        "restart": {"max_retries": 0},
        "models": [{"name": KEYED, **model}, {"name": OWN, "api_key": OWN_KEY, **model}],
    }
    service = start_service(tmp / "service", config)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(service.stop)
        ports, pids = {}, {}
        for name in (KEYED, OWN):
            url = service.api + f"/models/{name}/start?wait=true"
            status, body = http_json("POST", url, timeout=150)
            assert status == 200 and body["state"] == "ready", (body, service.log()[-3000:])
            ports[name], pids[name] = body["port"], body["pid"]
        yield Keyed(service, service.instance_key, ports, pids)


def test_the_key_file_is_the_services_own_and_0600(keyed: Keyed) -> None:
    path = keyed.service.state_dir / "instance.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(keyed.key) >= 43 and keyed.key != OWN_KEY


@pytest.mark.parametrize("name", [KEYED, OWN])
def test_without_the_key_every_endpoint_but_health_is_refused(keyed: Keyed, name: str) -> None:
    port = keyed.ports[name]
    for path in GUARDED:
        assert raw(port, "GET", path, {})[0] == 401, path
        assert raw(port, "GET", path, {"Authorization": "Bearer wrong"})[0] == 401, path
        # The service's key opens every instance; a model's own key opens only its own.
        assert raw(port, "GET", path, {"Authorization": f"Bearer {keyed.key}"})[0] == 200
        own = raw(port, "GET", path, {"Authorization": f"Bearer {OWN_KEY}"})[0]
        assert own == (200 if name == OWN else 401), path
    for path in PUBLIC:
        assert raw(port, "GET", path, {})[0] == 200, path
    assert raw(port, "GET", "/", {})[0] == 404  # no web UI in this build: nothing public


@pytest.mark.parametrize("name", [KEYED, OWN])
def test_a_web_page_gets_no_answer_no_grant_and_nothing_generated(keyed: Keyed, name: str) -> None:
    port = keyed.ports[name]
    before = counters(port, keyed.key)
    # What a page on another site can send without a preflight, and a DNS-rebinding page
    # (its own host name in Host).
    simple = {"Origin": EVIL, "Content-Type": "text/plain"}
    for headers in (simple, {**simple, "Host": f"evil.example:{port}"}):
        status, head, body = raw(port, "POST", "/v1/chat/completions", headers, CHAT)
        assert status == 401, body
        assert head.get("access-control-allow-origin") != EVIL, head
        assert "choices" not in body.decode()
    for path in ("/slots", "/props", "/metrics"):
        status, head, _ = raw(port, "GET", path, {"Origin": EVIL, "Host": "evil.example"})
        assert status == 401 and head.get("access-control-allow-origin") != EVIL, (path, head)
    # The preflight a page would need for /slots with credentials: no grant either.
    status, head, _ = raw(
        port,
        "OPTIONS",
        "/slots",
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
    )
    assert head.get("access-control-allow-origin") == "none", head
    assert head.get("access-control-allow-credentials") == "false", head
    assert counters(port, keyed.key) == before  # no prompt processed, nothing decoded


@pytest.mark.parametrize("name", [KEYED, OWN])
def test_the_gateway_upstream_and_the_poller_still_work(keyed: Keyed, name: str) -> None:
    service = keyed.service
    status, body = http_json(
        "POST",
        service.url + "/v1/chat/completions",
        {"model": name, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8},
        timeout=300,
    )
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0
    status, slots = http_json("GET", service.url + f"/upstream/{name}/slots")
    assert status == 200 and len(slots) == 2, slots
    status, props = http_json("GET", service.url + f"/upstream/{name}/props")
    assert status == 200 and props["total_slots"] == 2, props

    def polled() -> dict[str, Any] | None:
        latest = http_json("GET", service.api + f"/models/{name}/metrics")[1]["latest"]
        return latest if latest and latest["tokens_generated_total"] > 0 else None

    latest = wait_until(polled, f"{name}: the poller's live figures count the tokens")
    assert latest is not None
    assert latest["slots_total"] == 2 and latest["context_size_tokens"] == 1024
    text = http_text(service.url + "/metrics")
    refused = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llama_exporter_poll_errors_total" and s.labels.get("model") == name
        if s.value > 0
    ]
    assert refused == []  # not one read of /slots, /metrics, /props was refused


def test_a_models_own_key_works_straight_to_its_instance(keyed: Keyed) -> None:
    status, _, body = raw(
        keyed.ports[OWN],
        "POST",
        "/v1/chat/completions",
        {"Authorization": f"Bearer {OWN_KEY}", "Content-Type": "application/json"},
        CHAT,
    )
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"]


def test_ps_shows_both_instances_ready(keyed: Keyed) -> None:
    result = ps(keyed)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:] if line}
    assert rows[KEYED][1] == rows[OWN][1] == "ready", result.stdout
    # SLOTS comes from the poller's last read (busy/total): it read the instance.
    assert rows[KEYED][6] in ("0/2", "1/2", "2/2") and rows[OWN][6] in ("0/2", "1/2", "2/2")


def ps(keyed: Keyed) -> subprocess.CompletedProcess[str]:
    """`llama-exporter ps` against the service."""
    return subprocess.run(
        [sys.executable, "-m", "llama_exporter", "ps", "--url", keyed.service.url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_neither_key_shows_anywhere(keyed: Keyed) -> None:
    secrets = (keyed.key, OWN_KEY)
    service = keyed.service
    for name, pid in keyed.pids.items():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "--api-key-file" in cmdline or name == OWN, cmdline
        assert not any(s in cmdline for s in secrets), (name, cmdline)
    # Every file of the state folder but the key itself: logs (the header the service
    # writes and llama-server's output), instances.json, targets, models.json...
    files = [p for p in service.state_dir.rglob("*") if p.is_file() and p.name != "instance.key"]
    assert any(p.suffix == ".log" for p in files), files
    answers = {str(p): p.read_text(errors="replace") for p in files}
    answers["service log"] = service.log()
    for path in (
        "/models",
        "/status",
        f"/models/{KEYED}/logs?lines=1000",
        f"/models/{OWN}/logs?lines=1000",
        f"/models/{KEYED}/metrics",
        f"/models/{OWN}/metrics",
        "/targets",
        "/openapi.json",
    ):
        answers[path] = http_text(service.api + path)
    for path in ("/metrics", "/", "/v1/models", "/api/v1/llama/gateway"):
        answers[path] = http_text(service.url + path)
    answers["ps"] = ps(keyed).stdout + ps(keyed).stderr
    # At -lv 4 llama-server logs its only key's last 4 characters ("api_keys: ****abcd").
    tails = [f"****{s[-4:]}" for s in secrets]
    for where, text in answers.items():
        assert not any(s in text for s in [*secrets, *tails]), where
    assert "***" in answers[f"/models/{KEYED}/logs?lines=1000"]  # the header's key file, hidden
