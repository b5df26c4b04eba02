"""Pre-flight: does the template fit the tokenizer? Checked before any training step.

- every special token the template writes is one token of the vocabulary (else the model sees
  `<`, `|`, `im`, ... and never learns to stop);
- BOS is not doubled in what is trained;
- the end-of-turn token is trained, so the model learns to stop;
- the text trained on is what the template's Jinja renders (the Jinja written into the saved
  tokenizer, or the tokenizer's own with `template: auto`), and for `auto` the token ids equal
  `apply_chat_template(tokenize=True)`.
A failed check raises a UserError that says which, with the diff when renderings differ.
"""

from __future__ import annotations

import difflib
import logging

from lmforge.data.encoding.encode import IGNORE_INDEX, encode_sample
from lmforge.data.sample import Sample
from lmforge.data.templates.auto import hf_messages
from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

PROBE_SYSTEM = "You are a helpful assistant."
PROBE = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Forge."},
]
_FIX = "pick the template the model was trained with (see docs/templates.md), or `template: auto`"


def check_template(template: ChatTemplate, tokenizer) -> None:
    check_special_tokens(template, tokenizer)
    encoded = encode_sample(Sample(PROBE, PROBE_SYSTEM), template, tokenizer, cutoff_len=1 << 30)
    check_bos(template, tokenizer, encoded.input_ids)
    check_end_of_turn(template, tokenizer, encoded.labels)
    if template.renders_with_jinja:
        check_auto_ids(template, tokenizer, encoded.input_ids)
    elif template.jinja:
        check_jinja_text(template, tokenizer)


def check_special_tokens(template: ChatTemplate, tokenizer) -> None:
    for word in template.required_tokens():
        token = _resolve(word, tokenizer, template.name)
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(
                f"template `{template.name}` writes `{token}` as one token, but this tokenizer "
                f"splits it into {len(ids)} tokens",
                fix=f"the template does not match this model; {_FIX}",
            )


def _resolve(word: str, tokenizer, name: str) -> str:
    for placeholder, attribute in (("{bos}", "bos_token"), ("{eos}", "eos_token")):
        if placeholder in word:
            value = getattr(tokenizer, attribute, None)
            if not value:
                raise UserError(
                    f"template `{name}` writes the {attribute.replace('_', ' ')}, but the "
                    "tokenizer has none",
                    fix=_FIX,
                )
            word = word.replace(placeholder, value)
    return word


def check_bos(template, tokenizer, ids: list[int]) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        raise UserError(
            f"template `{template.name}` starts the text with BOS twice",
            fix=f"remove one BOS from the template; {_FIX}",
        )
    if bos is not None and ids[:1] == [bos] and _adds_bos(tokenizer):
        # Training encodes without the tokenizer's own BOS; a consumer that re-encodes the
        # rendered text with add_special_tokens=True would get two.
        logger.debug(
            "the template writes BOS itself; encode its text with add_special_tokens=False"
        )


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def check_end_of_turn(template, tokenizer, labels: list[int]) -> None:
    stops = set(template.stop_token_ids(tokenizer))
    trained = {label for label in labels if label != IGNORE_INDEX}
    if not stops & trained:
        names = ", ".join(tokenizer.convert_ids_to_tokens(sorted(stops))) or "none"
        raise UserError(
            f"template `{template.name}` does not train an end-of-turn token (stop tokens: "
            f"{names}), so the fine-tuned model would not learn to stop",
            fix=f"{_FIX}; for `template: auto`, a template whose answers end with no marker "
            "(GLM-4) needs its named template",
        )


def check_auto_ids(template: ChatTemplate, tokenizer, ids: list[int]) -> None:
    chat = hf_messages(PROBE, PROBE_SYSTEM)
    kwargs = {"enable_thinking": True} if "enable_thinking" in template.jinja else {}
    rendered = tokenizer.apply_chat_template(
        chat, tokenize=False, chat_template=template.jinja, **kwargs
    )
    expected = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if expected != ids:
        raise UserError(
            "the training encoding differs from `apply_chat_template` with the tokenizer's own "
            "chat template:\n" + _ids_diff(tokenizer, expected, ids),
            fix=f"{_FIX}, which encodes the same text",
        )


def check_jinja_text(template, tokenizer) -> None:
    """The Jinja written into the saved tokenizer renders what is trained on. Compared with the
    vendor's defaults: a configured default_system or enable_thinking is not part of the Jinja
    (callers of the saved tokenizer pass their own system prompt and enable_thinking)."""
    template = template.with_options(default_system=None, enable_thinking=True)
    cases = [(PROBE[:3], True)]
    if template.thinking is None and not template.efficient_eos:
        cases.append((PROBE, False))
    for messages, generation in cases:
        segments = template.render(tokenizer, messages, add_generation_prompt=generation)
        ours = "".join(s.text for s in segments)
        jinja = tokenizer.apply_chat_template(
            hf_messages(messages, None),
            tokenize=False,
            chat_template=template.jinja,
            add_generation_prompt=generation,
        )
        if ours != jinja:
            raise UserError(
                f"template `{template.name}` renders differently from its own Jinja chat "
                "template (the one written into the saved tokenizer):\n" + text_diff(jinja, ours),
                fix="fix the template's YAML or its Jinja so both render the same text",
            )


def text_diff(expected: str, got: str, limit: int = 40) -> str:
    lines = list(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            got.splitlines(keepends=True),
            "chat template",
            "training",
            lineterm="",
        )
    )
    shown = [line.rstrip("\n").replace("\n", "\\n") for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"... {len(lines) - limit} more lines")
    return "\n".join(shown)


def _ids_diff(tokenizer, expected: list[int], got: list[int]) -> str:
    first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    if first is None:
        first = min(len(expected), len(got))
    window = slice(max(first - 3, 0), first + 5)
    return (
        f"first difference at token {first}: apply_chat_template "
        f"{tokenizer.convert_ids_to_tokens(expected[window])}, training "
        f"{tokenizer.convert_ids_to_tokens(got[window])}"
    )
