"""Load (issue Step 6, B8f): 16, then 32 concurrent streams against the server on 127.0.0.1,
a quarter of the clients hanging up mid-stream, and huge requests among the normal ones.
Every normal request must complete, nothing may be a 5xx, and the hung-up requests must be
cancelled. Bounded in count (48 streams) and time (each round under a 240 s cap); no timings
are asserted."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from lmforge.infer.limits import ServerLimits

from .api_servers import guarded_server

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def url(shared_engine):
    from lmforge.infer.api import create_app

    limits = ServerLimits(max_body_bytes=2 * 2**20)
    with guarded_server(create_app(shared_engine, limits=limits), limits) as base:
        yield base


async def normal(client: httpx.AsyncClient, i: int, hang_up: bool) -> dict:
    """One streamed chat; with `hang_up`, the client leaves after its first content chunk."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Hello number {i}"}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "frequency_penalty": 2.0,  # varied text, so content chunks come
        "stream": True,
    }
    result = {"status": None, "done": False, "finish": None, "events": 0}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        result["status"] = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                result["done"] = True
                continue
            event = json.loads(data)
            assert "error" not in event, event
            result["events"] += 1
            for choice in event["choices"]:
                result["finish"] = choice["finish_reason"] or result["finish"]
                if hang_up and choice["delta"].get("content"):
                    return result  # leaving the `async with` closes the connection
    return result


async def huge(client: httpx.AsyncClient, kind: str) -> httpx.Response:
    if kind == "long prompt":  # under the body limit, far over the model's context
        body = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 1_500_000}]}
        return await client.post("/v1/chat/completions", json=body)
    if kind == "big body":  # over the body limit
        body = {"model": "tiny", "prompt": "x" * 3_000_000}
        return await client.post("/v1/completions", json=body)
    body = {"model": "tiny", "prompt": ["Hi"] * 64, "n": 16, "max_tokens": 100}  # over budget
    return await client.post("/v1/completions", json=body)


HUGE = {"long prompt": 413, "big body": 413, "many sequences": 400}


async def round_of(url: str, streams: int) -> tuple[list[dict], dict[str, httpx.Response]]:
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        normals = [normal(client, i, hang_up=i % 4 == 3) for i in range(streams)]
        kinds = list(HUGE)
        # The huge requests go in among the normal ones, not before or after them all.
        tasks = normals[: streams // 2] + [huge(client, k) for k in kinds] + normals[streams // 2 :]
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)
    huge_results = results[streams // 2 : streams // 2 + len(kinds)]
    return (
        results[: streams // 2] + results[streams // 2 + len(kinds) :],
        dict(zip(kinds, huge_results)),
    )


@pytest.mark.parametrize("streams", [16, 32])
def test_concurrent_streams_with_hang_ups_and_huge_requests(url, shared_engine, streams):
    normals, huges = asyncio.run(round_of(url, streams))
    for i, result in enumerate(normals):
        assert result["status"] == 200, (i, result)
        if i % 4 == 3:
            assert result["events"] >= 1 and not result["done"]  # hung up mid-stream
        else:
            assert result["done"] and result["finish"] in ("stop", "length"), (i, result)
    for kind, r in huges.items():
        assert r.status_code == HUGE[kind], (kind, r.status_code, r.text[:300])
        assert r.json()["error"]["type"] == "invalid_request_error"
    # Every hung-up request was cancelled: the worker goes idle (bounded poll, ~30 s at most).
    deadline = time.monotonic() + 30
    while shared_engine.stats()["active"] or shared_engine.stats()["waiting"]:
        assert time.monotonic() < deadline, shared_engine.stats()
        time.sleep(0.05)
