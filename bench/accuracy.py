"""Accuracy of the live numbers against the real llama-server's own answers.

Runs `llama-exporter serve` with the real model, sends rounds of two concurrent
long generations plus short requests (shorter than the 1 s poll interval), and
compares, in the same run:

- tokens generated: the service's llama_exporter_tokens_generated_total against the
  sum of the answers' timings.predicted_n (goal: exact), and against a /slots-only
  poller at 1 Hz run by this script (the baseline: what monitors that read only
  /slots count);
- live tokens/s: the mean per-slot rate the service reports while both slots
  generate, against the answers' timings.predicted_per_second (goal: within 10%).

    .venv/bin/python bench/accuracy.py [--rounds 3] [--tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from _service import HttpService
from prometheus_client.parser import text_string_to_metric_families
from start_stop import DEFAULT_MODEL, default_binary

from llama_exporter.config.settings import ModelConfig

PROMPT = "Write a long story about a lighthouse keeper and the sea. Once upon a time,"


async def complete(
    session: aiohttp.ClientSession, port: int, n: int, prompt: str, auth: dict[str, str]
) -> Any:
    """One completion straight to the instance (with the service's key); its JSON answer."""
    body = {"prompt": prompt, "n_predict": n, "ignore_eos": True, "temperature": 0}
    url = f"http://127.0.0.1:{port}/completion"
    async with session.post(url, json=body, headers=auth) as resp:
        return await resp.json()


async def counter(session: aiohttp.ClientSession, url: str, model: str) -> float:
    """The service's tokens-generated counter for the model."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "llama_exporter_tokens_generated_total" and s.labels["model"] == model:
                return float(s.value)
    raise RuntimeError("tokens_generated_total not exported")


class SlotsOnlyPoller:
    """The baseline: a 1 Hz /slots reader counting the largest n_decoded seen per task."""

    def __init__(self, session: aiohttp.ClientSession, port: int, auth: dict[str, str]) -> None:
        self.session = session
        self.port = port
        self.auth = auth
        self.seen: dict[tuple[int, int], int] = {}

    async def run(self) -> None:
        while True:
            url = f"http://127.0.0.1:{self.port}/slots"
            async with self.session.get(url, headers=self.auth) as resp:
                slots = await resp.json()
            for slot in slots:
                if not slot.get("is_processing"):
                    continue
                nt = slot.get("next_token")
                nt = (nt[0] if nt else {}) if isinstance(nt, list) else (nt or {})
                key = (slot["id"], slot.get("id_task", -1))
                self.seen[key] = max(self.seen.get(key, 0), int(nt.get("n_decoded", 0)))
            await asyncio.sleep(1.0)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


async def run(binary: Path, model_path: Path, rounds: int, tokens: int, state: Path) -> int:
    model = ModelConfig("bench", model_path, ctx_size=4096, parallel=2, args=("--threads", "2"))
    async with HttpService(binary, [model], state, poll={"interval": 1.0}) as service:
        assert service.session is not None
        session = service.session
        api = f"{service.url}/api/v1/llama"
        async with session.post(f"{api}/models/bench/start", params={"wait": "true"}) as resp:
            port = (await resp.json())["port"]
        auth = service.instance_auth()
        await complete(session, port, 4, "Hi", auth)  # warm up
        await asyncio.sleep(2)
        before = await counter(session, service.url, "bench")
        baseline = SlotsOnlyPoller(session, port, auth)
        poll_task = asyncio.create_task(baseline.run())
        began = time.time()
        answers: list[Any] = []
        long_answers: list[Any] = []
        for _ in range(rounds):
            pair = await asyncio.gather(
                complete(session, port, tokens, PROMPT, auth),
                complete(session, port, tokens, PROMPT, auth),
            )
            long_answers += pair
            answers += pair
            for _ in range(2):
                answers.append(await complete(session, port, 3, "Hi", auth))
        await asyncio.sleep(2.5)
        poll_task.cancel()
        after = await counter(session, service.url, "bench")
        async with session.get(f"{api}/models/bench/metrics") as resp:
            history = (await resp.json())["history"]
    truth = sum(a["timings"]["predicted_n"] for a in answers)
    ours = after - before
    rates: list[float] = []
    seen: set[tuple[int, int]] = set()
    for snap in history:
        if snap["timestamp"] < began or snap["slots_busy"] != 2:
            continue
        for slot in snap["slots"]:
            key = (slot["id"], slot["task_id"])
            if key in seen:
                rates.append(slot["tokens_per_second"])
            seen.add(key)
    live = sum(rates) / len(rates) if rates else float("nan")
    true_rate = sum(a["timings"]["predicted_per_second"] for a in long_answers) / len(long_answers)
    print(f"rounds {rounds}: 2 x {tokens}-token generations + 2 x 3-token requests each")
    print(
        f"tokens generated  truth {truth:6.0f}   service {ours:6.0f} (ratio {ours / truth:.3f})"
        f"   /slots-only 1 Hz baseline {baseline.total:6d} (ratio {baseline.total / truth:.3f})"
    )
    print(
        f"tokens/s per slot truth {true_rate:6.2f}   service {live:6.2f} "
        f"(ratio {live / true_rate:.3f}, {len(rates)} polls; goal within 10%)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--binary", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/llama-exporter-accuracy"))
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"model not found: {args.model} (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    binary = args.binary or default_binary()
    return asyncio.run(run(binary, args.model, args.rounds, args.tokens, args.state_dir))


if __name__ == "__main__":
    raise SystemExit(main())
