"""How tool schemas and tool calls are written into a conversation, per template family.

A template names its format (`tool_format` in its YAML; `tool_format` in the config overrides
it). The turn markup around tool results is plain data in the template YAML (`observation`), so
only the parts that need JSON rules live here (see `ToolFormat`):
- where the tools are announced: `system_parts(system, tools)` (the system prompt(s)), or
  `user_tools(tools)` at the first / before the last user turn;
- `calls(content, calls, ids)`: the assistant text of a turn that calls tools;
- `result(content, call_id)`: one tool result, inside the template's `observation`.

Formats: `qwen` (Qwen2.5/Qwen3, as their chat templates write it), `glm4` (GLM-4-9B-Chat),
`llama3` (Llama 3.1-3.3), `mistral` (Mistral v0.3), `mistral_nemo` (Mistral Nemo, Tekken),
`deepseek3` (DeepSeek V3/R1 tool-call tokens) and `default` (LLaMA-Factory's ReAct-style text,
for templates whose vendor has no tool format). infer/tool_parser.py reads each back.
"""

from __future__ import annotations

import hashlib
import json
import re
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
    """How one family writes tools. `tools_at` says where the tool list goes:
    - "system": `system_parts` returns the system prompt(s) that announce the tools;
    - "first_user": `user_tools` is written at the start of the first user message (Llama 3.1);
    - "last_user": `user_tools` is written just before the last user turn (Mistral).
    `calls` writes the assistant text of a turn that calls tools; `result` one tool result (the
    template's `observation` is written around it). `ids` / `call_id` are the call ids a format
    needs (Mistral's 9 characters); other formats ignore them."""

    name: str
    tools_at: str = "system"

    def system_parts(self, system: str | None, tools: list[dict]) -> list[str]:
        return [system] if system else []

    def system_environment(self, tools: list[dict]) -> str:
        """Text at the start of the always-written system turn (`system_preamble` templates)."""
        return ""

    def user_tools(self, tools: list[dict]) -> str:
        return ""

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
        raise NotImplementedError

    def result(self, content: str, call_id: str | None = None) -> str:
        return content


def tool_call_id(raw: object, seed: str) -> str:
    """A 9-character alphanumeric call id, as Mistral's templates require: the call's own id when
    it is one, else derived from it (an OpenAI `call_...` id maps to the same id in the call and
    in its result), else from `seed` (the call's place in the conversation)."""
    if isinstance(raw, str) and re.fullmatch(r"[A-Za-z0-9]{9}", raw):
        return raw
    text = raw if isinstance(raw, str) and raw else seed
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    digits = []
    for _ in range(9):
        number, rest = divmod(number, 62)
        digits.append(_BASE62[rest])
    return "".join(digits)


_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def call_ids(messages: list[dict]) -> dict[int, Any]:
    """Call ids for formats that write them (Mistral): {assistant index: [id per call], tool
    index: id of the call it answers}. A result names its call by `tool_call_id`, else it
    answers the call at its place among the results that follow the calling turn."""
    ids: dict[int, Any] = {}
    calls: list[str] = []
    answered = 0
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            calls = [
                tool_call_id(call.get("id"), f"{call_parts(call)[0]}:{i}:{k}")
                for k, call in enumerate(message.get("tool_calls") or [])
            ]
            ids[i], answered = calls, 0
        elif message.get("role") == "tool":
            own = message.get("tool_call_id")
            if own:
                ids[i] = tool_call_id(own, own)
            elif answered < len(calls):
                ids[i] = calls[answered]
            else:
                ids[i] = tool_call_id(None, f"result:{i}")
            answered += 1
    return ids


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

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
        texts = []
        for call in calls:
            name, arguments = call_parts(call)
            texts.append(
                f'<tool_call>\n{{"name": "{name}", "arguments": {arguments_text(arguments)}}}'
                "\n</tool_call>"
            )
        return "\n".join(([content] if content else []) + texts)


GLM4_TOOLS = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
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

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
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

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
        texts = []
        for call in calls:
            name, arguments = call_parts(call)
            texts.append(f"Action: {name}\nAction Input: {arguments_text(arguments)}")
        return "\n".join(([content] if content else []) + texts)


LLAMA3_TOOLS = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.Do not use variables.\n\n"
)


class Llama3Tools(ToolFormat):
    """Llama 3.1/3.2/3.3 (meta-llama's chat template, `tools_in_user_message` as it defaults):
    the tools as indented JSON at the start of the first user message, "Environment: ipython"
    in the system turn, a call as the whole answer `{"name": ..., "parameters": {...}}`, a result
    in an `ipython` turn as JSON text (the vendor's `tojson` of the content)."""

    def system_environment(self, tools: list[dict]) -> str:
        return "Environment: ipython\n"

    def user_tools(self, tools: list[dict]) -> str:
        return LLAMA3_TOOLS + "".join(to_json(t, 4) + "\n\n" for t in tools)

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
        if len(calls) != 1:
            raise UserError(
                f"an answer calls {len(calls)} tools at once, and Llama 3.1's format has one "
                "call per answer (its chat template refuses more)",
                fix="split parallel calls into consecutive answers, or set `tool_format: "
                "default` (LLaMA-Factory's text, which allows several)",
            )
        name, arguments = call_parts(calls[0])
        # The vendor writes only the call: text before it is not part of the format.
        return f'{{"name": "{name}", "parameters": {to_json(arguments)}}}'

    def result(self, content: str, call_id: str | None = None) -> str:
        return to_json(content)


@dataclass(frozen=True)
class MistralTools(ToolFormat):
    """Mistral v0.3 (`space` " ") and Nemo/Tekken (`space` ""): `[AVAILABLE_TOOLS]` before the
    last user turn, `[TOOL_CALLS]` with 9-character ids (the text before the calls is not part
    of the format), `[TOOL_RESULTS]` with the id of the call answered."""

    tools_at: str = "last_user"
    space: str = " "

    def user_tools(self, tools: list[dict]) -> str:
        listed = []
        for tool in tools:
            # As the vendor's template: string values are written unescaped, others as JSON.
            fields = [
                f'"{key}": "{value}"' if isinstance(value, str) else f'"{key}": {to_json(value)}'
                for key, value in tool["function"].items()
                if key != "return"
            ]
            listed.append('{"type": "function", "function": {' + ", ".join(fields) + "}}")
        return f"[AVAILABLE_TOOLS]{self.space}[" + ", ".join(listed) + "][/AVAILABLE_TOOLS]"

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
        texts = []
        for k, call in enumerate(calls):
            name, arguments = call_parts(call)
            call_id = ids[k] if ids else tool_call_id(call.get("id"), f"{name}:{k}")
            body = to_json({"name": name, "arguments": arguments})[:-1]
            texts.append(f'{body}, "id": "{call_id}"}}')
        return f"[TOOL_CALLS]{self.space}[" + ", ".join(texts) + "]"

    def result(self, content: str, call_id: str | None = None) -> str:
        call_id = call_id or tool_call_id(None, "result")
        return (
            f'[TOOL_RESULTS]{self.space}{{"content": {content}, "call_id": "{call_id}"}}'
            "[/TOOL_RESULTS]"
        )


DEEPSEEK_TOOLS = (
    "## Tools\nYou have access to the following tools:\n{listed}\n"
    "To call tools, answer in this exact format:\n"
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>tool_name\n```json\n"
    "arguments\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>\n\n"
    "`tool_name` is one of the tools above and `arguments` a JSON object that follows its "
    "Parameters; several calls follow one another inside <｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>, "
    "separated by a newline."
)


class DeepSeekTools(ToolFormat):
    """DeepSeek V3 / R1 tool-call tokens, as their chat templates write calls and results:
    `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```
    <｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`. The vendors' templates write no tool list; the
    tools are announced in the system prompt with DeepSeek V3.1's wording, adapted to this call
    syntax (see docs/templates.md)."""

    def system_parts(self, system: str | None, tools: list[dict]) -> list[str]:
        listed = ""
        for tool in tools:
            fn = tool["function"]
            listed += f"\n### {fn.get('name', '')}\nDescription: {fn.get('description', '')}"
            listed += f"\n\nParameters: {to_json(fn.get('parameters') or {})}\n"
        text = DEEPSEEK_TOOLS.format(listed=listed)
        return [f"{system}\n\n{text}" if system else text]

    def calls(self, content: str, calls: list[dict], ids: list[str] | None = None) -> str:
        texts = []
        for call in calls:
            name, arguments = call_parts(call)
            texts.append(
                f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n"
                f"{arguments_text(arguments)}\n```<｜tool▁call▁end｜>"
            )
        return f"{content}<｜tool▁calls▁begin｜>" + "\n".join(texts) + "<｜tool▁calls▁end｜>"


TOOL_FORMATS: dict[str, ToolFormat] = {
    "qwen": QwenTools("qwen"),
    "glm4": Glm4Tools("glm4"),
    "llama3": Llama3Tools("llama3", "first_user"),
    "mistral": MistralTools("mistral", space=" "),
    "mistral_nemo": MistralTools("mistral_nemo", space=""),
    "deepseek3": DeepSeekTools("deepseek3"),
    "default": DefaultTools("default"),
}


def detect_tool_format(chat_template: str) -> str:
    """The tool format a Jinja chat template writes (for `template: auto`), `qwen` when none of
    the known markers is in it (Hermes-style <tool_call>, the most common one)."""
    if "<｜tool▁calls▁begin｜>" in chat_template:
        return "deepseek3"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral" if "[TOOL_CALLS] " in chat_template else "mistral_nemo"
    if "<tool_call>" in chat_template:
        return "qwen"
    if "<|start_header_id|>ipython" in chat_template and '"parameters": ' in chat_template:
        return "llama3"
    if "<|observation|>" in chat_template or "# 可用工具" in chat_template:  # GLM-4's tool list
        return "glm4"
    return "qwen"


def get_tool_format(name: str) -> ToolFormat:
    if name not in TOOL_FORMATS:
        raise UserError(
            f"unknown tool_format `{name}`",
            fix=f"set `tool_format` to one of: {', '.join(sorted(TOOL_FORMATS))}",
        )
    return TOOL_FORMATS[name]
