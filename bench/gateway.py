"""The gateway's cost: through the service vs straight to llama-server, interleaved in one run.

Real llama-server (gemma 270M), the gateway's model and a bare llama-server of our own,
both loaded at once, requests alternating between them:
  - warm streaming time to first token (ratio of medians, p50 of the paired extra);
  - non-streaming total time (ratio of medians);
  - a cold request's time to first token against a bare spawn->ready plus the first
    request's TTFT on that fresh bare server.
Fake llama-server (llama_exporter.testing.fake_llama) behind the service:
  - non-streaming requests per second, through the gateway and straight to the fake;
  - streaming TTFT through the gateway and straight to the fake, paired (the fake's
    timing barely varies, so this is the gateway's own added latency);
  - 256 concurrent streams: errors, and the service's CPU per streamed token.
Figures, not asserts: the machine's speed drifts, so compare only within one run.
The direct baselines are keyed like the service's instances (the bare server starts with
an instance key file and CORS off; direct requests send the key).

    .venv/bin/python bench/gateway.py [--rounds 15] [--ttft-pairs 200] [--binary PATH]
                                      [--model PATH]
                                      [--skip-real] [--skip-fake] [--no-instance-auth]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from _service import HttpService, free_port
from prometheus_client.parser import text_string_to_metric_families
from start_stop import DEFAULT_MODEL, default_binary

from llama_exporter.config.settings import ModelConfig
from llama_exporter.gateway.sse import event_text
from llama_exporter.supervision.command import build_argv
from llama_exporter.supervision.instance_key import InstanceKey, load_or_create_instance_key
from llama_exporter.supervision.process import READY_POLL_INTERVAL, health_status
from llama_exporter.testing.fake_llama import write_executable

GOAL_TTFT_RATIO = 1.05
GOAL_TTFT_EXTRA_MS = 2.0
GOAL_TOTAL_RATIO = 1.02
GOAL_COLD_SLACK_MS = 50.0
GOAL_RPS = 1000.0
STREAMS = 256
PROMPT = "Write a short poem about the sea."


@dataclass
class Answer:
    """One request as the client saw it."""

    status: int
    ttft: float | None  # first event with text (streams)
    total: float
    tokens: int
    done: bool  # the stream ended with [DONE]


async def request(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, object],
    stream: bool,
    headers: dict[str, str] | None = None,
) -> Answer:
    """POST body to url; time the first text event and the end."""
    began = time.monotonic()
    ttft: float | None = None
    tokens = 0
    done = False
    async with session.post(url, json={**body, "stream": stream}, headers=headers) as resp:
        if not stream or resp.status != 200:
            await resp.read()
            return Answer(resp.status, None, time.monotonic() - began, 0, False)
        pending = b""
        async for chunk in resp.content.iter_any():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    done = True
                    continue
                if event_text(json.loads(payload)) is not None:
                    tokens += 1
                    if ttft is None:
                        ttft = time.monotonic() - began
    return Answer(resp.status, ttft, time.monotonic() - began, tokens, done)


def chat_body(model: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
    }


class BareServer:
    """A llama-server of our own, the baseline: the service's flags, its own instance key."""

    def __init__(self, binary: Path, model: ModelConfig, key: InstanceKey | None) -> None:
        self.binary, self.model, self.key = binary, model, key
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        # What its clients send (nothing with --no-instance-auth).
        self.auth = {"Authorization": f"Bearer {key.value}"} if key else {}

    async def start(self) -> float:
        """Spawn and poll /health to 200; returns the seconds it took."""
        key_file = self.key.path if self.key else None
        argv = build_argv(self.binary, self.model, "127.0.0.1", self.port, key_file)
        began = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        api_key = self.key.value if self.key else None
        while await health_status("127.0.0.1", self.port, 1.0, api_key=api_key) != 200:
            if self.proc.returncode is not None:
                raise RuntimeError(f"bare llama-server exited with {self.proc.returncode}")
            await asyncio.sleep(READY_POLL_INTERVAL)
        return time.monotonic() - began

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()


async def paired(
    rounds: int, ours: Callable[[], Awaitable[Answer]], base: Callable[[], Awaitable[Answer]]
) -> tuple[list[Answer], list[Answer]]:
    """Alternate which goes first each round, so drift hits both alike."""
    a: list[Answer] = []
    b: list[Answer] = []
    for i in range(rounds):
        if i % 2:
            a.append(await ours())
            b.append(await base())
        else:
            b.append(await base())
            a.append(await ours())
    bad = [x.status for x in a + b if x.status != 200]
    if bad:
        raise RuntimeError(f"requests failed: {bad}")
    return a, b


def median_interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of values (seeded: the same run, same text)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def real_part(
    binary: Path, model_path: Path, rounds: int, ttft_pairs: int, tmp: Path, instance_auth: bool
) -> None:
    model = ModelConfig("gemma", model_path, ctx_size=2048, parallel=2, args=("--threads", "1"))
    key = load_or_create_instance_key(tmp / "bare") if instance_auth else None
    bare = BareServer(binary, model, key)
    settings = {} if instance_auth else {"instance_auth": False}
    async with HttpService(binary, [model], tmp / "real", **settings) as service:
        # A new connection per request on both sides (llama-server closes kept-alive
        # connections on its own schedule; the gateway keeps its upstream ones).
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=600),
            connector=aiohttp.TCPConnector(force_close=True),
        )
        try:
            await bare.start()
            gw_url = service.url + "/v1/chat/completions"
            direct_url = f"http://127.0.0.1:{bare.port}/v1/chat/completions"
            warm = chat_body("gemma", 1)
            await request(session, gw_url, warm, True)  # the first load, not counted
            await request(session, direct_url, warm, True, bare.auth)

            async def gw_stream() -> Answer:
                return await request(session, gw_url, chat_body("gemma", 4), True)

            async def direct_stream() -> Answer:
                return await request(session, direct_url, chat_body("gemma", 4), True, bare.auth)

            # Many cheap pairs: one pair's difference carries llama-server's own jitter
            # (several ms), so the median of few pairs says little about a 1 ms cost.
            ours, base = await paired(ttft_pairs, gw_stream, direct_stream)
            o_ttft = [a.ttft for a in ours if a.ttft is not None]
            b_ttft = [a.ttft for a in base if a.ttft is not None]
            diffs = [o - b for o, b in zip(o_ttft, b_ttft, strict=False)]
            extra = statistics.median(diffs)
            low, high = median_interval(diffs)
            ratio = statistics.median(o_ttft) / statistics.median(b_ttft)
            print(f"warm streaming TTFT ({ttft_pairs} pairs, 4 tokens)")
            b_med, o_med = statistics.median(b_ttft), statistics.median(o_ttft)
            print(
                f"  direct {ms(b_med)}   gateway {ms(o_med)}"
                f"   ratio {ratio:.3f} (goal <= {GOAL_TTFT_RATIO})"
                f"   p50 added {extra * 1000:+.2f} ms (95% interval {low * 1000:+.2f} to"
                f" {high * 1000:+.2f}; goal <= {GOAL_TTFT_EXTRA_MS:g} ms)"
            )

            async def gw_total() -> Answer:
                return await request(session, gw_url, chat_body("gemma", 32), False)

            async def direct_total() -> Answer:
                body = chat_body("gemma", 32)
                return await request(session, direct_url, body, False, bare.auth)

            ours, base = await paired(rounds, gw_total, direct_total)
            o_total = statistics.median(a.total for a in ours)
            b_total = statistics.median(a.total for a in base)
            print(f"non-streaming total time ({rounds} pairs, 32 tokens)")
            print(
                f"  direct {ms(b_total)}   gateway {ms(o_total)}   ratio {o_total / b_total:.3f}"
                f" (goal <= {GOAL_TOTAL_RATIO})"
            )
            await bare.stop()

            # A fresh llama-server's first request is slower than a warm one (its prompt
            # cache is empty, its buffers untouched): the baseline for a cold request is a
            # bare spawn->ready plus that same first request on the bare server.
            colds: list[float] = []
            spawns: list[float] = []
            firsts: list[float] = []
            stop_url = f"{service.url}/api/v1/llama/models/gemma/stop"

            loads: list[float] = []  # the cold request's wait for the load (the service's)

            async def load_wait_sum() -> float:
                async with session.get(service.url + "/metrics") as resp:
                    text = await resp.text()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "llama_exporter_gateway_load_wait_seconds_sum":
                            return float(sample.value)
                return 0.0

            async def gateway_cold() -> None:
                async with session.post(stop_url) as resp:
                    await resp.read()
                before = await load_wait_sum()
                cold = await request(session, gw_url, chat_body("gemma", 4), True)
                assert cold.ttft is not None
                colds.append(cold.ttft)
                loads.append(await load_wait_sum() - before)

            async def bare_cold() -> None:
                spare = BareServer(binary, model, key)
                try:
                    spawns.append(await spare.start())
                    first = await request(
                        session,
                        f"http://127.0.0.1:{spare.port}/v1/chat/completions",
                        chat_body("gemma", 4),
                        True,
                        spare.auth,
                    )
                    assert first.ttft is not None
                    firsts.append(first.ttft)
                finally:
                    await spare.stop()

            runs = max(4, rounds // 3)
            for i in range(runs):  # pairs, in alternating order: drift hits both alike
                for step in (gateway_cold, bare_cold) if i % 2 else (bare_cold, gateway_cold):
                    await step()
            extras = [c - s - f for c, s, f in zip(colds, spawns, firsts, strict=True)]
            extra = statistics.median(extras)
            low, high = median_interval(extras)
            cold_ttft, spawn = statistics.median(colds), statistics.median(spawns)
            first_ttft = statistics.median(firsts)
            print(f"cold request ({runs} pairs, the model stopped before each)")
            print(
                f"  gateway TTFT {ms(cold_ttft)}   bare spawn->ready {ms(spawn)} + its first"
                f" request's TTFT {ms(first_ttft)}"
            )
            print(
                f"  p50 of the pairs' extra {extra * 1000:+.1f} ms (95% interval"
                f" {low * 1000:+.1f} to {high * 1000:+.1f})   "
                f"{'within' if extra <= GOAL_COLD_SLACK_MS / 1000 else 'ABOVE'} the goal"
                f" (<= +{GOAL_COLD_SLACK_MS:g} ms over spawn + first TTFT)"
            )
            # Spawn->ready alone varies by hundreds of ms from run to run: split the cold
            # request at the moment the model was ready (the service's own load wait).
            after = [c - w - f for c, w, f in zip(colds, loads, firsts, strict=True)]
            low, high = median_interval(after)
            print(
                f"  split at ready: load wait {ms(statistics.median(loads))} vs bare spawn->ready"
                f" {ms(spawn)}; ready -> first token through the gateway minus the bare"
                f" server's first TTFT: p50 {statistics.median(after) * 1000:+.1f} ms"
                f" (95% interval {low * 1000:+.1f} to {high * 1000:+.1f})"
            )
            print(
                f"  (a warm request's TTFT is {ms(statistics.median(b_ttft))}: a fresh server's"
                f" first request costs {(first_ttft - statistics.median(b_ttft)) * 1000:+.1f} ms"
                " more, with or without the gateway)"
            )
        finally:
            await session.close()
            await bare.stop()


async def throughput(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, object],
    n: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> tuple[float, int]:
    """n non-streaming requests with concurrency workers: (requests/s, errors)."""
    todo = iter(range(n))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for _ in todo:
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                errors += resp.status != 200

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.monotonic() - began), errors


async def fake_part(rounds: int, ttft_pairs: int, tmp: Path) -> None:
    binary = write_executable(tmp)
    gguf = tmp / "fake.gguf"
    from llama_exporter.testing.gguf_writer import write_minimal_gguf

    write_minimal_gguf(gguf)
    args = ("--fake-tokens-per-second", "20", "--fake-prompt-tokens-per-second", "1000000")
    model = ModelConfig("fake", gguf, ctx_size=STREAMS * 64, parallel=STREAMS, args=args)
    connector = aiohttp.TCPConnector(limit=0)
    async with HttpService(binary, [model], tmp / "fake") as service:
        session = aiohttp.ClientSession(connector=connector)
        try:
            gw_url = service.url + "/v1/chat/completions"
            await request(session, gw_url, chat_body("fake", 0), False)  # load it
            async with session.get(f"{service.url}/api/v1/llama/status") as resp:
                port = next(m for m in (await resp.json())["models"] if m["model"] == "fake")[
                    "port"
                ]
            direct_url = f"http://127.0.0.1:{port}/v1/chat/completions"
            auth = service.instance_auth()  # the fake instance requires the service's key
            body = chat_body("fake", 0)
            n, conc = 2000, 32
            ours: list[float] = []
            base: list[float] = []
            errors = 0
            proc = psutil.Process(service.proc.pid if service.proc else 0)
            service_cpu = 0.0
            for i in range(max(2, rounds // 5)):
                first, second = (gw_url, direct_url) if i % 2 else (direct_url, gw_url)
                for url in (first, second):
                    cpu0 = sum(proc.cpu_times()[:2])
                    headers = None if url == gw_url else auth
                    rps, err = await throughput(session, url, body, n, conc, headers)
                    if url == gw_url:
                        service_cpu += sum(proc.cpu_times()[:2]) - cpu0
                    errors += err
                    (ours if url == gw_url else base).append(rps)
            print(
                f"non-streaming throughput, fake llama-server ({n} x {len(ours)}, {conc} at once)"
            )
            print(
                f"  direct {statistics.median(base):7.0f} req/s   gateway "
                f"{statistics.median(ours):7.0f} req/s (goal >= {GOAL_RPS:.0f})   errors {errors}"
            )
            per_request = service_cpu / (n * len(ours))
            print(
                f"  service CPU {per_request * 1e6:.0f} us per request"
                f" (one core could serve {1 / per_request:.0f} req/s)"
            )

            # The fake's own timing barely varies: the paired difference is the gateway's.
            async def gw_first() -> Answer:
                return await request(session, gw_url, chat_body("fake", 1), True)

            async def direct_first() -> Answer:
                return await request(session, direct_url, chat_body("fake", 1), True, auth)

            pairs = max(50, ttft_pairs)
            ours_a, base_a = await paired(pairs, gw_first, direct_first)
            diffs = [
                o.ttft - b.ttft
                for o, b in zip(ours_a, base_a, strict=True)
                if o.ttft is not None and b.ttft is not None
            ]
            low, high = median_interval(diffs)
            print(f"streaming TTFT added by the gateway, fake llama-server ({pairs} pairs)")
            print(
                f"  p50 {statistics.median(diffs) * 1000:+.2f} ms (95% interval"
                f" {low * 1000:+.2f} to {high * 1000:+.2f})"
                f"   p90 {statistics.quantiles(diffs, n=10)[-1] * 1000:+.2f} ms"
            )

            cpu0 = sum(proc.cpu_times()[:2])
            began = time.monotonic()
            answers = await asyncio.gather(
                *(request(session, gw_url, chat_body("fake", 20), True) for _ in range(STREAMS))
            )
            wall = time.monotonic() - began
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            bad = sum(1 for a in answers if a.status != 200 or not a.done or a.tokens != 20)
            tokens = sum(a.tokens for a in answers)
            print(
                f"{STREAMS} concurrent streams of 20 tokens through the gateway (fake at 20 tok/s)"
            )
            print(
                f"  errors {bad}   tokens {tokens}   wall {wall:.2f} s   service CPU {cpu:.2f} s"
                f" = {cpu / tokens * 1e6:.0f} us per streamed token"
            )
        finally:
            await session.close()


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as name:
        tmp = Path(name)
        if not args.skip_real:
            binary = args.binary or default_binary()
            await real_part(
                binary, args.model, args.rounds, args.ttft_pairs, tmp, args.instance_auth
            )
        if not args.skip_fake:
            await fake_part(args.rounds, args.ttft_pairs, tmp)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--ttft-pairs", type=int, default=200, help="warm streaming pairs (cheap: ~0.1 s each)"
    )
    parser.add_argument("--binary", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--skip-real", action="store_true", help="only the fake llama-server part")
    parser.add_argument("--skip-fake", action="store_true", help="only the real llama-server part")
    parser.add_argument(
        "--no-instance-auth",
        dest="instance_auth",
        action="store_false",
        help="real part without the instance key on either side (instance_auth: false)",
    )
    args = parser.parse_args(argv)
    if not args.skip_real and not args.model.is_file():
        print(f"model not found: {args.model} (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
