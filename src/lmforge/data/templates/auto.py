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

from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmforge.data.templates.base import ChatTemplate, RenderOptions, Segment, Thinking
from lmforge.data.templates.tools import call_parts
from lmforge.errors import UserError

_PROBE = ("lmforge-probe-user-1", "lmforge-probe-answer", "lmforge-probe-user-2")
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
    # The Jinja writes tools its own way; answers are read as `qwen` (<tool_call> JSON), the
    # format of most chat templates that have tools, unless the config sets tool_format.
    tool_format: ClassVar[str] = "qwen"

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
        chat = hf_messages(messages, system)
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


def hf_messages(messages: list[dict], system: str | None) -> list[dict]:
    """Sample messages -> the shape chat templates read (OpenAI tool calls, reasoning_content)."""
    chat = [{"role": "system", "content": system}] if system else []
    for message in messages:
        out = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("reasoning"):
            out["reasoning_content"] = message["reasoning"]
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                name, arguments = call_parts(call)
                calls.append(
                    {"type": "function", "function": {"name": name, "arguments": arguments}}
                )
            out["tool_calls"] = calls
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
