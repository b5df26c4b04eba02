"""Named chat templates, declared as data in data/templates/*.yaml.

A template turns a conversation into (prompt, answer) text pairs; the answer part of each pair
is what the model learns. The same declaration carries the vendor's Jinja chat template, which
is written into the saved tokenizer so chat, API and export render conversations identically.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from lmforge.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    format_user: str
    format_assistant: str
    bos: bool = False
    format_system: str | None = None
    system_into_first_user: str | None = None
    trim_content: bool = False
    stop_words: tuple[str, ...] = ()
    default_system: str | None = None
    jinja: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def render_pairs(
        self, messages: list[dict[str, str]], system: str | None = None
    ) -> list[tuple[str, str]]:
        """(prompt text, answer text) for each user->assistant exchange.

        `messages` alternate user/assistant and start with user; a trailing user message gets an
        empty answer (the generation prompt). The system prompt goes where the template puts it.
        """
        check_alternation(messages)
        system = system if system is not None else self.default_system
        pairs: list[tuple[str, str]] = []
        for i in range(0, len(messages), 2):
            user = self._content(messages[i]["content"])
            prompt = ""
            if i == 0 and system:
                if self.format_system is not None:
                    prompt += self.format_system.format(content=self._content(system))
                elif self.system_into_first_user is not None:
                    user = self.system_into_first_user.format(system=system) + user
            prompt += self.format_user.format(content=user)
            answer = ""
            if i + 1 < len(messages):
                answer = self.format_assistant.format(
                    content=self._content(messages[i + 1]["content"])
                )
            pairs.append((prompt, answer))
        return pairs

    def _content(self, text: str) -> str:
        return text.strip() if self.trim_content else text

    def bos_ids(self, tokenizer) -> list[int]:
        if not self.bos:
            return []
        if tokenizer.bos_token_id is None:
            raise UserError(
                f"template `{self.name}` starts with a BOS token, but the tokenizer has none",
                fix="pick the template that matches the model (see docs/templates.md)",
            )
        return [tokenizer.bos_token_id]

    def encode_pairs(
        self, tokenizer, messages: list[dict[str, str]], system: str | None = None
    ) -> list[tuple[list[int], list[int]]]:
        """Token ids of each (prompt, answer) pair; BOS (if any) opens the first prompt."""
        encoded = []
        for i, (prompt, answer) in enumerate(self.render_pairs(messages, system)):
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            if i == 0:
                prompt_ids = self.bos_ids(tokenizer) + prompt_ids
            answer_ids = tokenizer.encode(answer, add_special_tokens=False) if answer else []
            encoded.append((prompt_ids, answer_ids))
        return encoded

    def encode_prompt(
        self, tokenizer, messages: list[dict[str, str]], system: str | None = None
    ) -> list[int]:
        """The ids that ask the model for the next answer (messages end with a user turn)."""
        if not messages or messages[-1]["role"] != "user":
            raise UserError("a generation prompt must end with a user message")
        ids: list[int] = []
        for prompt_ids, answer_ids in self.encode_pairs(tokenizer, messages, system):
            ids += prompt_ids + answer_ids
        return ids

    def stop_token_ids(self, tokenizer) -> list[int]:
        """EOS plus each stop word that is one token: generation ends at any of them."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for word in self.stop_words:
            word_ids = tokenizer.encode(word, add_special_tokens=False)
            if len(word_ids) == 1 and word_ids[0] not in ids:
                ids.append(word_ids[0])
        return ids

    def check_tokenizer(self, tokenizer) -> None:
        """Each stop word must be a single token, or generation never stops on it."""
        for word in self.stop_words:
            ids = tokenizer.encode(word, add_special_tokens=False)
            if len(ids) != 1:
                raise UserError(
                    f"template `{self.name}` needs `{word}` as one token, but this tokenizer "
                    f"splits it into {len(ids)} tokens",
                    fix="the template does not match this model; pick the template the model "
                    "was trained with (see `lmforge models list` for catalogue models)",
                )


def check_alternation(messages: list[dict[str, str]]) -> None:
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise UserError(
                f"message {i} has role `{message.get('role')}` where `{expected}` was expected",
                fix="conversations alternate user and assistant, starting with user "
                "(the system prompt is given separately)",
            )


@functools.cache
def available_templates() -> dict[str, Template]:
    found: dict[str, Template] = {}
    for entry in resources.files("lmforge.data").joinpath("templates").iterdir():
        if entry.name.endswith(".yaml"):
            spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
            spec["stop_words"] = tuple(spec.get("stop_words", ()))
            found[spec["name"]] = Template(**spec)
    return found


def get_template(name: str) -> Template:
    templates = available_templates()
    if name not in templates:
        import difflib

        close = difflib.get_close_matches(name, list(templates), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise UserError(
            f"unknown template `{name}`",
            fix=f"{hint}set `template` to one of: {', '.join(sorted(templates))}",
        )
    return templates[name]
