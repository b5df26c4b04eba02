"""Sample -> input_ids + labels: prompts masked with -100, answers trained, cut at cutoff_len."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.sample import Sample
from lmforge.data.template import Template

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool  # some tokens beyond cutoff_len were cut

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode_sample(
    sample: Sample,
    template: Template,
    tokenizer,
    cutoff_len: int,
    train_on_prompt: bool = False,
) -> Encoded:
    """Turns are kept whole, in order, while they fit; the turn that crosses cutoff_len keeps its
    prompt and as much of its answer as fits, and later turns are dropped. Callers count
    truncated samples and those left with no trained token, so nothing is cut silently."""
    input_ids: list[int] = []
    labels: list[int] = []
    truncated = False
    for prompt_ids, answer_ids in template.encode_pairs(tokenizer, sample.messages, sample.system):
        budget = cutoff_len - len(input_ids)
        if len(prompt_ids) + len(answer_ids) > budget:
            truncated = True
            if len(prompt_ids) < budget:
                answer_ids = answer_ids[: budget - len(prompt_ids)]
                _append(input_ids, labels, prompt_ids, answer_ids, train_on_prompt)
            break
        _append(input_ids, labels, prompt_ids, answer_ids, train_on_prompt)
    return Encoded(input_ids, labels, truncated)


def _append(input_ids, labels, prompt_ids, answer_ids, train_on_prompt: bool) -> None:
    input_ids += prompt_ids + answer_ids
    labels += (prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)) + answer_ids
