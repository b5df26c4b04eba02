"""`lmforge api`: an OpenAI-compatible HTTP server over one engine.

Endpoints: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions,
POST /v1/completions. Every error is OpenAI's error JSON with a 4xx status when the request is
at fault; anything unexpected is logged with its traceback and answered with a short 500.
Handlers never block the event loop: parsing and tokenizing run in a thread, generation runs on
the engine's worker thread and chunks come back through an asyncio queue (see
infer/scheduler.py), so many requests stream at once. Before anything is queued, a request's
cost is checked against its budget (infer/limits.py); a client that disconnects, streaming or
not, has its sequences cancelled. Browser and size checks are middleware (infer/guards.py);
connection limits and timeouts are the server's (infer/http_server.py).
"""

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from lmforge.errors import UserError
from lmforge.infer.engine import BaseEngine
from lmforge.infer.guards import RequestGuard
from lmforge.infer.limits import (
    ServerLimits,
    check_request_cost,
    check_request_count,
    limits_from_config,
)
from lmforge.infer.openai_protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    chat_message,
    new_id,
    parse_request,
    sse,
    text_completion,
    tool_call_json,
    usage,
)
from lmforge.infer.sampling import SamplingParams

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (`request: Request`) at runtime, and Request is imported inside create_app.

logger = logging.getLogger(__name__)


def create_app(
    engine: BaseEngine, *, api_key: str | None = None, limits: ServerLimits | None = None
):
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response, StreamingResponse
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.middleware.cors import CORSMiddleware
    except ImportError:
        raise UserError(
            "`lmforge api` needs FastAPI and uvicorn", fix="pip install 'lmforge[api]'"
        ) from None

    limits = limits or ServerLimits()
    budget = limits.request_budget(engine.max_length)
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None)
    if limits.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(limits.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    app.add_middleware(RequestGuard, limits=limits)  # added last: runs first
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        body = APIError(exc.status_code, str(exc.detail), type="invalid_request_error").body
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.exception("request to %s failed", request.url.path)
        body = APIError(500, "internal server error (see the server log)", type="server_error")
        return JSONResponse(body.body, status_code=500)

    def authorize(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
            raise APIError(
                401,
                "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                code="invalid_api_key",
            )

    def check_model(name: str) -> None:
        try:
            engine.adapter_for(name)
        except LookupError:
            raise APIError(
                404,
                f"the model `{name[:100]}` does not exist; this server has: "
                + ", ".join(engine.model_names),
                param="model",
                code="model_not_found",
            ) from None

    def model_card(name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": created, "owned_by": "lmforge"}
        if name != engine.base_name:
            card["parent"] = engine.base_name
        return card

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.stats()}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card(n) for n in engine.model_names]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        authorize(request)
        check_model(name)
        return model_card(name)

    def encode_chat(req: ChatCompletionRequest, overrides: dict[str, Any]):
        """(prompt, sampling params); runs in a thread (templates and tokenizers are slow)."""
        try:
            prompt = engine.encode_chat(
                req.canonical_messages(),
                tools=req.tool_dicts(),
                tool_choice=req.tool_choice_value(),
                enable_thinking=req.thinking(),
            )
            return prompt, engine.sampling_params(**overrides)
        except UserError as exc:
            raise APIError(400, exc.format(), param="messages") from None

    def encode_prompts(texts: list[str | list[int]]) -> list[tuple[str, list[int]]]:
        """(text, ids) of each completion prompt; runs in a thread."""
        prompts = []
        vocab = len(engine.tokenizer)
        for p in texts:
            ids = p if isinstance(p, list) else engine.tokenizer.encode(p)
            if not ids:
                raise APIError(400, "a prompt is empty", param="prompt")
            if not all(0 <= i < vocab for i in ids):
                raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", param="prompt")
            prompts.append((p if isinstance(p, str) else engine.tokenizer.decode(ids), ids))
        return prompts

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await request.body()
        req: ChatCompletionRequest = await run_in_threadpool(
            parse_request, body, ChatCompletionRequest
        )
        check_model(req.model)
        overrides = req.sampling_overrides()
        prompt, params = await run_in_threadpool(encode_chat, req, overrides)
        params = fit_context(engine, len(prompt.ids), params, explicit=overrides["max_tokens"])
        check_request_cost([len(prompt.ids)], req.n, [params.max_tokens], budget)
        stream = engine.submit(
            prompt.ids, params, model=req.model, n=req.n, loop=asyncio.get_running_loop()
        )
        rid = new_id("chatcmpl")
        parsers = [engine.answer_parser(prompt) for _ in range(req.n)]
        if req.stream:
            events = stream_chat(stream, parsers, rid, req.model, req.include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        done = await unless_disconnected(request, collect(stream, req.n), [stream])
        if done is None:
            return Response(status_code=204)  # nobody is listening; generation was cancelled
        texts, reasons, tokens = done
        choices = []
        for i, parser in enumerate(parsers):
            answer = parser.parse(texts[i])
            reason = "tool_calls" if answer.tool_calls else reasons[i]
            message = chat_message(answer.content, answer.reasoning, answer.tool_calls)
            choices.append({"index": i, "message": message, "finish_reason": reason})
        return chat_completion(rid, req.model, choices, usage(len(prompt.ids), sum(tokens)))

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await request.body()
        req: CompletionRequest = await run_in_threadpool(parse_request, body, CompletionRequest)
        check_model(req.model)
        overrides = req.sampling_overrides()
        texts = req.prompts()
        check_request_count(len(texts), req.n, budget)  # before tokenizing them all
        prompts = await run_in_threadpool(encode_prompts, texts)
        params = await run_in_threadpool(lambda: engine.sampling_params(**overrides))
        fitted = [
            fit_context(engine, len(ids), params, explicit=overrides["max_tokens"])
            for _, ids in prompts
        ]
        lengths = [len(ids) for _, ids in prompts]
        check_request_cost(lengths, req.n, [f.max_tokens for f in fitted], budget)
        loop = asyncio.get_running_loop()
        streams = [
            engine.submit(ids, fit, model=req.model, n=req.n, loop=loop)
            for (_, ids), fit in zip(prompts, fitted)
        ]
        rid = new_id("cmpl")
        prompt_tokens = sum(lengths)
        if req.stream:
            events = stream_text(streams, prompts, req, rid, prompt_tokens)
            return StreamingResponse(events, media_type="text/event-stream")
        done = await unless_disconnected(
            request, asyncio.gather(*(collect(s, req.n) for s in streams)), streams
        )
        if done is None:
            return Response(status_code=204)
        choices, completion_tokens = [], 0
        for p, (texts_p, reasons, tokens) in enumerate(done):
            completion_tokens += sum(tokens)
            for i in range(req.n):
                text = (prompts[p][0] if req.echo else "") + texts_p[i]
                choices.append(
                    {
                        "index": p * req.n + i,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": reasons[i],
                    }
                )
        use = usage(prompt_tokens, completion_tokens)
        return text_completion(rid, req.model, choices, use)

    return app


def fit_context(
    engine: BaseEngine, prompt_len: int, params: SamplingParams, *, explicit: int | None
) -> SamplingParams:
    """413 when the prompt (plus an asked-for max_tokens) exceeds the model's context."""
    from dataclasses import replace

    limit = engine.max_length
    if prompt_len >= limit or (explicit is not None and prompt_len + explicit > limit):
        asked = f" + max_tokens {explicit}" if explicit is not None else ""
        raise APIError(
            413,
            f"the prompt has {prompt_len} tokens{asked}, more than this model's context of "
            f"{limit} tokens; shorten the conversation or lower max_tokens",
            code="context_length_exceeded",
        )
    room = limit - prompt_len
    return params if params.max_tokens <= room else replace(params, max_tokens=room)


async def unless_disconnected(request, work, streams) -> Any:
    """`work`'s result; None if the client disconnected first, after cancelling `streams` (the
    scheduler then drops their sequences at its next round, as for a dropped stream)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            for stream in streams:
                stream.cancel()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
    return None if task.cancelled() else task.result()


async def _disconnected(receive) -> None:
    # After the body, an ASGI server's receive() waits until the client disconnects.
    while (await receive())["type"] != "http.disconnect":
        pass


async def collect(stream, n: int) -> tuple[list[str], list[str | None], list[int]]:
    texts, reasons, tokens = [""] * n, [None] * n, [0] * n
    async for chunk in stream:
        texts[chunk.index] += chunk.text
        if chunk.finish_reason:
            reasons[chunk.index] = chunk.finish_reason
            tokens[chunk.index] = chunk.completion_tokens
    return texts, reasons, tokens


def _delta(kind: str, value: Any, call_index: int) -> dict[str, Any]:
    if kind == "tool_call":
        return {"tool_calls": [tool_call_json(value, call_index)]}
    return {"reasoning_content" if kind == "reasoning" else "content": value}


async def stream_chat(stream, parsers, rid: str, model: str, include_usage: bool):
    """SSE chunks of a chat completion: role, deltas (content/reasoning/tool calls), finish."""
    n = len(parsers)
    calls = [0] * n
    tokens = [0] * n
    try:
        first = [{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)]
        yield sse(chat_chunk(rid, model, [{**c, "finish_reason": None} for c in first]))
        async for chunk in stream:
            i = chunk.index
            events = parsers[i].feed(chunk.text)
            if chunk.finish_reason:
                events += parsers[i].finish()
            for kind, value in events:
                delta = _delta(kind, value, calls[i])
                calls[i] += kind == "tool_call"
                choice = {"index": i, "delta": delta, "finish_reason": None}
                yield sse(chat_chunk(rid, model, [choice]))
            if chunk.finish_reason:
                tokens[i] = chunk.completion_tokens
                reason = "tool_calls" if calls[i] else chunk.finish_reason
                choice = {"index": i, "delta": {}, "finish_reason": reason}
                yield sse(chat_chunk(rid, model, [choice]))
        if include_usage:
            yield sse(chat_chunk(rid, model, [], usage(stream.prompt_tokens, sum(tokens))))
        yield sse("[DONE]")
    except Exception as exc:
        async for line in _stream_error(exc):
            yield line
    finally:
        stream.cancel()


async def stream_text(streams, prompts, req: CompletionRequest, rid: str, prompt_tokens: int):
    tokens = 0
    try:
        for p, stream in enumerate(streams):
            if req.echo:
                for i in range(req.n):
                    choice = {
                        "index": p * req.n + i,
                        "text": prompts[p][0],
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    yield sse(text_completion(rid, req.model, [choice], None))
            async for chunk in stream:
                if chunk.finish_reason:
                    tokens += chunk.completion_tokens
                choice = {
                    "index": p * req.n + chunk.index,
                    "text": chunk.text,
                    "logprobs": None,
                    "finish_reason": chunk.finish_reason,
                }
                yield sse(text_completion(rid, req.model, [choice], None))
        if req.include_usage:
            yield sse(text_completion(rid, req.model, [], usage(prompt_tokens, tokens)))
        yield sse("[DONE]")
    except Exception as exc:
        async for line in _stream_error(exc):
            yield line
    finally:
        for stream in streams:
            stream.cancel()


async def _stream_error(exc: Exception) -> AsyncIterator[str]:
    # Headers are gone already: the error travels as an SSE event, as OpenAI does it.
    if isinstance(exc, APIError):
        yield sse(exc.body)
        return
    logger.error("generation failed while streaming", exc_info=exc)
    yield sse(APIError(500, "generation failed (see the server log)", type="server_error").body)


# -- running the server -----------------------------------------------------------------------


def server_address(config, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Flag, else environment (API_HOST / API_PORT), else config (127.0.0.1:8000)."""
    host = host or os.environ.get("API_HOST") or config.infer.api_host
    raw_port = port if port is not None else os.environ.get("API_PORT") or config.infer.api_port
    try:
        port = int(raw_port)
    except ValueError:
        raise UserError(
            f"API_PORT `{raw_port}` is not a port number", fix="e.g. API_PORT=8000"
        ) from None
    return host, port


def api_key_from(config) -> str | None:
    return os.environ.get("API_KEY") or config.infer.api_key or None


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                fix="choose another port with --port (or API_PORT), or stop what uses it",
            ) from None


def serve(
    config,
    host: str | None = None,
    port: int | None = None,
    *,
    cors: str | None = None,
    max_request_tokens: int | None = None,
) -> None:
    """Load the engine, then serve until interrupted. `cors` and `max_request_tokens` (the
    command-line flags) win over api_cors and api_max_request_tokens."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("`lmforge api` needs uvicorn", fix="pip install 'lmforge[api]'") from None
    from lmforge.infer.engine import create_engine
    from lmforge.infer.http_server import quiet_repeats, server_config

    host, port = server_address(config, host, port)
    limits = limits_from_config(config, host, cors=cors, max_request_tokens=max_request_tokens)
    check_port_free(host, port)
    key = api_key_from(config)
    engine = create_engine(config)
    app = create_app(engine, api_key=key, limits=limits)
    models = ", ".join(engine.model_names)
    logger.info(
        "serving %s on http://%s:%d/v1%s", models, host, port, " (API key required)" if key else ""
    )
    logger.info(
        "limits: %d tokens per request, %g MiB per body, %d connections; browser origins: %s",
        limits.request_budget(engine.max_length),
        limits.max_body_bytes / 2**20,
        limits.connection_limit(),
        ", ".join(limits.cors_origins) or "none",
    )
    server = uvicorn.Server(server_config(app, host, port, limits, log_level="info"))
    quiet_repeats()  # after uvicorn has configured its loggers
    try:
        server.run()
    finally:
        engine.close()
