"""Time to first token of `lmforge api` under 1, 8 and 16 concurrent streams.

    python benchmarks/api_ttft.py                       # the tiny test model (built here)
    python benchmarks/api_ttft.py --config infer.yaml   # any inference YAML
    python benchmarks/api_ttft.py --concurrency 1 8 16 32 --rounds 5 --max-tokens 32

The server is `lmforge api` in its own process on 127.0.0.1 (OMP_NUM_THREADS=1 unless set), so
client and server do not share a GIL. Each round starts `c` streamed chat requests at once
(greedy, `max_tokens` new tokens, distinct prompts); a request's TTFT is the time from sending
it to the first event that carries generated text (or its finish). Printed: a markdown table
of p50, p95 and max TTFT per concurrency, and the tokens per second of the whole round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MIN_REQUESTS = 20  # per concurrency: more rounds where `rounds` x c would be fewer


def tiny_model_config(folder: Path) -> Path:
    """The tests' tiny Gemma-3-shaped model (2 layers, hidden 32, character tokenizer)."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    build_tiny_model(len(tokenizer)).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    path = folder / "infer.yaml"
    settings = {"model_name_or_path": str(folder / "model"), "template": "gemma"}
    path.write_text(yaml.safe_dump({**settings, "served_model_name": "bench"}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: Path, port: int) -> subprocess.Popen:
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    cmd = [sys.executable, "-m", "lmforge", "api", str(config), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            server.terminate()
            raise SystemExit("the server did not start in 300 s")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)


async def one(client: httpx.AsyncClient, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Tell me about number {i}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                first = choice["delta"].get("content") or choice["finish_reason"]
                if ttft is None and first:
                    ttft = time.perf_counter() - start
    return ttft, tokens


async def measure(url: str, model: str, concurrency: int, rounds: int, max_tokens: int):
    limits = httpx.Limits(max_connections=concurrency + 4)
    ttfts, rates = [], []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one(client, model, -1, 4)  # warm-up
        for r in range(max(rounds, -(-MIN_REQUESTS // concurrency))):
            start = time.perf_counter()
            results = await asyncio.gather(
                *(one(client, model, r * concurrency + i, max_tokens) for i in range(concurrency))
            )
            wall = time.perf_counter() - start
            ttfts += [t for t, _ in results]
            rates.append(sum(n for _, n in results) / wall)
    return ttfts, statistics.mean(rates)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="inference YAML (default: the tiny model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=5, help="at least 20 requests in all")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = args.config or tiny_model_config(Path(tmp))
        port = free_port()
        server = start_server(config, port)
        url = f"http://127.0.0.1:{port}"
        try:
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            stats = httpx.get(f"{url}/health").json()
            print(
                f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
                f"model {model}; max_concurrent {stats['max_active']}; "
                f"{args.max_tokens} new tokens per request\n"
            )
            print("| concurrent streams | requests | TTFT p50 | TTFT p95 | TTFT max | tokens/s |")
            print("| --- | --- | --- | --- | --- | --- |")
            for c in args.concurrency:
                ttfts, rate = asyncio.run(measure(url, model, c, args.rounds, args.max_tokens))
                ms = [t * 1000 for t in ttfts]
                print(
                    f"| {c} | {len(ms)} | {percentile(ms, 0.5):.0f} ms | "
                    f"{percentile(ms, 0.95):.0f} ms | {max(ms):.0f} ms | {rate:.0f} |"
                )
        finally:
            server.terminate()  # the one process this script started
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
