"""The request log, all real: the service as a process, real llama-servers with the gemma
model, the official `openai` client. One service (3 models, cap 2, evict), restarted
with other request_log settings. Each test arranges the models it needs and reads only
the records that arrived since it began, so the tests run alone and in any order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promstack import missing
from service_proc import ServiceProcess, http_json, start_service
from test_gateway_real import PROMPT, Gw, _mark_sent, _models
from waiting import wait_until

try:
    import openai
except ImportError:  # pragma: no cover - installed by scripts/bootstrap.sh --test
    openai = None  # type: ignore[assignment]

pytestmark = [pytest.mark.real]


class Svc:
    """A service that can be restarted with other top-level settings."""

    def __init__(self, tmp: Path, llama: Path, gemma: Path) -> None:
        self.tmp = tmp
        models = [
            {
                "name": f"g{i}",
                "path": str(path),
                "ctx_size": 2048,
                "parallel": 2,
                "args": ["--threads", "1"],
            }
            for i, path in enumerate(_models(tmp, gemma, 3))
        ]
        self.base = {
            "llama_server": str(llama),
            "max_parallel": 2,
            "models": models,
            "gateway": {"when_full": "evict"},
        }
        self.gw = self._start({})

    def _start(self, extra: dict[str, Any]) -> Gw:
        service = start_service(self.tmp / "service", {**self.base, **extra})
        client = openai.OpenAI(
            base_url=service.url + "/v1",
            api_key="unused",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(event_hooks={"request": [_mark_sent]}),
        )
        return Gw(service, client)

    def stop(self) -> None:
        self.gw.client.close()
        code = self.gw.service.stop()
        assert code == 0, self.gw.service.log()[-3000:]

    def restart(self, **extra: Any) -> None:
        self.stop()
        self.gw = self._start(extra)

    @property
    def service(self) -> ServiceProcess:
        return self.gw.service

    def records(self, **query: str) -> list[dict[str, Any]]:
        """Every record matching query (all pages)."""
        out: list[dict[str, Any]] = []
        cursor = ""
        while True:
            params = "&".join(f"{k}={v}" for k, v in {**query, "limit": "1000"}.items())
            params += f"&cursor={cursor}" if cursor else ""
            code, body = http_json("GET", f"{self.service.api}/requests?{params}")
            assert code == 200, body
            out += body["requests"]
            cursor = body["next_cursor"]
            if not cursor:
                return out

    def counted(self) -> Counter[tuple[str, str, str]]:
        """requests_total as (model, endpoint, code) -> count."""
        from prometheus_client.parser import text_string_to_metric_families
        from service_proc import http_text

        out: Counter[tuple[str, str, str]] = Counter()
        text = http_text(self.service.url + "/metrics")
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "llama_exporter_gateway_requests_total" and s.value:
                    out[(s.labels["model"], s.labels["endpoint"], s.labels["code"])] += int(s.value)
        return out

    def logged(self) -> Counter[tuple[str, str, str]]:
        """The log's records as (model, endpoint, status) -> count."""
        return Counter((r["model"], r["endpoint"], str(r["status"])) for r in self.records())


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Svc]:
    if openai is None:
        missing("the openai package is not installed (scripts/bootstrap.sh --test)")
    s = Svc(tmp_path_factory.mktemp("reqlog-real"), llama_server_bin, gemma_gguf)
    yield s
    s.stop()


def test_an_in_flight_stream_shows_up_and_its_disconnect_is_logged(svc: Svc) -> None:
    svc.gw.arrange()  # every model stopped: g0 is cold
    stream, _, _ = svc.gw.stream("g0", max_tokens=900)
    [live] = svc.records(status="in_flight")
    assert live["model"] == "g0" and live["stream"] is True and live["status"] is None
    assert live["triggered_load"] is True  # g0 was cold
    stream.close()  # the client goes away mid-stream
    wait_until(lambda: not svc.records(status="in_flight"), "the cut stream to end")
    code, cut = http_json("GET", f"{svc.service.api}/requests/{live['id']}")
    assert code == 200 and cut["status"] == 499 and cut["error_type"] == "client_closed"
    assert cut["load_wait_s"] > 0 and cut["ttft_s"] is not None and cut["completion_tokens"]


def test_a_cold_request_records_its_load_wait_and_what_it_evicted(svc: Svc) -> None:
    svc.gw.arrange("g0")  # only g0 running
    since = f"{time.time():.6f}"
    svc.gw.chat("g1", max_tokens=2)  # g1 loads beside g0 (cap 2)
    [g1] = svc.records(model="g1", since=since)
    assert g1["triggered_load"] is True and g1["evicted"] == [] and g1["load_wait_s"] > 0
    svc.gw.chat("g1", max_tokens=1)  # g0 is now the least recently used
    svc.gw.chat("g2", max_tokens=2)  # the cap is full: g0 goes
    [g2] = svc.records(model="g2", since=since)
    assert g2["triggered_load"] is True and g2["evicted"] == ["g0"]
    assert g2["load_wait_s"] > 0 and g2["status"] == 200
    assert g2["duration_s"] >= g2["load_wait_s"] + g2["queue_wait_s"]
    warm = svc.records(model="g1", since=since)[0]
    assert warm["triggered_load"] is False and warm["load_wait_s"] == 0


def test_the_log_counts_what_requests_total_counts(svc: Svc) -> None:
    svc.gw.arrange("g1", "g2")
    counted, logged = svc.counted(), svc.logged()
    svc.gw.chat("g1", max_tokens=2)
    for _ in range(2):
        stream, _, _ = svc.gw.stream("g2", max_tokens=3)
        list(stream)
    with pytest.raises(openai.NotFoundError):
        svc.gw.chat("nope")
    with pytest.raises(openai.BadRequestError):
        svc.gw.client.embeddings.create(model="g1", input="hi")  # no --embeddings: 400
    svc.gw.client.completions.create(model="g2", prompt="Once", max_tokens=2)
    svc.gw.sent += 2  # the embeddings and completions calls above bypass gw's counting
    counted_delta = svc.counted() - counted
    logged_delta = svc.logged() - logged
    assert logged_delta == counted_delta
    assert sum(counted_delta.values()) == 6
    # The streams' usage (include_usage) and finish reasons are in the log.
    streams = [r for r in svc.records(model="g2") if r["stream"]][:2]
    assert [r["completion_tokens"] for r in streams] == [3, 3]
    assert {r["finish_reason"] for r in streams} == {"length"}


def test_capture_off_stores_no_bodies(svc: Svc) -> None:
    svc.gw.arrange("g1")
    since = f"{time.time():.6f}"
    svc.gw.chat("g1", max_tokens=2)
    stream, _, _ = svc.gw.stream("g1", max_tokens=3)
    list(stream)
    svc.gw.settle()
    mine = svc.records(since=since)
    assert len(mine) == 2
    for record in mine:
        code, one = http_json("GET", f"{svc.service.api}/requests/{record['id']}")
        assert code == 200 and one["request_body"] is None and one["response_body"] is None
    state = svc.service.state_dir
    svc.restart()  # a clean stop checkpoints the WAL into the file
    raw = (state / "requests.db").read_bytes()
    assert PROMPT.encode() not in raw and b"lighthouse" not in raw
    assert len(svc.records()) > 0


def test_a_restart_keeps_the_log_and_retention_trims_it(svc: Svc) -> None:
    svc.gw.arrange("g1")
    for _ in range(3):
        svc.gw.chat("g1", max_tokens=1)
    svc.gw.settle()
    before = svc.records()
    assert len(before) >= 4
    svc.restart(request_log={"max_rows": 3})
    kept = svc.records()
    assert [r["id"] for r in kept] == [r["id"] for r in before[:3]]  # the newest 3
    svc.restart(request_log={"retention": 0.001})
    assert svc.records() == []  # every record is older than a millisecond
    svc.gw.chat("g1", max_tokens=1)
    assert [r["model"] for r in svc.records()] == ["g1"]


def test_a_corrupt_database_is_moved_aside_and_logging_goes_on(svc: Svc) -> None:
    state = svc.service.state_dir
    svc.stop()
    (state / "requests.db").write_bytes(b"garbage, not SQLite " * 512)
    for side in ("requests.db-wal", "requests.db-shm"):
        (state / side).unlink(missing_ok=True)
    svc.gw = svc._start({})
    svc.gw.chat("g2", max_tokens=1)
    wait_until(lambda: len(svc.records()) == 1, "the request after the corrupt file")
    [aside] = state.glob("requests.db.corrupt-*")
    assert aside.read_bytes().startswith(b"garbage")
    assert "moved it aside as" in svc.service.log() and str(aside) in svc.service.log()
