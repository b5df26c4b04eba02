"""An LLM's reply -> the JSON value it meant, repaired only where that is unambiguous.

Replies come wrapped in code fences, after a `<think>` block, with trailing commas, in Python's
single-quoted syntax, or cut off by max_tokens in the middle of an array. Each of these has one
reading, and `parse_reply` takes it (saying it repaired something); anything else (two JSON
values, prose with no JSON, an object cut off inside a string, a reasoning block that never
ends) raises `Unreadable`, and the caller retries with a stricter instruction or records the
failure with the raw text. Nothing is guessed.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_OPENERS = {"array": "[", "object": "{"}
_CLOSERS = {"[": "]", "{": "}"}


class Unreadable(ValueError):
    """The reply holds no JSON value of the expected kind that can be read in one way."""


@dataclass(frozen=True)
class Parsed:
    value: Any
    repairs: tuple[str, ...] = ()  # what was repaired, e.g. ("think block", "trailing comma")

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)


def parse_reply(text: str, kind: str) -> Parsed:
    """The JSON `kind` ("array" or "object") in an LLM reply, or raise Unreadable."""
    repairs: list[str] = []
    whole = _try_json(text.strip())  # valid as it is (even with "</think>" inside a string)
    if whole is not None:
        return Parsed(_of_kind(whole.value, kind, repairs), tuple(repairs))
    body = _without_reasoning(text, repairs)
    value = _try_json(body.strip())
    if value is None:
        body = _unfenced(body, repairs)
        value = _try_json(body.strip())
    if value is None:
        candidate = _outermost(body, _OPENERS[kind], repairs)
        value = _try_json(candidate)
        if value is None:
            value = _repaired_literal(candidate, repairs)
    value = _of_kind(value.value if isinstance(value, _Box) else value, kind, repairs)
    return Parsed(value, tuple(repairs))


class _Box:
    """A parsed JSON value (which may itself be None, false, ...)."""

    def __init__(self, value: Any):
        self.value = value


def _try_json(text: str) -> _Box | None:
    try:
        return _Box(json.loads(text))
    except (json.JSONDecodeError, RecursionError):
        return None


def _without_reasoning(text: str, repairs: list[str]) -> str:
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        end = stripped.find(THINK_CLOSE)
        if end < 0:
            raise Unreadable(
                "the reply is a <think> block that never ends (cut off by max_tokens?)"
            )
        repairs.append("think block")
        return stripped[end + len(THINK_CLOSE) :]
    if THINK_CLOSE in text:  # DeepSeek-R1 style: the opening marker was in the prompt
        repairs.append("think block")
        return text[text.rfind(THINK_CLOSE) + len(THINK_CLOSE) :]
    return text


def _unfenced(text: str, repairs: list[str]) -> str:
    blocks = [b for b in _FENCE.findall(text) if b.strip()]
    if not blocks:
        if text.lstrip().startswith("```"):  # an opening fence whose closing one was cut off
            repairs.append("code fence")
            return text.lstrip()[3:].split("\n", 1)[-1]
        return text
    readable = [b for b in blocks if _try_json(b.strip()) is not None]
    if len(blocks) > 1 and len(readable) != 1:
        raise Unreadable(f"the reply has {len(blocks)} code blocks; which one is meant is unclear")
    repairs.append("code fence")
    return readable[0] if readable else blocks[0]


def _outermost(text: str, opener: str, repairs: list[str]) -> str:
    """The one top-level `[...]` (or `{...}`) in the text; a cut-off array is closed after its
    last whole element."""
    start = text.find(opener)
    if start < 0:
        raise Unreadable(f"the reply has no JSON {'array' if opener == '[' else 'object'}")
    end, last_comma, last_close = _scan(text, start)
    if end is None:
        if opener != "[" or last_comma is None:
            raise Unreadable("the reply's JSON is cut off (max_tokens too small?)")
        repairs.append("truncated array")
        return text[start:last_comma] + "]"
    if text[:start].strip() or text[end + 1 :].strip():
        rest = text[end + 1 :]
        if rest.find(opener) >= 0 and _scan(rest, rest.find(opener))[0] is not None:
            raise Unreadable("the reply holds more than one JSON value")
        repairs.append("text around the JSON")
    return text[start : end + 1]


def _scan(text: str, start: int) -> tuple[int | None, int | None, int | None]:
    """From the bracket at `start`: (index of its closing bracket or None, index of the last
    comma at depth 1, index of the last element closed at depth 1). Quotes of both kinds are
    strings; brackets inside strings do not count."""
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    last_comma = last_close = None
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            # an apostrophe inside a word ("what's") is not a quote
            if ch == "'" and i > 0 and text[i - 1].isalnum():
                continue
            quote = ch
        elif ch in _CLOSERS:
            stack.append(_CLOSERS[ch])
        elif ch in "]}":
            if not stack or stack[-1] != ch:
                return None, last_comma, last_close
            stack.pop()
            if not stack:
                return i, last_comma, last_close
            if len(stack) == 1:
                last_close = i
        elif ch == "," and len(stack) == 1:
            last_comma = i
    return None, last_comma, last_close


_TRAILING_COMMA = re.compile(r",(\s*[\]}])")


def _repaired_literal(candidate: str, repairs: list[str]) -> _Box:
    """Trailing commas, then Python literal syntax (single quotes, True/None): each has one
    reading. Anything else is unreadable."""
    without_commas = _outside_strings_sub(candidate)
    if without_commas != candidate:
        value = _try_json(without_commas)
        if value is not None:
            repairs.append("trailing comma")
            return value
    try:
        value = ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise Unreadable(
            "the reply's JSON is malformed in a way that has no single reading"
        ) from None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise Unreadable(
            "the reply is not JSON (Python values that JSON has no form for)"
        ) from None
    repairs.append("single quotes" if "'" in candidate else "python literal")
    return _Box(value)


def _outside_strings_sub(text: str) -> str:
    """Remove commas before a closing bracket, outside double-quoted strings."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
            continue
        match = _TRAILING_COMMA.match(text, i)
        if match:
            out.append(match.group(1))
            i = match.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _of_kind(value: Any, kind: str, repairs: list[str]) -> Any:
    if kind == "array" and isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(value) == 1 and len(lists) == 1:  # {"questions": [...]}
            repairs.append("array inside an object")
            return lists[0]
    if kind == "object" and isinstance(value, list) and len(value) == 1:
        if isinstance(value[0], dict):
            repairs.append("object inside an array")
            return value[0]
    expected = list if kind == "array" else dict
    if not isinstance(value, expected):
        raise Unreadable(f"the reply is JSON, but not an {kind}")
    return value
