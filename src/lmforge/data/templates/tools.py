"""How tool schemas and tool calls are written into a conversation, per template family.

A template names its format (`tool_format` in its YAML; `tool_format` in the config overrides
it). Tool *results* are plain data in the template YAML (`observation`), so only the parts that
need JSON rules live here:
- `system_parts(system, tools)`: the system prompt(s) that announce the tools;
- `calls(content, calls)`: the assistant text of a turn that calls tools.

Formats: `qwen` (Qwen2.5/Qwen3, as their chat templates write it), `glm4` (GLM-4-9B-Chat) and
`default` (LLaMA-Factory's ReAct-style text, for templates whose vendor has no tool format).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmforge.errors import UserError


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON as the `tojson` filter of transformers' chat templates writes it."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def parse_tools(tools: str | list | None) -> list[dict]:
    """The sample's `tools` (a JSON string or a list) -> [{"type": "function", "function": ...}]."""
    if not tools:
        return []
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"the tools column is not valid JSON ({exc.msg})",
                fix="write `tools` as a JSON list of function schemas",
            ) from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise UserError(
            "the tools column must be a list of function schemas",
            fix='write `tools` as [{"name": ..., "description": ..., "parameters": {...}}, ...]',
        )
    # Vendors' templates expect the OpenAI wrapping; LLaMA-Factory data often has bare schemas.
    return [
        t if t.get("type") == "function" else {"type": "function", "function": t} for t in tools
    ]


def call_parts(call: dict) -> tuple[str, Any]:
    """(name, arguments) of a tool call in the sample's or in OpenAI's shape."""
    if isinstance(call.get("function"), dict):
        call = call["function"]
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # kept as written: the text is what the model should produce
    return str(call.get("name", "")), arguments


def arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else to_json(arguments)


@dataclass(frozen=True)
class ToolFormat:
    name: str

    def system_parts(self, system: str | None, tools: list[dict]) -> list[str]:
        raise NotImplementedError

    def calls(self, content: str, calls: list[dict]) -> str:
        raise NotImplementedError


QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class QwenTools(ToolFormat):
    def system_parts(self, system: str | None, tools: list[dict]) -> list[str]:
        listed = QWEN_TOOLS.format(tools="".join("\n" + to_json(t) for t in tools))
        return [f"{system}\n\n{listed}" if system else listed]

    def calls(self, content: str, calls: list[dict]) -> str:
        texts = []
        for call in calls:
            name, arguments = call_parts(call)
            texts.append(
                f'<tool_call>\n{{"name": "{name}", "arguments": {arguments_text(arguments)}}}'
                "\n</tool_call>"
            )
        return "\n".join(([content] if content else []) + texts)


GLM4_TOOLS = (
    "你是一个名为 GLM-4 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)
# transformers renders chat templates with trim_blocks, which eats the first "\n" after the
# vendor's `{% if %}`: GLM-4 as served by apply_chat_template has one newline before "## name".
GLM4_TOOL_ITEM = "\n## {name}\n\n{schema}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"


class Glm4Tools(ToolFormat):
    """GLM-4 announces tools in a system turn of its own, and writes a call as a separate
    assistant turn `<|assistant|>{name}\\n{arguments}` (the name is the turn's metadata)."""

    def system_parts(self, system: str | None, tools: list[dict]) -> list[str]:
        listed = GLM4_TOOLS + "".join(
            GLM4_TOOL_ITEM.format(
                name=t["function"].get("name", ""), schema=to_json(t["function"], 4)
            )
            for t in tools
        )
        return [listed] + ([system] if system else [])

    def calls(self, content: str, calls: list[dict]) -> str:
        parts = [f"\n{content}"] if content else []
        for call in calls:
            name, arguments = call_parts(call)
            parts.append(f"{name}\n{arguments_text(arguments)}")
        return "<|assistant|>".join(parts)


DEFAULT_TOOLS = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n```\n'
)


class DefaultTools(ToolFormat):
    """LLaMA-Factory's `default` tool format (ReAct-style text), for any template."""

    def system_parts(self, system: str | None, tools: list[dict]) -> list[str]:
        tool_text, names = "", []
        for tool in tools:
            fn = tool["function"]
            params = ""
            schema = fn.get("parameters") or {}
            for name, param in (schema.get("properties") or {}).items():
                required = ", required" if name in schema.get("required", []) else ""
                enum = param.get("enum")
                enum_text = f", should be one of [{', '.join(map(str, enum))}]" if enum else ""
                items = param.get("items")
                items_text = f", where each item should be {items.get('type', '')}" if items else ""
                params += (
                    f"  - {name} ({param.get('type', '')}{required}): "
                    f"{param.get('description', '')}{enum_text}{items_text}\n"
                )
            tool_text += (
                f"> Tool Name: {fn.get('name', '')}\nTool Description: "
                f"{fn.get('description', '')}\nTool Args:\n{params}\n"
            )
            names.append(fn.get("name", ""))
        listed = DEFAULT_TOOLS.format(tool_text=tool_text, tool_names=", ".join(names))
        return [f"{system}\n\n{listed}" if system else listed]

    def calls(self, content: str, calls: list[dict]) -> str:
        texts = []
        for call in calls:
            name, arguments = call_parts(call)
            texts.append(f"Action: {name}\nAction Input: {arguments_text(arguments)}")
        return "\n".join(([content] if content else []) + texts)


TOOL_FORMATS: dict[str, ToolFormat] = {
    "qwen": QwenTools("qwen"),
    "glm4": Glm4Tools("glm4"),
    "default": DefaultTools("default"),
}


def get_tool_format(name: str) -> ToolFormat:
    if name not in TOOL_FORMATS:
        raise UserError(
            f"unknown tool_format `{name}`",
            fix=f"set `tool_format` to one of: {', '.join(sorted(TOOL_FORMATS))}",
        )
    return TOOL_FORMATS[name]
