"""Config reload, all real: the service as a process, three real llama-servers on hard links
of the gemma model. One model's ctx_size changes: only its process is replaced, after
its stream in flight finished; a request sent during the drain is served by the new
instance; bad files change nothing; a reload under 50 concurrent requests gives no 5xx.

The tests share one module-scoped service and run in file order.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_proc import ServiceProcess, http_json, http_text, start_service
from waiting import wait_until

pytestmark = [pytest.mark.real]

NAMES = ("g0", "g1", "g2")
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."


@dataclass
class Svc:
    service: ServiceProcess
    config: dict[str, Any]

    def write(self) -> None:
        """Replace the config file at once (as a deploy tool would)."""
        temp = self.service.config_file.with_suffix(".tmp")
        temp.write_text(yaml.safe_dump(self.config))
        temp.replace(self.service.config_file)

    def model(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = next(m for m in self.config["models"] if m["name"] == name)
        return entry

    def reload(self) -> tuple[int, Any]:
        return http_json("POST", self.service.api + "/reload")

    def pids(self) -> dict[str, int]:
        return {n: self.service.status(n)["pid"] for n in NAMES}


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Svc]:
    tmp = tmp_path_factory.mktemp("reload-real")
    models = []
    for name in NAMES:
        path = tmp / f"{name}.gguf"
        try:
            os.link(gemma_gguf, path)
        except OSError:
            shutil.copyfile(gemma_gguf, path)
        models.append(
            {
                "name": name,
                "path": str(path),
                "ctx_size": 2048,
                "parallel": 2,
                "args": ["--threads", "1"],
                # the drain waits for the stream in flight however loaded the machine is
                "stop_drain": 600,
            }
        )
    config = {"llama_server": str(llama_server_bin), "max_parallel": 3, "models": models}
    service = start_service(tmp / "service", config)
    s = Svc(service, yaml.safe_load(service.config_file.read_text()))
    try:
        for name in NAMES:
            code, body = http_json("POST", service.api + f"/models/{name}/start?wait=true")
            assert code == 200, body
        yield s
    finally:
        code = service.stop()
    assert code == 0, service.log()[-3000:]


def instance_get(svc: Svc, model: str, path: str) -> Any:
    """GET path on the model's llama-server itself (not through the gateway)."""
    url = svc.service.status(model)["url"]
    request = urllib.request.Request(url + path, headers=svc.service.instance_auth())
    with urllib.request.urlopen(request, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if path != "/metrics" else raw.decode()


def slots(svc: Svc, model: str) -> list[tuple[int, int]]:
    return [(s["id"], s["n_ctx"]) for s in instance_get(svc, model, "/slots")]


def prompt_tokens(svc: Svc, model: str) -> float:
    for line in instance_get(svc, model, "/metrics").splitlines():
        if line.startswith("llamacpp:prompt_tokens_total"):
            return float(line.split()[-1])
    raise AssertionError("no llamacpp:prompt_tokens_total")


def chat(svc: Svc, model: str, max_tokens: int = 4) -> tuple[int, Any]:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    return http_json("POST", svc.service.url + "/v1/chat/completions", body, timeout=300)


def open_stream(svc: Svc, model: str, max_tokens: int) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", svc.service.port, timeout=300)
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
        "ignore_eos": True,
    }
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    return resp


def test_one_ctx_size_change_replaces_only_that_process(svc: Svc) -> None:
    before = svc.pids()
    kept_slots = {n: slots(svc, n) for n in ("g0", "g2")}
    stream = open_stream(svc, "g1", max_tokens=100)
    first = stream.readline()
    while not first.startswith(b"data:"):
        first = stream.readline()
    svc.model("g1")["ctx_size"] = 1024
    svc.write()
    code, body = svc.reload()
    assert code == 200, body
    assert body["restarted"] == ["g1"] and body["added"] == body["removed"] == []
    wait_until(lambda: svc.service.status("g1")["state"] == "stopping", "g1 draining")
    late: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: late.update(answer=chat(svc, "g1")))
    sender.start()
    wait_until(lambda: svc.service.status("g1")["state"] == "stopping", "g1 still draining")
    rest = stream.read()
    assert b"[DONE]" in rest and b'"error"' not in rest  # the stream in flight completed
    sender.join(timeout=300)
    code, answer = late["answer"]
    assert code == 200, answer
    after = svc.pids()
    assert after["g1"] != before["g1"]
    assert after["g0"] == before["g0"] and after["g2"] == before["g2"]
    assert {n: slots(svc, n) for n in ("g0", "g2")} == kept_slots
    assert all(n_ctx == 512 for _, n_ctx in slots(svc, "g1"))  # 1024 over 2 slots
    # Nothing but the late request reached the new instance: it was served there.
    assert prompt_tokens(svc, "g1") > 0
    assert all(svc.service.status(n)["restarts"] == 0 for n in NAMES)


@pytest.mark.parametrize("breakage", ["yaml", "unknown_key", "missing_gguf"])
def test_a_bad_file_keeps_everything_running(svc: Svc, breakage: str) -> None:
    before = svc.pids()
    good = yaml.safe_dump(svc.config)
    broken = json.loads(json.dumps(svc.config))
    broken["models"][0]["ctx_size"] = 4096  # would restart g0 if it were applied
    if breakage == "unknown_key":
        broken["models"][0]["ctx_sise"] = 1
    elif breakage == "missing_gguf":
        broken["models"][0]["path"] = str(Path(broken["models"][0]["path"]).with_name("no.gguf"))
    text = yaml.safe_dump(broken) + ("\nmodels: [\n" if breakage == "yaml" else "")
    svc.service.config_file.write_text(text)
    code, body = svc.reload()
    assert code == 400, body
    assert body["error"]["file"] == str(svc.service.config_file) and body["error"]["fix"]
    assert svc.pids() == before
    assert all(svc.service.status(n)["state"] == "ready" for n in NAMES)
    assert all(svc.service.status(n)["restarts"] == 0 for n in NAMES)
    gauge = 'llama_exporter_config_last_reload_successful{host="'
    line = next(x for x in http_text(svc.service.url + "/metrics").splitlines() if gauge in x)
    assert line.endswith(" 0.0")
    svc.service.config_file.write_text(good)


def test_a_reload_during_50_concurrent_requests_gives_no_5xx(svc: Svc) -> None:
    before = svc.pids()
    svc.model("g2")["ctx_size"] = 1024
    svc.model("g0")["idle_ttl"] = 600
    svc.write()
    started = threading.Event()

    def one(i: int) -> int:
        started.set()
        code, body = chat(svc, NAMES[i % 3], max_tokens=8)
        assert code < 500, body
        return code

    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(one, i) for i in range(25)]
        started.wait(60)
        wait_until(
            lambda: sum(svc.service.status(n)["in_flight"] for n in NAMES) > 0,
            "requests in flight",
        )
        code, body = svc.reload()
        assert code == 200, body
        assert body["restarted"] == ["g2"] and body["changed_live"] == ["g0"]
        # Half of them arrive while g2 drains or starts again: they wait for it.
        futures += [pool.submit(one, i) for i in range(25, 50)]
        codes = [f.result(timeout=600) for f in futures]
    assert codes == [200] * 50

    def g2_replaced() -> bool:
        st = svc.service.status("g2")
        return bool(st["state"] == "ready" and st["pid"] != before["g2"])

    # Its requests in flight may all have ended before the drain did: then it restarts now.
    wait_until(g2_replaced, "g2 running again with its new ctx_size")
    after = svc.pids()
    assert after["g0"] == before["g0"] and after["g1"] == before["g1"]
    text = http_text(svc.service.url + "/metrics")
    fives = [
        x
        for x in text.splitlines()
        if x.startswith("llama_exporter_gateway_requests_total") and 'code="5' in x
    ]
    assert all(x.endswith(" 0.0") for x in fives), fives
