"""`ChatTemplate`: what training, inference, export and inspection ask of a chat template.

Two kinds implement it: named templates (`Template`, named.py: data files that render the
vendor's text themselves) and `template: auto` (`AutoTemplate`, auto.py: the tokenizer's own
Jinja). Callers hold a `ChatTemplate` and use only the members below, never the kind:

    name, jinja (written into the saved tokenizer), thinking (Thinking | None), options,
    default_system, efficient_eos, tool_format, renders_with_jinja
    with_options(**RenderOptions fields) -> a copy bound to the data settings
    render(tokenizer, messages, system=None, tools=None, *, add_generation_prompt=False,
           enable_thinking=...) -> list[Segment]                               (training)
    encode_prompt(tokenizer, messages, system=None, tools=None, *, enable_thinking=...)
        -> list[int]                                                          (generation)
    stop_texts(tokenizer), stop_token_ids(tokenizer)                  (generation, export)
    thinking_markers(), prompt_opens_thinking(enable_thinking, messages=None)  (reading answers)
    tool_format_name()                                                (tool calls)
    required_tokens()                                                 (pre-flight)

The shared behaviour (argument handling, the generation prompt's ids, stop ids, thinking
markers) lives here once; a kind supplies `_render` and `stop_texts`.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from lmforge.data.templates.tools import parse_tools
from lmforge.errors import UserError

UNSET: Any = object()  # enable_thinking not given: the template's options decide

_T = TypeVar("_T", bound="ChatTemplate")


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool = False
    turn: int = -1  # index of the assistant message the text belongs to; -1 for prompt text


@dataclass(frozen=True)
class RenderOptions:
    """The data settings that change how a conversation is rendered (DataConfig keys)."""

    enable_thinking: bool | None = True  # None: mixed, each sample decides
    preserve_thinking: bool = False
    default_system: str | None = None
    tool_format: str | None = None
    date_string: str | None = None  # the date of templates with a date block; "today"


@dataclass(frozen=True)
class Thinking:
    """Reasoning markers: a reasoning block is `open + reasoning + close`; an empty block is
    `open + close`. `prompt_opens`: the generation prompt already ends with `open` (DeepSeek-R1)."""

    open: str
    close: str
    prompt_opens: bool = False


class ChatTemplate(abc.ABC):
    """A chat template: a conversation -> text segments (trained or not), a generation prompt's
    ids, and the facts about its format that inference, export and pre-flight need.

    Subclasses are frozen dataclasses with an `options: RenderOptions` field."""

    name: str
    jinja: str | None  # the Jinja chat template written into the saved tokenizer (export)
    thinking: Thinking | None  # the reasoning block, None when the template has none
    options: RenderOptions
    default_system: str | None = None  # the template's own system prompt (the vendor's)
    efficient_eos: bool = False  # an answer ends where the next turn's first marker starts
    tool_format: str  # how tool calls are written and read (data/templates/tools.py)
    # True when render() runs the Jinja itself (auto): its text is the Jinja's by
    # construction, so pre-flight compares token ids with apply_chat_template instead.
    renders_with_jinja: bool = False

    # -- what a kind supplies -----------------------------------------------------------------

    @abc.abstractmethod
    def _render(
        self, tokenizer, messages: list[dict], system, tools: list[dict], generation, mode
    ) -> list[Segment]:
        """render() after the shared argument handling: `system` is the system prompt to use
        (or None), `tools` parsed schemas, `mode` the enable_thinking in force."""

    @abc.abstractmethod
    def stop_texts(self, tokenizer) -> list[str]:
        """The texts that end an answer besides EOS (end-of-turn markers), as the tokenizer
        writes them; for generation's stop tokens and an export's stop words."""

    def required_tokens(self) -> tuple[str, ...]:
        """Marker texts that must each be one token of the vocabulary ({bos}/{eos} allowed)."""
        return ()

    # -- shared behaviour ---------------------------------------------------------------------

    def with_options(self: _T, **options: Any) -> _T:
        return dataclasses.replace(  # type: ignore[type-var]
            self, options=dataclasses.replace(self.options, **options)
        )

    def render(
        self,
        tokenizer,
        messages: list[dict],
        system: str | None = None,
        tools: str | list | None = None,
        *,
        add_generation_prompt: bool = False,
        enable_thinking: Any = UNSET,
    ) -> list[Segment]:
        """The conversation as text segments, each marked trained or not (with the generation
        prompt for the next answer when `add_generation_prompt`)."""
        check_roles(messages)
        return self._render(
            tokenizer,
            messages,
            self.system_prompt(system),
            parse_tools(tools),
            add_generation_prompt,
            self.thinking_mode(enable_thinking),
        )

    def encode_prompt(
        self,
        tokenizer,
        messages: list[dict],
        system: str | None = None,
        tools: str | list | None = None,
        *,
        enable_thinking: Any = UNSET,
    ) -> list[int]:
        """The ids that ask the model for the next answer (messages end with a user/tool turn)."""
        if not messages or messages[-1]["role"] == "assistant":
            raise UserError("a generation prompt must end with a user message (or tool results)")
        segments = self.render(
            tokenizer,
            messages,
            system,
            tools,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        return tokenizer.encode("".join(s.text for s in segments), add_special_tokens=False)

    def stop_token_ids(self, tokenizer) -> list[int]:
        """EOS plus each stop text that is one token: generation ends at any of them."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for text in self.stop_texts(tokenizer):
            text_ids = tokenizer.encode(text, add_special_tokens=False)
            if len(text_ids) == 1 and text_ids[0] not in ids:
                ids.append(text_ids[0])
        return ids

    def system_prompt(self, system: str | None) -> str | None:
        """The system prompt a conversation gets: its own, else the config's default_system,
        else the template's."""
        if system:
            return system
        configured = self.options.default_system
        return configured if configured is not None else self.default_system

    def thinking_mode(self, enable_thinking: Any = UNSET) -> bool | None:
        """enable_thinking in force: the caller's, else the data settings' (None: mixed)."""
        return self.options.enable_thinking if enable_thinking is UNSET else enable_thinking

    def thinking_markers(self) -> tuple[str, str] | None:
        """(open, close) without surrounding newlines, for parsing generated answers."""
        th = self.thinking
        return (th.open.strip(), th.close.strip()) if th else None

    def prompt_opens_thinking(
        self, enable_thinking: bool | None, messages: list[dict] | None = None
    ) -> bool:
        """Whether the generation prompt ends inside an open reasoning block (DeepSeek-R1), so
        the answer starts with reasoning. With the conversation: not after tool results when
        the template's prompt there opens nothing (DeepSeek-R1 writes only the results' end)."""
        th = self.thinking
        if not (th and th.prompt_opens and enable_thinking is not False):
            return False
        return not (messages and messages[-1].get("role") == "tool" and self._bare_after_tool())

    def _bare_after_tool(self) -> bool:
        """True when the generation prompt after tool results opens no reasoning block."""
        return False

    def tool_format_name(self) -> str:
        """The tool-call format of prompts and answers: the config's, else the template's."""
        return self.options.tool_format or self.tool_format


def check_roles(messages: list[dict]) -> None:
    """user first; an answer follows a user turn or tool results; tool results follow an
    answer; a user turn follows an answer (or tool results)."""
    allowed = {None: ("user",), "user": ("assistant",), "assistant": ("user", "tool")}
    allowed["tool"] = ("tool", "assistant", "user")
    previous = None
    for i, message in enumerate(messages):
        role = message.get("role")
        expected = allowed[previous]
        if role not in expected:
            names = " or ".join(f"`{r}`" for r in expected)
            raise UserError(
                f"message {i} has role `{role}` where {names} was expected",
                fix="conversations alternate user and assistant, starting with user; tool "
                "results follow the assistant turn that called the tools (the system prompt "
                "is given separately)",
            )
        previous = role
