"""A chat template's format for exports: the Jinja for the exported tokenizer, and the texts
around each turn for formats that are not Jinja (Ollama's Go templates).

Both come from the ChatTemplate itself, never from a second description of the format:
- `export_jinja`: the template's Jinja, plus the training settings the Jinja cannot know
  (`default_system`, `enable_thinking: false`) as its defaults, so `apply_chat_template` on the
  exported tokenizer renders what was trained;
- `turn_texts`: the template renders a few conversations whose messages are marker words; the
  text between the markers is what the template writes around each turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError

USER_1, ANSWER_1, USER_2 = "lmforgeprobeuserone", "lmforgeprobeanswerone", "lmforgeprobeusertwo"
SYSTEM = "lmforgeprobesystem"


def export_jinja(template: ChatTemplate) -> str | None:
    """The Jinja written into the exported tokenizer (and the GGUF): the template's own, with
    the configured default system prompt and a training-time `enable_thinking: false` made its
    defaults."""
    jinja = template.jinja
    if not jinja:
        return jinja
    head = ""
    if template.thinking_mode() is False and "enable_thinking" in jinja:
        head += (
            "{%- if enable_thinking is not defined %}{%- set enable_thinking = false %}{%- endif %}"
        )
    system = template.options.default_system
    if system:
        head += (
            "{%- if not (messages and messages[0]['role'] == 'system') %}"
            "{%- set messages = [{'role': 'system', 'content': "
            + json.dumps(system, ensure_ascii=False)
            + "}] + messages %}{%- endif %}"
        )
    return head + jinja


@dataclass(frozen=True)
class TurnTexts:
    """What a template writes around the messages of a user/assistant conversation. A text
    with a system prompt holds SYSTEM where the prompt goes.

    start: before the first user message (no system prompt); start_system: the same with one;
    after_user: between a user message and its answer; after_answer: between an answer and the
    next user message; after_answer_system: the same when that user message is the last one
    and receives the system prompt (`system_at_last_user`, Mistral); generation: after the last
    user message, the generation prompt."""

    start: str
    start_system: str
    after_user: str
    after_answer: str
    after_answer_system: str
    generation: str
    system_at_last_user: bool


def turn_texts(template: ChatTemplate, tokenizer) -> TurnTexts:
    """Read the texts off the template's renderings (see the module's doc). Raises a UserError
    when the template writes turns in a way these texts cannot express."""
    bare = template.with_options(default_system="")  # "": no system prompt at all

    def render(t: ChatTemplate, messages: list[dict], system: str | None) -> str:
        segments = t.render(tokenizer, messages, system, add_generation_prompt=True)
        return "".join(s.text for s in segments)

    one = [{"role": "user", "content": USER_1}]
    two = one + [
        {"role": "assistant", "content": ANSWER_1},
        {"role": "user", "content": USER_2},
    ]
    plain_one, plain_two = render(bare, one, None), render(bare, two, None)
    sys_one, sys_two = render(template, one, SYSTEM), render(template, two, SYSTEM)
    start, rest = _cut(template, plain_two, USER_1)
    after_user, rest = _cut(template, rest, ANSWER_1)
    after_answer, generation = _cut(template, rest, USER_2)
    start_system, _ = _cut(template, sys_one, USER_1)
    middle = USER_1 + after_user + ANSWER_1
    system_last = sys_two.startswith(start + middle)  # folded into the last user turn
    after_answer_system = after_answer
    if system_last:
        after_answer_system, _ = _cut(template, sys_two[len(start + middle) :], USER_2)
    opening = start if system_last else start_system
    rebuilt = [
        (plain_one, start + USER_1 + generation),
        (sys_one, start_system + USER_1 + generation),
        (sys_two, opening + middle + after_answer_system + USER_2 + generation),
    ]
    if any(text != expected for text, expected in rebuilt):
        raise _not_expressible(template, "turns that change with the length of the conversation")
    with_system = after_answer_system if system_last else start_system
    if SYSTEM not in with_system or SYSTEM in start + after_user + after_answer + generation:
        raise _not_expressible(template, "a system prompt that is not one fixed place")
    return TurnTexts(
        start=start,
        start_system=start_system,
        after_user=after_user,
        after_answer=after_answer,
        after_answer_system=after_answer_system,
        generation=generation,
        system_at_last_user=system_last,
    )


def _cut(template: ChatTemplate, text: str, marker: str) -> tuple[str, str]:
    """(text before the marker, text after it); the marker must appear exactly once."""
    if text.count(marker) != 1:
        raise _not_expressible(template, "messages it changes or repeats")
    before, _, after = text.partition(marker)
    return before, after


def _not_expressible(template: ChatTemplate, what: str) -> UserError:
    return UserError(
        f"template `{template.name}` cannot be written as an Ollama template: it has {what}",
        fix="export with a named template (docs/templates.md) whose turns are fixed texts, "
        "e.g. template: chatml",
    )
