"""OpenAI's request and response shapes: validated requests in, plain JSON dicts out.

Unknown request fields are accepted and ignored (clients such as LangChain send their own), but
a field we cannot honour (logprobs, a JSON response_format, images) is refused with a 400 that
says so, rather than silently giving a different result.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.infer.tool_parser import ToolCall

MAX_N = 16
# OpenAI's bounds for `seed` (a signed 64-bit integer); choice i of n uses seed + i, which
# still fits torch's generator (it takes -2**63 .. 2**64 - 1).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class APIError(Exception):
    """An error the client caused (or may retry), in OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code=None,
        param=None,
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Request):
    name: str
    arguments: str | dict = "{}"


class ToolCallIn(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class Sampling(_Request):
    """The generation fields chat and text completions share."""

    model: str
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | int | None = None
    # vLLM's extra sampling fields, which clients pass with extra_body.
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)

    def sampling_overrides(self) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and len(stop) > 4:
            raise APIError(400, "`stop` takes at most 4 sequences", param="stop")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
            "stop": stop,
        }

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    enable_thinking: bool | None = None  # like vLLM's chat_template_kwargs.enable_thinking
    chat_template_kwargs: dict[str, Any] | None = None

    def sampling_overrides(self) -> dict[str, Any]:
        overrides = super().sampling_overrides()
        if self.max_completion_tokens is not None:
            overrides["max_tokens"] = self.max_completion_tokens
        fmt = (self.response_format or {}).get("type", "text")
        if fmt != "text":
            raise APIError(
                400, f"response_format `{fmt}` is not supported", param="response_format"
            )
        return overrides

    def thinking(self) -> bool | None:
        kwargs = self.chat_template_kwargs or {}
        return kwargs.get("enable_thinking", self.enable_thinking)

    def canonical_messages(self) -> list[dict]:
        """OpenAI messages -> lmforge's message dicts (see infer/prompt.py)."""
        out = []
        for i, m in enumerate(self.messages):
            role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
            message: dict[str, Any] = {"role": role, "content": _text(m.content, i)}
            reasoning = (m.model_extra or {}).get("reasoning_content")
            if role == "assistant" and isinstance(reasoning, str) and reasoning:
                message["reasoning"] = reasoning  # the template keeps or drops it, as trained
            if m.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                    for c in m.tool_calls
                ]
            out.append(message)
        return out

    def tool_dicts(self) -> list[dict] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        if self.suffix:
            raise APIError(400, "`suffix` is not supported", param="suffix")
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]  # one prompt given as token ids
        if not p:
            raise APIError(400, "`prompt` is empty", param="prompt")
        return list(p)


def _text(content: str | list[dict[str, Any]] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(
                400,
                f"messages[{index}]: content of type `{part.get('type')}` is not supported "
                "(this server takes text only)",
                param=f"messages.{index}.content",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def parse_request(raw: bytes, cls: type[_Request]) -> Any:
    """Bytes of a request body -> a validated request, or a 400 that says what is wrong."""
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise APIError(400, f"{where}: {first['msg']}{more}", param=where or None) from None


# -- responses --------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if index is not None:
        data = {"index": index, **data}  # streamed deltas carry their position
    return data


def chat_message(content: str, reasoning: str, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [tool_call_json(c) for c in calls]
    elif not content:
        message["content"] = ""
    return message


def chat_completion(rid: str, model: str, choices: list[dict], use: dict) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": use,
    }


def chat_chunk(
    rid: str, model: str, choices: list[dict], use: dict | None = None
) -> dict[str, Any]:
    chunk = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if use is not None:
        chunk["usage"] = use
    return chunk


def text_completion(rid: str, model: str, choices: list[dict], use: dict | None) -> dict:
    data = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if use is not None:
        data["usage"] = use
    return data


def sse(data: dict | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n"
