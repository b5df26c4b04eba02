"""Named chat templates: a conversation -> text segments, each marked trained or not.

Named templates are data (data/templates/NAME.yaml, see docs/templates.md for the keys) and
render the same text as the vendor's Jinja chat template (tests/data/test_template_vendor.py).
`template: auto` (auto.py) renders with the tokenizer's own Jinja instead. Both implement
`ChatTemplate` (base.py), the interface encode.py, the inference engine, export and the
pre-flight checks use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import yaml

from lmforge.data.templates.base import (
    ChatTemplate,
    RenderOptions,
    Segment,
    Thinking,
    check_roles,
)
from lmforge.data.templates.tools import call_ids, get_tool_format
from lmforge.errors import UserError
from lmforge.suggest import did_you_mean

__all__ = [
    "RenderOptions",
    "Segment",
    "Template",
    "Thinking",
    "available_templates",
    "check_roles",
    "get_template",
    "template_options",
]

ROLES = ("user", "assistant", "tool")


@dataclass(frozen=True)
class Template(ChatTemplate):
    name: str
    description: str
    user: str
    assistant: str  # the trained part of an assistant turn: "{content}<|im_end|>\n"
    generation: str = ""  # the generation prompt before each assistant turn (not trained)
    prefix: str = ""  # once, at the start ("{bos}", "[gMASK]<sop>")
    system: str | None = None  # a system turn; None: the system prompt is folded into a user turn
    system_preamble: str | None = None  # always written at the start of the system turn
    date_string: str | None = None  # {date} in system_preamble (Llama 3.1: "26 Jul 2024")
    system_fold: str = "first_user"  # which user turn receives it: first_user | last_user
    system_fold_format: str = "{system}\n\n{content}"
    fold_trim: bool = False  # strip the user turn after folding the system prompt in (Llama 2)
    trim: tuple[str, ...] = ()  # roles whose content is stripped of surrounding whitespace
    default_system: str | None = None
    suffix: str = ""  # after a conversation that ends with an answer (not trained): Phi-3's EOS
    efficient_eos: bool = False  # the turn ends with the next turn's first marker (trained)
    closing: str = "{eos}"  # efficient_eos: what ends the last answer of a conversation
    observation: str = "{content}"  # one tool result
    observation_group: tuple[str, str] = ("", "")  # around consecutive tool results
    observation_separator: str = ""  # between consecutive tool results
    generation_after_tool: str | None = None  # the generation prompt after tool results, if other
    assistant_tool_calls: str | None = None  # turn format when the turn calls tools
    tool_format: str = "default"
    thinking: Thinking | None = None
    stop_words: tuple[str, ...] = ()
    special_tokens: tuple[str, ...] = ()  # must each be one token of the vocabulary
    jinja: str | None = None
    models: str = ""
    options: RenderOptions = field(default_factory=RenderOptions)

    # -- ChatTemplate -----------------------------------------------------------------------

    def _render(self, tokenizer, messages, system, tools, generation, mode) -> list[Segment]:
        out = _Builder(self, _specials(tokenizer))
        out.add(self.prefix)
        fmt = get_tool_format(self.tool_format_name())
        tools_in_system = bool(tools) and fmt.tools_at == "system"
        parts = fmt.system_parts(system, tools) if tools_in_system else ([system] if system else [])
        folded = None
        if self.system_preamble is not None:  # one system turn, always written (Llama 3.1)
            head = (fmt.system_environment(tools) if tools else "") + self.system_preamble
            head = head.replace("{date}", self.date())
            body = "\n\n".join(self._trim("system", part) for part in parts)
            out.add(self.system or "{content}", content=head + body)
        elif self.system is not None:
            for part in parts:
                out.add(self.system, content=self._trim("system", part))
        elif parts:
            folded = "\n\n".join(parts)
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        fold_at = (users[0] if self.system_fold == "first_user" else users[-1]) if users else -1
        last_user = users[-1] if users else -1
        ids = call_ids(messages)
        i = 0
        while i < len(messages):
            message = messages[i]
            if message["role"] == "user":
                content = self._trim("user", _text(message))
                if folded is not None and i == fold_at:
                    content = out.fill(self.system_fold_format, system=folded, content=content)
                    content = content.strip() if self.fold_trim else content
                if tools and fmt.tools_at == "first_user" and i == users[0]:
                    content = fmt.user_tools(tools) + content
                if tools and fmt.tools_at == "last_user" and i == last_user:
                    out.add_text(fmt.user_tools(tools))
                out.add(self.user, content=content)
            elif message["role"] == "tool":
                run = [i]
                while run[-1] + 1 < len(messages) and messages[run[-1] + 1]["role"] == "tool":
                    run.append(run[-1] + 1)
                results = [
                    out.fill(self.observation, content=fmt.result(_text(messages[j]), ids.get(j)))
                    for j in run
                ]
                text = out.fill(self.observation_separator).join(results)
                out.add_text(
                    out.fill(self.observation_group[0]) + text + out.fill(self.observation_group[1])
                )
                i = run[-1]
            else:
                self._assistant(out, messages, i, last_user, mode, fmt, ids.get(i))
            i += 1
        if generation:
            after_tool = bool(messages) and messages[-1]["role"] == "tool"
            if after_tool and self.generation_after_tool is not None:
                out.add(self.generation_after_tool)
                if not (self.thinking and self.thinking.prompt_opens):
                    out.add_text(self.generation_thinking(mode))
            else:
                out.add(self.generation)
                out.add_text(self.generation_thinking(mode))
        elif messages and messages[-1]["role"] == "assistant":
            if self.efficient_eos:
                out.add(self.closing, trained=True, turn=len(messages) - 1)
            out.add(self.suffix)
        return out.segments

    def _bare_after_tool(self) -> bool:
        return self.generation_after_tool is not None

    def date(self) -> str:
        """The date written by templates with a date block (Llama 3.1): the `date_string`
        option, else the template's; "today" is today's date as Llama 3.2's template writes it."""
        value = self.options.date_string or self.date_string or ""
        return datetime.now().strftime("%d %b %Y") if value == "today" else value

    def with_options(self, **options: Any) -> Template:
        template = super().with_options(**options)
        wanted = template.options.date_string
        if not (wanted and template.jinja and template.date_string):
            return template
        # The Jinja written into the saved tokenizer must write the same date (pre-flight
        # compares both): the vendor's default date is replaced, "today" as Llama 3.2 does it.
        vendor = available_templates().get(self.name)
        jinja = vendor.jinja if vendor and vendor.jinja else template.jinja
        default = f"set date_string = {json.dumps(self.date_string)}"
        if wanted == self.date_string or default not in jinja:
            return dataclasses.replace(template, jinja=jinja)
        value = 'strftime_now("%d %b %Y")' if wanted == "today" else json.dumps(wanted)
        return dataclasses.replace(
            template, jinja=jinja.replace(default, f"set date_string = {value}")
        )

    def stop_texts(self, tokenizer) -> list[str]:
        specials = _specials(tokenizer)
        return [_fill(word, specials) for word in self.stop_words]

    def required_tokens(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.special_tokens + self.stop_words))

    def generation_thinking(self, enable_thinking: bool | None) -> str:
        """What follows the generation prompt: the open marker when the vendor's prompt opens the
        block; the empty block when thinking is off (as `apply_chat_template` writes it)."""
        th = self.thinking
        if th is None:
            return ""
        if enable_thinking is False:
            return th.open + th.close
        return th.open if self.prompt_opens_thinking(enable_thinking) else ""

    # -- compatibility with the first template API -----------------------------------------

    def render_pairs(
        self, messages: list[dict], system: str | None = None
    ) -> list[tuple[str, str]]:
        """(prompt text, answer text) per exchange, without BOS/EOS text."""
        pairs: list[tuple[str, str]] = []
        prompt = answer = ""
        for segment in self.render(_NoSpecials(), messages, system):
            if segment.trained:
                answer += segment.text
                continue
            if answer:
                pairs.append((prompt, answer))
                prompt = answer = ""
            prompt += segment.text
        if prompt or answer:
            pairs.append((prompt, answer))
        return pairs

    # -- helpers --------------------------------------------------------------------------

    def _trim(self, role: str, text: str) -> str:
        return text.strip() if role in self.trim else text

    def _assistant(self, out, messages, i, last_user, thinking_mode, fmt, ids=None) -> None:
        message = messages[i]
        content = _text(message)
        reasoning, content = self._reasoning(message, content)
        untrained, trained = "", ""
        th = self.thinking
        # After tool results some vendors write no generation prompt of their own (DeepSeek);
        # one that opens the reasoning block elsewhere (R1) does not open it there.
        after_tool = i > 0 and messages[i - 1]["role"] == "tool"
        after_tool = after_tool and self.generation_after_tool is not None
        if th is not None:
            is_last = i == len(messages) - 1
            keep = thinking_mode is not False and (i > last_user or self.options.preserve_thinking)
            reasoning = reasoning if keep else None
            opens = th.prompt_opens and not after_tool
            # The last answer always has a block, except where the vendor writes it verbatim
            # after tool results (R1: its prompt there opens none).
            if reasoning or (is_last and not (th.prompt_opens and after_tool)):
                content = content.lstrip("\n")
                block = th.open + (reasoning or "").strip("\n") + th.close
                opened = len(th.open) if opens else 0
                # An empty block is learned only when thinking is on for every sample; mixed and
                # off put it in the prompt, as the vendor's generation prompt does.
                learn = bool(reasoning) or thinking_mode is True
                untrained, trained = (block[:opened], block[opened:]) if learn else (block, "")
        content = self._trim("assistant", content)
        calls = message.get("tool_calls") or []
        body = fmt.calls(content, calls, ids) if calls else content
        # `assistant_tool_calls` is the turn of the template's own tool format (Mistral's
        # [TOOL_CALLS] has no leading space); another format's calls are an ordinary answer.
        native = bool(calls and self.assistant_tool_calls) and fmt.name == self.tool_format
        turn = self.assistant_tool_calls if native else self.assistant
        before, _, after = turn.partition("{content}")
        out.add(self.generation_after_tool if after_tool else self.generation)
        out.add_text(untrained)
        out.add_text(out.fill(before) + trained + body + out.fill(after), trained=True, turn=i)
        out.after_answer(i)

    def _reasoning(self, message: dict, content: str) -> tuple[str | None, str]:
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        th = self.thinking
        if th and not reasoning and th.close.strip() in content:
            # Reasoning written inline, as Qwen3's template also accepts it.
            head, _, content = content.partition(th.close.strip())
            reasoning = head.split(th.open.strip())[-1].strip("\n") or None
            content = content.lstrip("\n")
        return reasoning, content


class _Builder:
    """Collects segments, merging neighbours with the same marks, and trains the first marker
    of the turn after an answer for `efficient_eos` templates."""

    def __init__(self, template: Template, specials: dict[str, str]):
        self.template, self.specials = template, specials
        self.segments: list[Segment] = []
        self.pending_turn: int | None = None

    def fill(self, fmt: str, **values: str) -> str:
        return _fill(fmt, {**self.specials, **values})

    def add(self, fmt: str, *, trained: bool = False, turn: int = -1, **values: str) -> None:
        self.add_text(self.fill(fmt, **values), trained=trained, turn=turn)

    def add_text(self, text: str, *, trained: bool = False, turn: int = -1) -> None:
        if not text:
            return
        if self.pending_turn is not None and not trained:
            for word in self.template.stop_words:
                marker = self.fill(word)
                if marker and text.startswith(marker):
                    self._append(Segment(marker, True, self.pending_turn))
                    text = text[len(marker) :]
                    break
            self.pending_turn = None
            if not text:
                return
        self._append(Segment(text, trained, turn))

    def after_answer(self, turn: int) -> None:
        if self.template.efficient_eos:
            self.pending_turn = turn

    def _append(self, segment: Segment) -> None:
        last = self.segments[-1] if self.segments else None
        if last and (last.trained, last.turn) == (segment.trained, segment.turn):
            self.segments[-1] = Segment(last.text + segment.text, last.trained, last.turn)
        else:
            self.segments.append(segment)


_PLACEHOLDER = re.compile(r"\{(bos|eos|content|system)\}")


def _fill(fmt: str, values: dict[str, str]) -> str:
    """Replace {bos} {eos} {content} {system} in one pass, so text inside content is never
    read as a placeholder (a user may well write "{eos}")."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), fmt)


def _specials(tokenizer) -> dict[str, str]:
    return {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}


class _NoSpecials:
    bos_token = eos_token = ""


def _text(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


# -- the catalogue of named templates ----------------------------------------------------------

_TUPLES = ("trim", "stop_words", "special_tokens", "observation_group")


def _load(entry) -> tuple[Template, tuple[str, ...]]:
    """One YAML file: its template, and the other names it answers to (`aliases`)."""
    spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
    jinja_file = spec.pop("jinja_file", None)
    if jinja_file:
        spec["jinja"] = entry.parent.joinpath(jinja_file).read_text(encoding="utf-8")
    for key in _TUPLES:
        if key in spec:
            spec[key] = tuple(spec[key])
    if spec.get("thinking"):
        spec["thinking"] = Thinking(**spec["thinking"])
    spec.pop("vendor", None)  # documentation only
    aliases = tuple(spec.pop("aliases", ()))
    template = Template(**spec)
    if template.jinja is None:
        from lmforge.data.templates.jinja import simple_jinja

        template = dataclasses.replace(template, jinja=simple_jinja(template))
    return template, aliases


@functools.cache
def _catalogue() -> tuple[dict[str, Template], dict[str, str]]:
    folder = resources.files("lmforge.data").joinpath("templates")
    templates, aliases = {}, {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            template, names = _load(entry)
            templates[template.name] = template
            aliases.update(dict.fromkeys(names, template.name))
    return templates, aliases


def available_templates() -> dict[str, Template]:
    return _catalogue()[0]


def template_aliases() -> dict[str, str]:
    """LLaMA-Factory's names for a template whose turns are another's (its `gemma3` and
    `gemma3n` are `gemma` plus an image plugin): alias -> name, from each YAML's `aliases`."""
    return _catalogue()[1]


def get_template(name: str) -> Template:
    templates = available_templates()
    name = template_aliases().get(name, name)
    if name not in templates:
        hint = did_you_mean(name, templates)
        raise UserError(
            f"unknown template `{name}`",
            fix=f"{hint}set `template` to auto or one of: {', '.join(sorted(templates))}",
        )
    return templates[name]


def template_options(data) -> dict[str, Any]:
    """RenderOptions from a DataConfig."""
    return {
        "enable_thinking": data.enable_thinking,
        "preserve_thinking": data.preserve_thinking,
        "default_system": data.default_system,
        "tool_format": data.tool_format,
        "date_string": data.date_string,  # llama3.1's "Today Date"
    }
