"""OpenAI's request and response shapes: validated requests in, plain JSON dicts out.

Unknown request fields are accepted and ignored (clients such as LangChain send their own), but
a field we cannot honour (logprobs, logit_bias, best_of, a JSON response_format, images) is
refused with a 400 that says so, rather than silently giving a different result. Every value
that could break generation is bounded here, so client input is a 400, never a 500: JSON
nested deeper than MAX_JSON_DEPTH, text that is not valid Unicode (a lone surrogate such as
"\\ud800"), temperatures and repetition penalties that overflow float32 logits, tool schemas
whose parts are not the JSON Schema objects the templates read.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmforge.infer.sampling import GREEDY_BELOW
from lmforge.infer.tool_parser import ToolCall

MAX_N = 16
# OpenAI's bounds for `seed` (a signed 64-bit integer); choice i of n uses seed + i, which
# still fits torch's generator (it takes -2**63 .. 2**64 - 1).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# Below this, logits / temperature overflows float32 (1e-40 is already subnormal there); the
# sampler treats such temperatures as greedy (sampling.GREEDY_BELOW, vLLM's rule). A request
# must say 0 for greedy.
MIN_TEMPERATURE = GREEDY_BELOW
# transformers' multiplicative penalty divides logits by it: outside this range they overflow.
REPETITION_PENALTY_RANGE = (0.01, 100.0)
MAX_STOP_LENGTH = 1024  # characters; each generated token is compared with every stop string
MAX_JSON_DEPTH = 64  # nested arrays/objects in a request body


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

    @field_validator("parameters")
    @classmethod
    def _schema_shape(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        """The parts of a JSON Schema the tool formats read must have JSON Schema's types.

        Checked, not converted: the dict is passed on as sent, so the prompt shows the schema
        with the client's key order."""
        if schema is None:
            return None
        properties = schema.get("properties")
        if properties is not None and not isinstance(properties, dict):
            raise ValueError("`properties` must be an object mapping names to schemas")
        for name, prop in (properties or {}).items():
            if not isinstance(prop, dict):
                raise ValueError(f"properties.{name} must be an object (a JSON Schema)")
            if prop.get("enum") is not None and not isinstance(prop["enum"], list):
                raise ValueError(f"properties.{name}.enum must be an array")
            if prop.get("items") is not None and not isinstance(prop["items"], dict):
                raise ValueError(f"properties.{name}.items must be an object (a JSON Schema)")
        required = schema.get("required")
        if required is not None and not (
            isinstance(required, list) and all(isinstance(r, str) for r in required)
        ):
            raise ValueError("`required` must be an array of property names")
        return schema


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Request):
    name: str


class ToolChoiceFunction(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


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
    repetition_penalty: float | None = Field(
        None, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1]
    )

    # Fields this server cannot honour, with the values that ask for nothing (those pass).
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "logit_bias": ({},),
        "best_of": (1,),
    }

    @field_validator("temperature")
    @classmethod
    def _not_vanishing(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(
                f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}; smaller values overflow "
                "the logits"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _short_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_LENGTH} characters")
        return value

    def refuse_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name, harmless in self.UNSUPPORTED.items():
            value = extra.get(name)
            if value is not None and not any(
                value == h and type(value) is type(h) for h in harmless
            ):
                raise APIError(
                    400,
                    f"`{name}` is not supported by this server (it would be ignored, changing "
                    "the result); remove it",
                    param=name,
                    code="unsupported_parameter",
                )

    def sampling_overrides(self) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and len(stop) > 4:
            raise APIError(400, "`stop` takes at most 4 sequences", param="stop")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        self.refuse_unsupported()
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
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    response_format: dict[str, Any] | None = None
    enable_thinking: bool | None = None  # like vLLM's chat_template_kwargs.enable_thinking
    chat_template_kwargs: dict[str, Any] | None = None

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        **Sampling.UNSUPPORTED,
        "top_logprobs": (0,),
        "functions": ([],),  # the legacy form of `tools`
        "function_call": ("none", "auto"),
        "modalities": (["text"],),
        "audio": (),
        "prediction": (),
        "web_search_options": (),
    }

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
        value = kwargs.get("enable_thinking", self.enable_thinking)
        if value is not None and not isinstance(value, bool):
            raise APIError(
                400,
                "chat_template_kwargs.enable_thinking must be true, false or null",
                param="chat_template_kwargs.enable_thinking",
            )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice_shape(cls, value: Any) -> Any:
        named = (
            isinstance(value, dict)
            and value.get("type", "function") == "function"
            and isinstance(value.get("function"), dict)
            and isinstance(value["function"].get("name"), str)
        )
        if value is None or value in ("none", "auto", "required") or named:
            return value
        raise ValueError(
            'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
        )

    def tool_choice_value(self) -> str | dict[str, Any]:
        """What the prompt builder takes: "none", "auto", "required" or OpenAI's dict."""
        if self.tool_choice is None:
            return "auto"
        if isinstance(self.tool_choice, str):
            return self.tool_choice
        return self.tool_choice.model_dump()

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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_request(raw: bytes, cls: type[_Request]) -> Any:
    """Bytes of a request body -> a validated request, or a 400 that says what is wrong."""
    try:
        data = json.loads(raw or b"null", parse_constant=_no_constant)
    except RecursionError:
        raise APIError(
            400, f"the request body nests arrays/objects more than {MAX_JSON_DEPTH} deep"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, a 5000-digit number
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    check_json_tree(data)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _dotted(_location(data, first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise APIError(400, f"{where}: {message}{more}", param=where or None) from None


def _location(data: Any, loc: tuple) -> tuple:
    """pydantic's error location without the names of union members ("str", "list[str]"),
    which are not in the request: only the keys and indices that lead to the bad value."""
    path, value = [], data
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif isinstance(value, (dict, list)) and not _is_member_tag(part):
            path.append(part)  # a missing field: named, though it is not in the request
            value = None
            continue
        else:
            continue
        path.append(part)
    return tuple(path)


def _is_member_tag(part: Any) -> bool:
    """A union member's tag in a pydantic location, e.g. "list[str]" or "function-after[...]"."""
    return isinstance(part, str) and ("[" in part or part[:1].isupper() or part in _SCALARS)


_SCALARS = ("str", "int", "float", "bool", "dict", "list", "none")


def check_json_tree(data: Any) -> None:
    """400 for JSON nested deeper than MAX_JSON_DEPTH, or with text that is not valid Unicode
    (JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer or UTF-8 encoder
    takes). Iterative, so the depth of the input cannot exhaust the stack."""
    stack: list[tuple[Any, int, tuple]] = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise APIError(
                400,
                f"the request body nests arrays/objects more than {MAX_JSON_DEPTH} deep",
                param=_dotted(path) or None,
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, path)
            stack.append((item, depth + 1, (*path, key)))


def _check_text(text: str, path: tuple) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = _dotted(path)
        raise APIError(
            400,
            f"{where + ': ' if where else ''}the text contains a lone UTF-16 surrogate "
            f"({text[exc.start]!a}), which is not valid Unicode; send whole characters "
            "(a surrogate pair, or the character itself)",
            param=where or None,
        ) from None


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


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
