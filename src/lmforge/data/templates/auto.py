"""`template: auto`: the tokenizer's own Jinja chat template, with the trained spans derived.

The whole conversation is rendered once with `apply_chat_template`; that text is what is
trained on, so it equals what the model sees in chat. Each answer's span is found by rendering
growing prefixes of the conversation:
- it starts where the generation prompt for that answer ends (the longest common prefix of
  `render(messages[:k], add_generation_prompt=True)` and the full text), so an empty
  `<think></think>` block that the vendor puts in the prompt stays untrained;
- it ends where `render(messages[:k + 1])` ends, when that is a prefix of the full text; some
  templates render earlier answers differently (Qwen3 and DeepSeek-R1 drop their reasoning), and
  then it ends after the template's end-of-turn text, found once by rendering a probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from lmforge.data.templates.base import ChatTemplate, RenderOptions, Segment, Thinking
from lmforge.data.templates.tools import (
    arguments_text,
    call_ids,
    call_parts,
    detect_tool_format,
)
from lmforge.errors import UserError

_PROBE = ("lmforge-probe-user-1", "lmforge-probe-answer", "lmforge-probe-user-2")
# A template that adds the arguments to a string (DeepSeek's) needs them as JSON text.
_CONCATENATED_ARGUMENTS = re.compile(r"\[['\"]arguments['\"]\]\s*\+")
_FIX = (
    "set `template` to the named template of this model family (see docs/templates.md), "
    "which renders the same text with known trained spans"
)


@dataclass(frozen=True)
class AutoTemplate(ChatTemplate):
    chat_template: str
    options: RenderOptions = field(default_factory=RenderOptions)
    name: str = "auto"

    renders_with_jinja: ClassVar[bool] = True

    @property
    def tool_format(self) -> str:  # type: ignore[override]
        """How answers' tool calls are read: the format the Jinja writes (DeepSeek's tool-call
        tokens, Mistral's [TOOL_CALLS], Llama 3.1's JSON, GLM-4's, else Hermes <tool_call>);
        the Jinja itself writes the tools and calls of prompts."""
        return detect_tool_format(self.chat_template)

    @property
    def jinja(self) -> str:
        return self.chat_template

    @property
    def thinking(self) -> Thinking | None:
        if "<think>" in self.chat_template:
            return Thinking("<think>\n", "\n</think>\n\n")
        return None

    def _render(self, tokenizer, messages, system, tools, generation, mode) -> list[Segment]:
        if mode is False:  # thinking off: no reasoning anywhere, as named templates do
            messages = [{**m, "reasoning": None} for m in messages]
        chat = hf_messages(
            messages,
            system,
            with_ids="tool_call_id" in self.chat_template,
            string_arguments=bool(_CONCATENATED_ARGUMENTS.search(self.chat_template)),
        )
        offset = len(chat) - len(messages)
        kwargs = self._kwargs(messages, mode, generation)
        tool_list = tools or None

        def render(part: list[dict], add_generation_prompt: bool) -> str:
            return self._apply(tokenizer, part, tool_list, add_generation_prompt, kwargs)

        full = render(chat, generation)
        if generation:
            return [Segment(full)]
        segments, position = [], 0
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            j = k + offset
            start = _common_prefix(render(chat[:j], True), full)
            ended = render(chat[: j + 1], False)
            if full.startswith(ended) and len(ended) > start:
                end = len(ended)
            else:
                end = self._end_after_marker(tokenizer, full, start, tool_list, kwargs)
            if start < position:
                raise UserError(
                    f"the tokenizer's chat template renders answer {k} before the end of the "
                    "previous one, so its trained tokens cannot be told apart",
                    fix=_FIX,
                )
            segments += [Segment(full[position:start]), Segment(full[start:end], True, k)]
            position = end
        segments.append(Segment(full[position:]))
        return [s for s in segments if s.text]

    def stop_texts(self, tokenizer) -> list[str]:
        marker = (self.end_of_turn(tokenizer) or "").strip()
        return [marker] if marker else []

    def end_of_turn(self, tokenizer) -> str | None:
        """The text the template writes after an answer, whether or not another turn follows
        ("<|im_end|>\\n", "<end_of_turn>\\n", "<|eot_id|>"); None when it writes none."""
        user1, answer, user2 = _PROBE
        short = [{"role": "user", "content": user1}, {"role": "assistant", "content": answer}]
        longer = short + [{"role": "user", "content": user2}]
        kwargs = {"enable_thinking": True} if "enable_thinking" in self.chat_template else {}
        first = self._apply(tokenizer, short, None, False, kwargs)
        second = self._apply(tokenizer, longer, None, False, kwargs)
        if answer not in first or answer not in second:
            return None
        after_first = first.split(answer, 1)[1]
        after_second = second.split(answer, 1)[1].split(user2, 1)[0]
        marker = after_first[: _common_prefix(after_first, after_second)]
        return marker or None

    # -- helpers --------------------------------------------------------------------------

    def _kwargs(self, messages, mode: bool | None, generation: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if "enable_thinking" in self.chat_template:
            if mode is None:  # mixed: think where the sample has reasoning
                last = messages[-1] if messages else {}
                mode = generation or bool(last.get("reasoning"))
            kwargs["enable_thinking"] = mode
        if self.options.preserve_thinking and "preserve_thinking" in self.chat_template:
            kwargs["preserve_thinking"] = True
        if self.options.date_string and "date_string" in self.chat_template:
            date = self.options.date_string
            kwargs["date_string"] = datetime.now().strftime("%d %b %Y") if date == "today" else date
        return kwargs

    def _apply(self, tokenizer, chat, tools, generation: bool, kwargs) -> str:
        try:
            return tokenizer.apply_chat_template(
                chat,
                tools=tools,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=generation,
                **kwargs,
            )
        except Exception as exc:  # Jinja's TemplateError and the template's own raise_exception
            raise UserError(
                f"the tokenizer's chat template refused the conversation: {exc}",
                fix=_FIX,
            ) from None

    def _end_after_marker(self, tokenizer, full: str, start: int, tools, kwargs) -> int:
        marker = self.end_of_turn(tokenizer)
        found = full.find(marker, start) if marker else -1
        if found < 0:
            raise UserError(
                "the tokenizer's chat template renders earlier answers differently from the "
                "last one and writes no end-of-turn marker, so the trained tokens of earlier "
                "answers cannot be found",
                fix=_FIX,
            )
        return found + len(marker)


def hf_messages(
    messages: list[dict],
    system: str | None,
    *,
    with_ids: bool = False,
    string_arguments: bool = False,
) -> list[dict]:
    """Sample messages -> the shape chat templates read (OpenAI tool calls, reasoning_content).
    `with_ids`: calls and results carry 9-character ids (Mistral's templates require them);
    `string_arguments`: arguments as JSON text (DeepSeek's templates concatenate them)."""
    chat = [{"role": "system", "content": system}] if system else []
    ids = call_ids(messages) if with_ids else {}
    for i, message in enumerate(messages):
        out = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("reasoning"):
            out["reasoning_content"] = message["reasoning"]
        if message.get("tool_calls"):
            calls = []
            for k, call in enumerate(message["tool_calls"]):
                name, arguments = call_parts(call)
                if string_arguments:
                    arguments = arguments_text(arguments)
                one = {"type": "function", "function": {"name": name, "arguments": arguments}}
                calls.append({"id": ids[i][k], **one} if with_ids else one)
            out["tool_calls"] = calls
        if with_ids and message["role"] == "tool":
            out["tool_call_id"] = ids[i]
        chat.append(out)
    return chat


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def auto_template(tokenizer) -> AutoTemplate:
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, dict):  # several named templates: the default one
        chat_template = chat_template.get("default")
    if not isinstance(chat_template, str) or not chat_template.strip():
        raise UserError(
            "`template: auto` needs the tokenizer's chat template, and this tokenizer has none",
            fix="set `template` to the named template of the model (see docs/templates.md)",
        )
    return AutoTemplate(chat_template)


def load_template(name: str, tokenizer, data=None):
    """`auto` or a named template, bound to the data settings (a DataConfig) when given."""
    from lmforge.data.templates.named import get_template, template_options

    template = auto_template(tokenizer) if name == "auto" else get_template(name)
    return template.with_options(**template_options(data)) if data is not None else template
