"""End to end through the gateway, all real: the official openai client, the service as a
process, two names for the real gemma model under a cap of 1, and Prometheus scraping with
the project's config and rules. Every query of the dashboards' gateway rows and every
gateway recording rule must return data from these requests, and eviction thrash must
fire. One module-scoped stack; each test starts from whatever state another left, and
counts metrics from its own start, so any test runs alone or in any order.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from promstack import PromHandle, start_prometheus
from service_proc import ServiceProcess, http_json, http_text, start_service
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "grafana"))
import gateway_panels  # noqa: E402
import generate  # noqa: E402
import memory_panels  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.prometheus]

FIRST, SECOND = "gemma", "gemma-b"  # one GGUF file under two names: two instances
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell a long story about a lighthouse keeper and the sea."}
]
# The client leaves a stream long before this: the tests do not wait on generation speed
# (a loaded 2-core machine generates well under 1 token/s).
STREAM_TOKENS = 512


@dataclass
class GatewayStack:
    """What the tests share."""

    service: ServiceProcess
    prom: PromHandle
    client: openai.OpenAI


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[GatewayStack]:
    """Prometheus, and the service with a cap of 1 and a queue of 1 in front of two models."""
    tmp = tmp_path_factory.mktemp("e2e-gateway")
    targets_dir = tmp / "targets"
    targets_dir.mkdir()
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, even on failure
        prom = cleanup.enter_context(
            start_prometheus(
                tmp,
                targets_dir=targets_dir,
                alertmanager_port=None,
                instance_key=tmp / "service" / "state" / "instance.key",
            )
        )
        config = {
            "llama_server": str(llama_server_bin),
            "max_parallel": 1,
            "stop_grace": 10,
            "targets": {"directory": str(targets_dir)},
            "poll": {"interval": 1.0},
            "gateway": {"when_full": "evict", "max_queue": 1, "queue_timeout": 120},
            "memory_budget": {"cpu": "auto"},  # the memory row's panels need a budget
            "models": [
                {
                    "name": name,
                    "path": str(gemma_gguf),
                    "ctx_size": 1024,
                    "parallel": 1,
                    "args": ["--threads", "2"],
                }
                for name in (FIRST, SECOND)
            ],
        }
        service = start_service(tmp / "service", config)
        client = openai.OpenAI(
            base_url=service.url + "/v1", api_key="unused", max_retries=0, timeout=300
        )
        try:
            yield GatewayStack(service, prom, client)
        finally:
            client.close()
            code = service.stop()
        assert code == 0, service.log()[-3000:]


def metric(service: ServiceProcess, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(http_text(service.url + "/metrics")):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def queue_length(service: ServiceProcess) -> int:
    """Requests waiting in the gateway's queue, from its summary route."""
    status, body = http_json("GET", service.api + "/gateway")
    assert status == 200, body
    return int(body["queue_length"])


def ask(client: openai.OpenAI, model: str) -> ChatCompletion:
    """A short non-streamed chat completion."""
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
    assert answer.choices[0].message.content, answer
    return answer


def stream_short(client: openai.OpenAI, model: str) -> str:
    """A short streamed chat completion, read to the end; its text."""
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, max_tokens=4
    )
    with stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text, f"nothing streamed from {model}"
    return text


def while_streaming(gw: GatewayStack, first: str, second: str, *, reject: bool) -> None:
    """Stream from `first`; after three chunks of text, stream from `second`, which must
    queue (the cap of 1 is taken by a model with a request in flight). With reject, a
    further request for `second` finds the queue full (429). Then the client leaves the
    first stream, the gateway cancels it upstream, evicts `first` and loads `second` for
    the queued request."""
    client = gw.client
    stream = client.chat.completions.create(
        model=first,
        messages=MESSAGES,
        stream=True,
        max_tokens=STREAM_TOKENS,
        extra_body={"ignore_eos": True},
    )
    with ThreadPoolExecutor(1) as pool:
        with stream:
            texts = (c for c in stream if c.choices and c.choices[0].delta.content)
            for _ in range(3):  # a time to first token and two gaps between tokens
                assert next(texts, None) is not None, f"stream from {first} ended early"
            queued = pool.submit(stream_short, client, second)
            wait_until(lambda: queue_length(gw.service) == 1, what=f"{second} queued")
            if reject:
                with pytest.raises(openai.RateLimitError) as full:
                    ask(client, second)
                assert full.value.response.headers.get("retry-after"), full.value.response
        queued.result(timeout=280)  # after the stream closed: a load on a busy machine


def gateway_rules(prom: PromHandle) -> list[tuple[str, str, str]]:
    """(name, name, unit) of every gateway recording rule Prometheus has loaded."""
    return [
        (rule["name"], rule["name"], "percentunit" if ":ratio" in rule["name"] else "s")
        for group in prom.rules()
        if group["name"] == "llama-gateway"
        for rule in group["rules"]
        if rule.get("type") == "recording"
    ]


@pytest.mark.timeout(600)
def test_every_gateway_panel_has_data_in_normal_use(gw: GatewayStack) -> None:
    """Requests one after another to a loaded model, nothing queued: no panel says "No data"
    (the queue-wait panel did, when only requests that queued were observed)."""
    prom = gw.prom
    prom.wait_for(lambda: prom.query('up{job="llama-exporter"} == 1'), timeout=30, what="service")
    m = gw.service
    # FIRST loaded with room to spare (SECOND stopped), before counting: no request of
    # this test waits for an eviction, whatever state another test left.
    status, body = http_json("POST", f"{m.api}/models/{SECOND}/stop")
    assert status == 200 and body["state"] == "stopped", body
    ask(gw.client, FIRST)
    wait = "llama_exporter_gateway_queue_wait_seconds"
    before = {
        "count": metric(m, wait + "_count", model=FIRST),
        "sum": metric(m, wait + "_sum", model=FIRST),
        "zero": metric(m, wait + "_bucket", model=FIRST, le="0.0"),
    }
    stop = threading.Event()
    failures: list[BaseException] = []

    def traffic() -> None:
        try:
            while not stop.is_set():
                ask(gw.client, FIRST)
                stream_short(gw.client, FIRST)
        except BaseException as err:  # reported by the test thread
            failures.append(err)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        prom.wait_for_data([*gateway_queries(), *gateway_rules(prom)], timeout=240)
        prom.wait_for_data(row_queries(memory_panels.ROW), timeout=120)
        assert not failures, failures
    finally:
        stop.set()
        worker.join()
    assert not failures, failures
    queued = metric(m, wait + "_count", model=FIRST) - before["count"]
    assert queued >= 2  # every admitted request, though none queued:
    assert metric(m, wait + "_sum", model=FIRST) == before["sum"]
    assert metric(m, wait + "_bucket", model=FIRST, le="0.0") - before["zero"] == queued


def test_requests_queue_evict_and_are_counted(gw: GatewayStack) -> None:
    m = gw.service
    for model in (FIRST, SECOND):  # both cold, whatever ran before
        status, body = http_json("POST", f"{m.api}/models/{model}/stop")
        assert status == 200 and body["state"] == "stopped", body
    counters = {
        "first_loads": ("llama_exporter_model_loads_total", {"model": FIRST, "trigger": "request"}),
        "second_loads": (
            "llama_exporter_model_loads_total",
            {"model": SECOND, "trigger": "request"},
        ),
        "first_evicted": (
            "llama_exporter_model_unloads_total",
            {"model": FIRST, "reason": "evicted"},
        ),
        "rejected": (
            "llama_exporter_gateway_rejected_total",
            {"model": SECOND, "reason": "queue_full"},
        ),
        "queue_wait": ("llama_exporter_gateway_queue_wait_seconds_count", {"model": SECOND}),
        "load_wait": ("llama_exporter_gateway_load_wait_seconds_count", {"model": SECOND}),
        "first_ttft": (
            "llama_exporter_gateway_time_to_first_token_seconds_count",
            {"model": FIRST},
        ),
        "second_ttft": (
            "llama_exporter_gateway_time_to_first_token_seconds_count",
            {"model": SECOND},
        ),
    }

    def read() -> dict[str, float]:
        return {key: metric(m, name, **labels) for key, (name, labels) in counters.items()}

    before = read()
    # Cold: the first request loads the model; then a streamed one on the loaded model.
    ask(gw.client, FIRST)
    stream_short(gw.client, FIRST)
    while_streaming(gw, FIRST, SECOND, reject=True)

    after = read()
    grown = {key: after[key] - before[key] for key in counters}
    assert grown["first_loads"] == grown["second_loads"] == 1, grown
    assert grown["first_evicted"] == grown["rejected"] == 1, grown
    assert grown["queue_wait"] == grown["load_wait"] == 1, grown
    # Streams read to the end: one per model (the abandoned one may count or not, as the
    # client's disconnect reaches the gateway during a write or as a cancellation).
    assert grown["second_ttft"] == 1 and grown["first_ttft"] >= 1, grown
    assert gw.service.status(SECOND)["state"] == "ready"
    assert gw.service.status(FIRST)["state"] == "stopped"


def row_queries(row: str) -> list[tuple[str, str, str]]:
    """(title, expr, unit) of every panel in the dashboards' rows titled row, for FIRST."""
    queries: list[tuple[str, str, str]] = []
    for board_file in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board, _ = generate.split_row(json.loads(board_file.read_text()), row)
        assert board["panels"], board_file
        queries += generate.panel_queries(board, {"model": FIRST, "datasource": "x"})
    return queries


def gateway_queries() -> list[tuple[str, str, str]]:
    """(title, expr, unit) of every panel in the dashboards' gateway rows, for FIRST."""
    return row_queries(gateway_panels.ROW)


@pytest.mark.timeout(900)  # rounds of load + first tokens; slow while the machine is shared
def test_every_gateway_panel_and_rule_has_data(gw: GatewayStack) -> None:
    prom = gw.prom
    prom.wait_for(lambda: prom.query('up{job="llama-exporter"} == 1'), timeout=30, what="service")
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        # Each round streams from one model while the other queues, then evicts it: every
        # round loads a model, and both models see streams, queue waits and load waits.
        models = [SECOND, FIRST]
        try:
            while not stop.is_set():
                while_streaming(gw, models[0], models[1], reject=False)
                models.reverse()
        except BaseException as err:  # reported by the test thread
            failures.append(err)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        rules = gateway_rules(prom)
        assert len(rules) >= 10
        prom.wait_for_data([*gateway_queries(), *rules], timeout=180)
        assert not failures, failures

        def thrash_alert() -> list[dict[str, Any]]:
            assert not failures, failures
            return [
                a
                for a in prom.alerts()
                if a["labels"]["alertname"] == "LlamaEvictionThrash" and a["state"] == "firing"
            ]

        alerts = prom.wait_for(thrash_alert, timeout=300, what="LlamaEvictionThrash firing")
        assert {a["labels"]["model"] for a in alerts} <= {FIRST, SECOND}
    finally:
        stop.set()
        worker.join()
    assert not failures, failures
