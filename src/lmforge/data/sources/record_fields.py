"""Reading one field of a record: text, tools, KTO label, tool calls (reasoning: reasoning.py).

Each reader records a problem on the RecordCheck (naming the data's own column) and returns
None instead of raising, so every problem of a record is found in one pass.
"""

from __future__ import annotations

import json
from typing import Any

from lmforge.data.problems import RecordCheck
from lmforge.data.sources.registry import DatasetSpec


def column_text(
    check: RecordCheck, spec: DatasetSpec, record: dict, key: str, *, required: bool
) -> str | None:
    column = spec.columns.get(key)
    value = record.get(column) if column else None
    if value is None or value == "":
        if required and column:
            present = ", ".join(sorted(map(str, record))) or "none"
            check.problem(
                column,
                f"missing or empty (columns present: {present})",
                f'give every record a `{column}` value, or map the right column with "columns": '
                f'{{"{key}": "..."}} in the dataset entry',
                "missing column",
            )
        return None
    if not isinstance(value, str):  # a number too: `"output": 5` is not turned into "5"
        check.problem(column, f"must be text, not {describe(value)}", text_fix(value), "wrong type")
        return None
    return value


def text_fix(value: Any) -> str:
    """How to write a non-text value as the text a field needs."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (
            f'write it as a JSON string ("{value}" instead of {value}), or fix the column mapping'
        )
    return "write the value as a JSON string, or fix the column mapping"


def column_tools(check: RecordCheck, spec: DatasetSpec, record: dict) -> str | None:
    """The tool schemas as a JSON list string of `{"name", "description", "parameters"}`
    objects (LLaMA-Factory's `tools` column), or None."""
    column = spec.columns.get("tools")
    value = record.get(column) if column else None
    if value in (None, "", [], "[]"):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            check.problem(
                column,
                f"is not valid JSON ({exc.msg} at character {exc.pos})",
                'write the tools as a JSON list: [{"name": ..., "description": ..., '
                '"parameters": {...}}]',
                "bad tools",
            )
            return None
    if isinstance(value, dict):
        value = [value]
    names_ok = isinstance(value, list) and all(_tool_name(tool) for tool in value)
    if not names_ok:
        check.problem(
            column,
            "must be a list of tool schemas, each with a `name` (or OpenAI's "
            '{"type": "function", "function": {"name": ...}})',
            'write [{"name": "get_weather", "description": ..., "parameters": {...}}]',
            "bad tools",
        )
        return None
    # One shape for every format (LLaMA-Factory's): OpenAI's {"type": "function", "function":
    # {...}} wrapper is removed; templates add whatever wrapper their model expects.
    value = [tool["function"] if isinstance(tool.get("function"), dict) else tool for tool in value]
    return json.dumps(value, ensure_ascii=False) if value else None


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    inner = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = inner.get("name")
    return name if isinstance(name, str) and name else None


def column_kto_label(check: RecordCheck, spec: DatasetSpec, record: dict) -> bool | None:
    column = spec.columns["kto_tag"]
    value = record.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # CSV cells are text
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    reason = "missing" if value is None else f"must be true or false, not {value!r}"
    check.problem(
        column,
        reason,
        f'give every record `"{column}": true` (a desirable answer) or false (undesirable)',
        "bad label" if value is not None else "missing column",
    )
    return None


def parse_tool_calls(value: Any) -> tuple[list[dict] | None, str | None]:
    """Tool calls in LLaMA-Factory's function_call shape ({"name", "arguments"}, or a list of
    them, as JSON text or objects) or OpenAI's ({"type": "function", "function": {...}} with
    `arguments` as JSON text) -> ([{"name": str, "arguments": dict}], None) or (None, reason)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    calls = value if isinstance(value, list) else [value]
    if not calls:
        return None, "no tool call in it"
    result = []
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]
        name = call.get("name") if isinstance(call, dict) else None
        if not isinstance(name, str) or not name:
            return None, "a tool call has no `name`"
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                return None, f"the arguments of `{name}` are not valid JSON ({exc.msg})"
        if not isinstance(arguments, dict):
            return None, f"the arguments of `{name}` must be an object, not {describe(arguments)}"
        result.append({"name": name, "arguments": arguments})
    return result, None


def describe(value: Any) -> str:
    """A value's JSON type for a message: "a number (5)", "a list", "null", ..."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a number ({value!r})"
    names = {dict: "an object", list: "a list", bool: "true/false", type(None): "null"}
    return names.get(type(value), type(value).__name__)
