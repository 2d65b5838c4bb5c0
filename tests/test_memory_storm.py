"""Admission under a storm, all real: the service as a process, real llama-servers, six
models (hard links of the gemma GGUF with different ctx_size), 200 concurrent gateway
requests from the official `openai` client, and a memory budget that holds about two.

Sampled every 100 ms while it runs: the service's reserved memory against its budget,
and the memory the llama-servers really hold. On a machine shared with other work the
host's own "used" moves with everyone's, so the growth measured is the sum of the
instances' proportional set size (PSS: a page shared by hard-linked files counts once),
with the host's MemAvailable drop printed beside it.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from promstack import missing
from service_proc import ServiceProcess, http_json, http_text, start_service

from llama_exporter.config.settings import ModelConfig
from llama_exporter.memory.book import MemoryBook

try:
    import openai
except ImportError:  # pragma: no cover - installed by scripts/bootstrap.sh --test
    openai = None  # type: ignore[assignment]

pytestmark = [pytest.mark.real]

CTX = (1024, 2048, 4096, 8192, 12288, 16384)
REQUESTS = 200
SAMPLE_EVERY = 0.1


def pss_bytes(pid: int) -> int:
    """The process's proportional set size (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


@dataclass
class Samples:
    """What the 100 ms sampler saw."""

    budget: int = 0
    max_reserved: int = 0
    max_pss: int = 0
    max_drop: int = 0
    count: int = 0
    over: list[str] = field(default_factory=list)  # reserved above the budget, if ever
    failed: set[str] = field(default_factory=set)  # models seen failed, with the reason


def sample(service: ServiceProcess, out: Samples, stop: threading.Event) -> None:
    """Every 100 ms: reserved vs budget (the service's view) and the instances' PSS."""
    base = mem_available()
    while not stop.is_set():
        began = time.monotonic()
        _, status = http_json("GET", service.api + "/status")
        cpu = status["memory"]["devices"].get("cpu", {})
        reserved = cpu.get("reserved_bytes", 0)
        out.max_reserved = max(out.max_reserved, reserved)
        if reserved > out.budget:
            out.over.append(f"{reserved} > {out.budget}: {cpu.get('models')}")
        pids = [m["pid"] for m in status["models"] if m["pid"]]
        out.max_pss = max(out.max_pss, sum(pss_bytes(p) for p in pids))
        out.max_drop = max(out.max_drop, base - mem_available())
        out.failed |= {
            f"{m['model']}: {m['last_error']}" for m in status["models"] if m["state"] == "failed"
        }
        out.count += 1
        stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - began)))


Labels = tuple[tuple[str, str], ...]


def counters(service: ServiceProcess, name: str) -> dict[Labels, float]:
    text = http_text(service.url + "/metrics")
    out: dict[Labels, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                labels = {k: v for k, v in s.labels.items() if k != "host"}
                out[tuple(sorted(labels.items()))] = s.value
    return out


@pytest.fixture(scope="module")
def storm(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[tuple[ServiceProcess, dict[str, int], int]]:
    if openai is None:
        missing("the openai package is not installed: scripts/bootstrap.sh --test")
    tmp = tmp_path_factory.mktemp("storm")
    models: list[dict[str, Any]] = []
    figures: dict[str, int] = {}
    book = MemoryBook(tmp / "estimates")
    for i, ctx in enumerate(CTX):
        link = tmp / f"g{i}.gguf"
        os.link(gemma_gguf, link)  # the same inode: six models, one file's pages
        name = f"g{i}"
        models.append(
            {
                "name": name,
                "path": str(link),
                "ctx_size": ctx,
                "parallel": 2,
                "args": ["--threads", "1"],
            }
        )
        figure = book.estimate(
            ModelConfig(name, link, ctx_size=ctx, parallel=2, args=("--threads", "1"))
        )
        figures[name] = figure.total("cpu")
    two_largest = sorted(figures.values())[-2:]
    budget = sum(two_largest)  # holds any two; never three of the larger ones
    first = 31000 + random.randrange(0, 5000)
    config: dict[str, Any] = {
        "llama_server": str(llama_server_bin),
        "max_parallel": len(CTX),  # memory, not the cap, is what binds
        "ports": {"first": first, "last": first + 40},
        "memory_budget": {"cpu": budget},
        "ready_timeout": 300,
        "gateway": {"when_full": "evict", "max_queue": REQUESTS + 10, "queue_timeout": 1200},
        "models": models,
    }
    service = start_service(tmp, config)
    try:
        yield service, figures, budget
    finally:
        service.stop()


async def _storm(url: str, names: list[str]) -> list[int | str]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1200)

    async def one(model: str) -> int | str:
        try:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
            )
        except openai.APIStatusError as exc:
            return exc.status_code
        except openai.APIError as exc:
            return repr(exc)
        return 200

    try:
        return await asyncio.gather(*(one(m) for m in names))
    finally:
        await client.close()


def test_storm_never_overshoots_the_budget(
    storm: tuple[ServiceProcess, dict[str, int], int],
) -> None:
    service, figures, budget = storm
    rng = random.Random(18)
    names = [rng.choice(sorted(figures)) for _ in range(REQUESTS)]
    samples = Samples(budget=budget)
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(service, samples, stop), daemon=True)
    sampler.start()
    began = time.monotonic()
    try:
        codes = asyncio.run(_storm(service.url, names))
    finally:
        stop.set()
        sampler.join(10)
    took = time.monotonic() - began
    loads = counters(service, "llama_exporter_model_loads_total")
    unloads = counters(service, "llama_exporter_model_unloads_total")
    evicted = sum(v for k, v in unloads.items() if ("reason", "evicted") in k)
    loaded = sum(loads.values())
    statuses = http_json("GET", service.api + "/status")[1]["models"]
    running = sum(1 for s in statuses if s["state"] in ("starting", "ready", "stopping"))
    print(
        f"\nstorm: {REQUESTS} requests over {len(figures)} models in {took:.1f} s; budget "
        f"{budget / 2**20:.0f} MiB, figures {[round(v / 2**20) for v in figures.values()]} MiB; "
        f"max reserved {samples.max_reserved / 2**20:.0f} MiB, max instances' PSS "
        f"{samples.max_pss / 2**20:.0f} MiB, max MemAvailable drop "
        f"{samples.max_drop / 2**20:.0f} MiB (shared machine), {samples.count} samples; "
        f"{loaded:.0f} loads, {evicted:.0f} evictions"
    )
    assert codes.count(200) == REQUESTS, sorted({str(c) for c in codes})
    assert not samples.over, samples.over[:3]
    assert samples.max_reserved <= budget
    assert samples.max_pss <= budget * 1.05
    assert not samples.failed  # no out-of-memory failure, no failure at all
    assert samples.count >= took / SAMPLE_EVERY / 4  # the sampler kept up (roughly)
    # Every eviction counted with its reason: each load ended by an eviction, or runs.
    assert {k for k, v in unloads.items() if v} <= {
        (("model", m), ("reason", "evicted")) for m in figures
    }
    assert evicted == loaded - running
    assert service.log().count("gateway: evicting") == evicted
