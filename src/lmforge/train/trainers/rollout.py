"""Rollouts for PPO and GRPO: prompts from the data, completions sampled from the policy, and
the per-token log-probabilities of those completions under any model.

Prompts are encoded by lmforge's template (the same tokens SFT and chat use). A batch of prompts
is left-padded for generation; each sequence is then [left padding | prompt | completion | right
padding], with position ids counted over the real tokens only, so the log-probabilities computed
here are those of the distribution the completion was sampled from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lmforge.data.sample import Sample
from lmforge.data.sources.load import eval_dataset_names, resolve_specs, spec_records
from lmforge.train.losses.logps import token_logps

# ---- prompts from the data ------------------------------------------------------------------


def record_columns(data_config, stage: str) -> dict[tuple[str, int], dict]:
    """(file, record index) -> the raw record, so rewards can read any column of it."""
    specs = resolve_specs(data_config, stage=stage)
    specs += resolve_specs(data_config, eval_dataset_names(data_config), stage=stage)
    columns: dict[tuple[str, int], dict] = {}
    for spec in specs:
        for source, index, record in spec_records(spec):
            if isinstance(record, dict):
                columns[(source, index)] = record
    return columns


def prompt_row(
    sample: Sample,
    template,
    tokenizer,
    *,
    prompt_budget: int,
    answer_column: str,
    record: dict | None,
) -> dict:
    """A sample as an RL prompt: the conversation up to its last user turn (a final assistant
    answer becomes the reference answer), its ids, and the columns of its record."""
    messages = list(sample.messages)
    answer = None
    if messages and messages[-1]["role"] == "assistant":
        answer = messages.pop()["content"]
    ids = template.encode_prompt(tokenizer, messages, sample.system, sample.tools)
    truncated = len(ids) > prompt_budget
    if truncated:  # keep the end: the question and the generation prompt
        ids = ids[len(ids) - prompt_budget :]
    columns = dict(record or {})
    reference = columns.get(answer_column)
    reference = answer if reference is None else str(reference)
    columns[answer_column] = reference
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return {
        "prompt_ids": ids,
        "prompt": user,
        "conversation": {"messages": messages, "system": sample.system, "tools": sample.tools},
        "reference": reference,
        "columns": columns,
        "truncated": truncated,
    }


class RepeatedChunkSampler(torch.utils.data.Sampler):
    """A shuffled order (the dataset's with shuffle=False) in which each chunk (the prompts of
    one optimizer step) comes `repeats` times in a row: PPO's epochs over one batch of
    rollouts. The last chunk is filled from the start of the order so every chunk is whole."""

    def __init__(self, size: int, chunk: int, repeats: int, seed: int, shuffle: bool = True):
        self.size, self.chunk, self.repeats, self.seed = size, chunk, repeats, seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        chunks = -(-self.size // self.chunk)
        return chunks * self.chunk * self.repeats

    def __iter__(self):
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        chunks = -(-self.size // self.chunk)
        order = (order * (1 + chunks * self.chunk // max(self.size, 1)))[: chunks * self.chunk]
        for start in range(0, len(order), self.chunk):
            for _ in range(self.repeats):
                yield from order[start : start + self.chunk]


# ---- sampling and scoring tokens ------------------------------------------------------------


@dataclass
class Sequences:
    """[left pad | prompt | completion | right pad] rows, and the completion's mask."""

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    completion_mask: torch.Tensor  # [N, T], float
    ended: torch.Tensor  # [N] bool: the completion ended with a stop token

    @property
    def completion_length(self) -> int:
        return self.completion_mask.shape[1]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.completion_length :]

    def completion_lists(self) -> list[list[int]]:
        return [
            ids[: int(n)].tolist()
            for ids, n in zip(self.completion_ids, self.completion_mask.sum(-1))
        ]


@torch.no_grad()
def sample_completions(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_generations: int,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_token_id: int,
) -> Sequences:
    """`num_generations` completions per prompt (rows of a prompt consecutive), sampled from
    the model's own distribution: temperature 1, no top-k/top-p, so the log-probabilities
    below are the sampling probabilities."""
    from transformers import GenerationConfig

    ids = input_ids.repeat_interleave(num_generations, dim=0)
    mask = attention_mask.repeat_interleave(num_generations, dim=0)
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_token_id,
        use_cache=True,  # even if training turned the model's cache off
    )
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        model.train(was_training)
    completion = out[:, ids.shape[1] :]
    if completion.shape[1] == 0:  # nothing generated at all: one pad token to keep shapes
        completion = torch.full((ids.shape[0], 1), pad_token_id, device=ids.device)
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=completion.device))
    ended = is_stop.any(-1)
    first_stop = torch.where(ended, is_stop.int().argmax(-1), completion.shape[1] - 1)
    steps = torch.arange(completion.shape[1], device=completion.device)
    completion_mask = (steps.unsqueeze(0) <= first_stop.unsqueeze(1)).float()
    completion = torch.where(completion_mask.bool(), completion, pad_token_id)
    return Sequences(
        input_ids=torch.cat([ids, completion], dim=1),
        attention_mask=torch.cat([mask, completion_mask.long()], dim=1),
        completion_mask=completion_mask,
        ended=ended,
    )


def completion_logps(
    model, seqs: Sequences, *, with_values: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(token) of each completion token [N, T], and with `with_values` (a
    ModelWithValueHead) the value head at the positions that predict them [N, T]. Only the
    completion's logits are computed (logits_to_keep): the vocabulary can be large."""
    steps = seqs.completion_length
    positions = (seqs.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=seqs.input_ids,
        attention_mask=seqs.attention_mask,
        position_ids=positions,
        logits_to_keep=steps + 1,
        use_cache=False,
        **({"values_at": steps + 1} if with_values else {}),
    )
    logps = token_logps(out.logits[:, :-1], seqs.completion_ids)
    values = out.head_values[:, :-1].float() if with_values else None
    return logps, values
