"""A conversation (system, user, assistant with tool calls, tool results) -> prompt token ids.

Messages are the canonical dicts of data/sample.py, with `system` messages allowed first:
    {"role": "user", "content": str}
    {"role": "assistant", "content": str, "tool_calls": [{"name": str, "arguments": ...}]}
    {"role": "tool", "content": str}
The chat template used in training renders them (tools, calls, results and the thinking block
included), so a served model sees exactly the format it learned.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError
from lmforge.infer.tool_parser import ToolParser, get_tool_parser

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ChatPrompt:
    ids: list[int]
    prefix: str = ""  # text the answer was made to start with (already in `ids`)
    reasoning_open: bool = False  # the prompt opened a thinking block the answer continues
    tools: ToolParser | None = None  # read tool calls from the answer when set


def build_chat_prompt(
    template: ChatTemplate,
    tokenizer,
    messages: list[dict],
    *,
    system: str | None = None,
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = "auto",
    enable_thinking: bool | None = True,
) -> ChatPrompt:
    system, turns = _split_system(messages, system)
    use_tools = bool(tools) and tool_choice != "none"
    forced: str | None = None
    if use_tools:
        tools, forced = _choose_tools(tools, tool_choice)
    ids = template.encode_prompt(
        tokenizer,
        turns,
        system,
        tools if use_tools else None,
        enable_thinking=enable_thinking,
    )
    reasoning_open = template.prompt_opens_thinking(enable_thinking)
    parser = get_tool_parser(template.tool_format_name())
    prefix = ""
    if forced is not None and not reasoning_open:  # a call is forced after the thinking block
        prefix = parser.forced_prefix(forced or None) or ""
        if prefix:
            ids = ids + tokenizer.encode(prefix, add_special_tokens=False)
    return ChatPrompt(ids, prefix, reasoning_open, parser if use_tools else None)


_ORDER_FIX = (
    "send system messages first, then user and assistant turns in alternation ending with a "
    "user message (or with tool results after an assistant turn)"
)


def _split_system(messages: list[dict], system: str | None) -> tuple[str | None, list[dict]]:
    if not messages:
        raise UserError("no messages", fix="send at least one user message")
    parts = [system] if system else []
    i = 0
    while i < len(messages) and messages[i].get("role") == "system":
        parts.append(messages[i].get("content") or "")
        i += 1
    turns = messages[i:]
    for n, message in enumerate(turns, start=i):
        role = message.get("role")
        if role == "system":
            raise UserError(
                f"message {n} is a system message after the conversation started", fix=_ORDER_FIX
            )
        if role not in ROLES:
            raise UserError(f"message {n} has unknown role `{role}`", fix=_ORDER_FIX)
    if not turns:
        raise UserError("there is no user message", fix=_ORDER_FIX)
    return ("\n\n".join(p for p in parts if p) or None), turns


def _choose_tools(
    tools: list[dict], tool_choice: str | dict | None
) -> tuple[list[dict], str | None]:
    """The tools to show, and the name a call is forced to ("" = any tool; None = not forced)."""
    if tool_choice in (None, "auto"):
        return tools, None
    if tool_choice == "required":
        return tools, ""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if (t.get("function") or t).get("name") == name]
        if not chosen:
            raise UserError(
                f"tool_choice names the function `{name}`, which is not among the tools",
                fix="name one of the functions listed in `tools`",
            )
        return chosen, name
    raise UserError(
        f"tool_choice `{tool_choice}` is not understood",
        fix='use "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
    )
