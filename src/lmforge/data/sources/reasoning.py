"""Reasoning in an answer: one reader for every format and every kind of answer.

Reasoning models write `<think>reasoning</think>answer`. Wherever an answer is read (an alpaca
`output` or history answer, a sharegpt `gpt` turn, an openai `assistant` message with or without
`reasoning_content`, preference `chosen`/`rejected`, a KTO answer), `assistant_message` turns it
into `{"role": "assistant", "content": answer, "reasoning": reasoning}`: the sample holds the
reasoning without markers, and the chat template decides how (and whether) it is rendered
(docs/thinking.md). A block that cannot be read unambiguously is a problem of the record, never
trained as it happens to be written:

- `<think>` at the start with no `</think>` (an answer cut off while reasoning);
- `</think>` without `<think>` at the start (DeepSeek-R1 outputs omit the opening marker because
  its prompt writes it), or a second `</think>` after the block;
- reasoning given twice: in `reasoning_content` and as a block in the content.

Parsing happens here, at read time, with the generic markers every reasoning template uses
(`ChatTemplate.thinking_markers()` of qwen3, deepseekr1 and `auto` with `<think>`): the problems
then name the file, record and field, the sample (and its cache key) does not depend on the
template, and the template renders the reasoning with its own markers.
"""

from __future__ import annotations

from typing import Any

from lmforge.data.problems import RecordCheck
from lmforge.data.sources.record_fields import describe, text_fix

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_KEYS = ("reasoning_content", "reasoning")  # openai-style fields of an answer


def split_reasoning(text: str) -> tuple[str | None, str, tuple[str, str] | None]:
    """(reasoning, answer, problem) of an answer's text. A leading `<think>...</think>` block is
    the reasoning (None when the block is empty), the rest the answer; problem is (reason, fix)
    when the text cannot be read (then reasoning is None and answer the text as given)."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN):
        if THINK_CLOSE in text:
            return None, text, (f"has `{THINK_CLOSE}` without `{THINK_OPEN}` at its start", _STRAY)
        return None, text, None
    inner, closed, answer = stripped[len(THINK_OPEN) :].partition(THINK_CLOSE)
    if not closed:
        return None, text, (f"opens `{THINK_OPEN}` at its start but never closes it", _UNCLOSED)
    if THINK_CLOSE in answer:
        return None, text, (f"has a second `{THINK_CLOSE}` after its reasoning block", _STRAY)
    reasoning = inner.strip()
    return (reasoning or None), answer.lstrip("\n"), None


_STRAY = (
    f"start the answer with `{THINK_OPEN}` (outputs of models whose prompt opens the block, such "
    f"as DeepSeek-R1, lack it), or remove the `{THINK_CLOSE}`: an answer holds at most one "
    f"`{THINK_OPEN}reasoning{THINK_CLOSE}` block, at its start"
)
_UNCLOSED = (
    f"close the reasoning with `{THINK_CLOSE}` before the answer "
    f"(`{THINK_OPEN}reasoning{THINK_CLOSE}answer`); an answer cut off while reasoning should be "
    "removed or generated again"
)


def inline_marker(text: str) -> bool:
    """An answer (after splitting) that still holds `<think>`: it is trained as text."""
    return THINK_OPEN in text


def assistant_message(
    check: RecordCheck,
    field: str | None,
    content: str,
    *,
    what: str = "",
    turn: dict | None = None,
    extra: dict | None = None,
) -> dict | None:
    """An answer as a Sample assistant message, its reasoning split off; None with a problem
    recorded in `check`. `field` is the data's column (for file:record:field), `what` the place
    within it ("message 3"), `turn` the data's message object (its `reasoning_content` or
    `reasoning` field is read), `extra` other message keys (tool_calls)."""
    where = f"{what} " if what else ""
    key = next((k for k in REASONING_KEYS if (turn or {}).get(k) is not None), None)
    given = turn[key] if turn and key else None
    if given is not None and not isinstance(given, str):
        check.problem(
            field,
            f"{where}`{key}` must be text, not {describe(given)}",
            text_fix(given),
            "wrong type",
        )
        return None
    given = given.strip() if given else None
    reasoning, answer, problem = split_reasoning(content)
    if problem:
        reason, fix = problem
        check.problem(field, where + reason, fix, "bad reasoning")
        return None
    if given and reasoning:
        check.problem(
            field,
            f"{where}has reasoning twice: in `{key}` and in a `{THINK_OPEN}` block",
            f"keep one: remove the `{THINK_OPEN}...{THINK_CLOSE}` block from the content, or "
            f"the `{key}` field",
            "bad reasoning",
        )
        return None
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if given or reasoning:
        message["reasoning"] = given or reasoning
    message.update(extra or {})
    return message
