"""Records in LLaMA-Factory's alpaca and sharegpt formats -> Sample."""

from __future__ import annotations

from typing import Any

from lmforge.data.registry import DatasetSpec
from lmforge.data.sample import Sample
from lmforge.errors import UserError


def to_samples(spec: DatasetSpec, records: list[dict[str, Any]]) -> list[Sample]:
    convert = ALPACA if spec.formatting == "alpaca" else SHAREGPT
    return [convert(spec, record, index) for index, record in enumerate(records)]


def _where(spec: DatasetSpec, index: int, column: str) -> str:
    return f"{spec.path}:record {index}:{column}"


def _text(spec: DatasetSpec, record: dict, index: int, key: str, *, required: bool) -> str:
    column = spec.columns.get(key)
    value = record.get(column) if column else None
    if value is None or value == "":
        if required:
            present = ", ".join(sorted(record)) or "none"
            raise UserError(
                f"missing or empty (columns present: {present})",
                where=_where(spec, index, column or key),
                fix=f"give every record a `{column}` value, or map the right column with "
                f'"columns": {{"{key}": "..."}} in dataset_info.json',
            )
        return ""
    if not isinstance(value, str):
        raise UserError(
            f"must be a string, not {type(value).__name__}",
            where=_where(spec, index, column),
            fix="write the text as a JSON string",
        )
    return value


def alpaca_to_sample(spec: DatasetSpec, record: dict[str, Any], index: int) -> Sample:
    messages: list[dict[str, str]] = []
    history_column = spec.columns.get("history")
    history = record.get(history_column) if history_column else None
    for turn, pair in enumerate(history or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise UserError(
                f"history turn {turn} must be a [question, answer] pair",
                where=_where(spec, index, history_column),
                fix='write history as [["question", "answer"], ...]',
            )
        messages += [
            {"role": "user", "content": str(pair[0])},
            {"role": "assistant", "content": str(pair[1])},
        ]
    instruction = _text(spec, record, index, "prompt", required=True)
    query = _text(spec, record, index, "query", required=False)
    response = _text(spec, record, index, "response", required=True)
    user = f"{instruction}\n{query}" if query else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    system = _text(spec, record, index, "system", required=False) or None
    return Sample(messages, system, str(spec.path), index)


def sharegpt_to_sample(spec: DatasetSpec, record: dict[str, Any], index: int) -> Sample:
    column = spec.columns["messages"]
    turns = record.get(column)
    where = _where(spec, index, column)
    if not isinstance(turns, list) or not turns:
        raise UserError(
            "missing, empty or not a list of messages",
            where=where,
            fix=f'give each record a "{column}" list, or map the column with "columns"',
        )
    tags = spec.tags
    role_of = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    system = None
    if isinstance(turns[0], dict) and turns[0].get(tags["role_tag"]) == tags["system_tag"]:
        system = str(turns[0].get(tags["content_tag"], ""))
        turns = turns[1:]
    messages = []
    for position, turn in enumerate(turns):
        role_value = turn.get(tags["role_tag"]) if isinstance(turn, dict) else None
        role = role_of.get(role_value)
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            if role_value in (tags["observation_tag"], tags["function_tag"]):
                fix = "tool-call turns are not supported by this version; remove them"
            else:
                tag = tags["user_tag"] if expected == "user" else tags["assistant_tag"]
                fix = (
                    f'message {position} should be {expected} ("{tags["role_tag"]}": "{tag}"); '
                    "turns alternate user and assistant after an optional system turn"
                )
            raise UserError(f"message {position} has role {role_value!r}", where=where, fix=fix)
        content = turn.get(tags["content_tag"])
        if not isinstance(content, str):
            raise UserError(
                f"message {position} has no text in `{tags['content_tag']}`",
                where=where,
                fix='each message needs a string content, e.g. {"from": "human", "value": "Hi"}',
            )
        messages.append({"role": role, "content": content})
    if len(messages) % 2:
        raise UserError(
            "the conversation ends with a user message, so there is no answer to train on",
            where=where,
            fix="end every conversation with an assistant message",
        )
    return Sample(messages, system, str(spec.path), index)


ALPACA = alpaca_to_sample
SHAREGPT = sharegpt_to_sample
