"""Conversation records (sharegpt and openai formatting) -> Sample messages.

ShareGPT (LLaMA-Factory's data/README): turns `{"from": ..., "value": ...}` with roles human,
gpt, observation (a tool's result -> role tool), function_call (a tool call: JSON
`{"name", "arguments"}` -> an assistant message with `tool_calls`) and system (first turn only);
`tags` renames any of these. OpenAI: `{"role", "content"}` with system/user/assistant/tool,
assistant `tool_calls` in OpenAI's shape and optional `reasoning_content`. Every answer's reasoning
(`reasoning_content`, or a leading `<think>...</think>` block) is read by reasoning.py.

Order rules, for both: user first; user -> assistant; an assistant tool call -> tool results ->
assistant; an assistant answer -> user. An SFT/KTO conversation ends with the assistant; a
preference (ranking) conversation ends with the user (or a tool result), answered by chosen
and rejected.
"""

from __future__ import annotations

from typing import Any

from lmforge.data.problems import RecordCheck
from lmforge.data.sources.reasoning import assistant_message
from lmforge.data.sources.record_fields import column_text, describe, parse_tool_calls, text_fix
from lmforge.data.sources.registry import DatasetSpec

_NEXT = {  # role -> roles that may follow it
    None: ("user",),
    "user": ("assistant",),
    "call": ("tool",),  # an assistant message with tool calls
    "assistant": ("user",),
    "tool": ("tool", "assistant"),
}


def conversation(
    check: RecordCheck, spec: DatasetSpec, record: dict, *, ends_with_answer: bool
) -> tuple[str | None, list[dict]]:
    """(system, messages) of a record; problems go to `check` (messages then may be partial)."""
    column = spec.columns["messages"]
    turns = record.get(column)
    tags = spec.tags
    if not isinstance(turns, list) or not turns:
        check.problem(
            column,
            "missing, empty or not a list of messages",
            f'give each record a "{column}" list of messages, or map the column with "columns"',
            "missing column",
        )
        return None, []
    system = None
    start = 0
    if isinstance(turns[0], dict) and turns[0].get(tags["role_tag"]) in _system_roles(spec):
        system = turns[0].get(tags["content_tag"])
        if not isinstance(system, str):
            _no_text(check, spec, column, "the system message", system)
            return None, []
        start = 1
    else:
        system = column_text(check, spec, record, "system", required=False)
    messages: list[dict] = []
    raw_roles: list[tuple[int, Any]] = []
    for position in range(start, len(turns)):
        message = convert_turn(check, spec, column, turns[position], position)
        if message is None:
            return system, messages  # one problem per conversation: later ones are noise
        messages.append(message)
        raw_roles.append((position, turns[position].get(tags["role_tag"])))
    _check_order(check, spec, column, messages, raw_roles, ends_with_answer)
    return (system or None), messages


def convert_turn(
    check: RecordCheck, spec: DatasetSpec, column: str, turn: Any, position: int
) -> dict | None:
    """One message of the data -> a Sample message dict, or None with a problem recorded."""
    tags = spec.tags
    if not isinstance(turn, dict):
        check.problem(
            column,
            f"message {position} is not an object",
            f'write each message as {{"{tags["role_tag"]}": ..., "{tags["content_tag"]}": ...}}',
            "wrong type",
        )
        return None
    raw_role = turn.get(tags["role_tag"])
    content = turn.get(tags["content_tag"])
    if raw_role == tags["function_tag"]:
        calls, reason = parse_tool_calls(content)
        if reason:
            check.problem(
                column,
                f"message {position} ({raw_role}): {reason}",
                'write a tool call as {"name": "get_weather", "arguments": {"city": "Paris"}}',
                "bad tool call",
            )
            return None
        return {"role": "assistant", "content": "", "tool_calls": calls}
    role = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["observation_tag"]: "tool",
    }.get(raw_role)
    if role is None:
        _role_problem(check, spec, column, position, raw_role)
        return None
    tool_calls = None
    if role == "assistant" and turn.get("tool_calls"):  # OpenAI shape, in either formatting
        tool_calls, reason = parse_tool_calls(turn["tool_calls"])
        if reason:
            check.problem(
                column,
                f"message {position} tool_calls: {reason}",
                'write tool_calls as [{"type": "function", "function": {"name": ..., '
                '"arguments": "{...}"}}]',
                "bad tool call",
            )
            return None
        content = "" if content is None else content
    content = _text_parts(content)
    if not isinstance(content, str):
        _no_text(check, spec, column, f"message {position}", content)
        return None
    if role == "assistant":  # reasoning: reasoning_content, or a leading <think> block
        extra = {"tool_calls": tool_calls} if tool_calls else None
        return assistant_message(
            check, column, content, what=f"message {position}", turn=turn, extra=extra
        )
    return {"role": role, "content": content}


def answer_message(check: RecordCheck, spec: DatasetSpec, record: dict, key: str) -> dict | None:
    """`chosen` / `rejected` of a preference record: one assistant message (or plain text)."""
    column = spec.columns.get(key)
    value = record.get(column) if column else None
    if isinstance(value, str) and value:
        return assistant_message(check, column, value)
    if not isinstance(value, dict):
        missing = value in (None, "")
        check.problem(
            column or key,
            "missing" if missing else f"must be a message or text, not {describe(value)}",
            f'give every record "{column or key}": {{"{spec.tags["role_tag"]}": '
            f'"{spec.tags["assistant_tag"]}", "{spec.tags["content_tag"]}": "..."}}',
            "missing column" if missing else "wrong type",
        )
        return None
    message = convert_turn(check, spec, column, value, 0)
    if message is not None and message["role"] != "assistant":
        check.problem(
            column,
            f"has role {value.get(spec.tags['role_tag'])!r}; the answer must be the assistant's",
            f'set "{spec.tags["role_tag"]}": "{spec.tags["assistant_tag"]}"',
            "wrong role order",
        )
        return None
    return message


def _check_order(check, spec, column, messages, raw_roles, ends_with_answer: bool) -> None:
    previous = None
    for message, (position, raw_role) in zip(messages, raw_roles):
        role = "call" if message.get("tool_calls") else message["role"]
        allowed = _NEXT[previous]
        kind = "assistant" if role == "call" else role
        if kind not in allowed:
            expected = " or ".join(f"{r} ({_tag_for(spec, r)!r})" for r in allowed)
            check.problem(
                column,
                f"message {position} has role {raw_role!r}",
                f"message {position} should be {expected}; turns alternate user and assistant "
                "after an optional system message, and tool results follow a tool call",
                "wrong role order",
            )
            return
        previous = role
    if ends_with_answer and previous not in ("assistant", "call"):
        check.problem(
            column,
            f"the conversation ends with a {previous} message, so there is no answer to train on",
            "end every conversation with an assistant message",
            "wrong role order",
        )
    elif not ends_with_answer and previous not in ("user", "tool"):
        check.problem(
            column,
            "a preference conversation must end with the user's turn (chosen and rejected are "
            "the answers to it), but it ends with an assistant message",
            "remove the final assistant message (it belongs in chosen/rejected)",
            "wrong role order",
        )


def _role_problem(check, spec, column, position, raw_role) -> None:
    tags = spec.tags
    if raw_role in _system_roles(spec):
        check.problem(
            column,
            f"message {position} is a system message after the start",
            "put the system prompt first, or in the record's system column",
            "wrong role order",
        )
        return
    roles = (
        f"{tags['user_tag']} (user), {tags['assistant_tag']} (assistant), "
        f"{tags['observation_tag']} (tool result), {tags['function_tag']} (tool call), "
        f"{tags['system_tag']} (first message only)"
    )
    check.problem(
        column,
        f"message {position} has an unknown role {raw_role!r} in `{tags['role_tag']}`",
        f"roles are: {roles}; if your data names roles differently, set `tags` in the "
        "dataset entry",
        "unknown role",
    )


def _system_roles(spec: DatasetSpec) -> tuple[str, ...]:
    if spec.formatting == "openai":
        return (spec.tags["system_tag"], "developer")
    return (spec.tags["system_tag"],)


def _tag_for(spec: DatasetSpec, role: str) -> str:
    key = {"user": "user_tag", "assistant": "assistant_tag", "tool": "observation_tag"}[role]
    return spec.tags[key]


def _no_text(check: RecordCheck, spec: DatasetSpec, column: str, what: str, content) -> None:
    """A message whose content is missing, or is not text (a number is not turned into text)."""
    tag = spec.tags["content_tag"]
    if content is None:
        check.problem(column, f"{what} has no text in `{tag}`", _content_fix(spec), "no text")
        return
    check.problem(
        column,
        f"{what}: `{tag}` must be text, not {describe(content)}",
        text_fix(content),
        "wrong type",
    )


def _content_fix(spec: DatasetSpec) -> str:
    tags = spec.tags
    return (
        f'each message needs text in "{tags["content_tag"]}", e.g. '
        f'{{"{tags["role_tag"]}": "{tags["user_tag"]}", "{tags["content_tag"]}": "Hi"}}'
    )


def _text_parts(content: Any) -> Any:
    """OpenAI content may be a list of parts; text parts are joined, others are refused."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return content
