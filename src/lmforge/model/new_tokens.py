"""Tokens added to the vocabulary (LLaMA-Factory's `add_tokens`, `add_special_tokens`,
`new_special_tokens_config`, `init_special_tokens`, `resize_vocab`): into the tokenizer, the
model's embedding (and untied output head) rows for them, and which rows LoRA trains.

Every command adds the same tokens in the same order to the base tokenizer (inference takes the
keys from the training run, model/setup.py), so a token has the same id in training, chat and
export. The model's rows grow to the tokenizer's length; the new rows start at the mean of the
existing ones plus noise (LLaMA-Factory's noise_init) or at the mean of the rows of a
description's tokens (desc_init). With LoRA only those rows train, through peft's
`trainable_token_indices` (the adapter holds them: a few KiB, not a copy of the embedding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config.schema import ModelConfig, comma_separated
from lmforge.config.yaml_file import read_yaml_mapping
from lmforge.errors import UserError


@dataclass(frozen=True)
class NewTokens:
    """The tokens a config adds: plain ones first, then special ones (LLaMA-Factory's order);
    descriptions for desc_init, by token."""

    plain: tuple[str, ...] = ()
    special: tuple[str, ...] = ()
    descriptions: tuple[tuple[str, str], ...] = ()
    init: str = "noise_init"

    @property
    def all(self) -> tuple[str, ...]:
        return self.plain + self.special

    def __bool__(self) -> bool:
        return bool(self.all)


def grows_vocabulary(model: ModelConfig) -> bool:
    """Whether the model's rows must follow the tokenizer's length (tokens added, or
    resize_vocab): training fits them, and so does every command that loads its weights."""
    return bool(
        model.add_tokens
        or model.add_special_tokens
        or model.new_special_tokens_config
        or model.resize_vocab
    )


def requested_tokens(model: ModelConfig) -> NewTokens:
    """What the config asks to add; a descriptions file that cannot be read is a UserError."""
    descriptions: dict[str, str] = {}
    special = comma_separated(model.add_special_tokens)
    if model.new_special_tokens_config:
        descriptions = _read_descriptions(Path(model.new_special_tokens_config))
        special = list(dict.fromkeys([*special, *descriptions]))
    return NewTokens(
        plain=tuple(comma_separated(model.add_tokens)),
        special=tuple(special),
        descriptions=tuple(descriptions.items()),
        init=model.init_special_tokens,
    )


def _read_descriptions(path: Path) -> dict[str, str]:
    data = read_yaml_mapping(path)
    if not data:
        raise UserError(
            f"new_special_tokens_config {path} does not map tokens to descriptions",
            where=str(path),
            fix="write one line per token, e.g. `<think>: the start of the model's reasoning`",
        )
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise UserError(
            f"new_special_tokens_config {path}: the entry for {bad[0]!r} is not token: text",
            where=str(path),
            fix="give each token a description in words (a string)",
        )
    return data


def vocabulary_line(tokens: NewTokens, ids: tuple[int, ...], method) -> str:
    """The plan's line: `added <tool_call> (id 262144), </tool_call> (id 262145); rows start at
    noise_init, trained in the adapter`."""
    added = ", ".join(f"{t} (id {i})" for t, i in zip(tokens.all, ids))
    if method.finetuning_type == "lora":
        where = "trained in the adapter"
    elif method.finetuning_type == "oft":
        where = "not trained unless additional_target names the embedding (and an untied head)"
    elif method.finetuning_type == "full":
        where = "trained with the model"
    else:  # freeze
        where = "not trained unless freeze_extra_modules names the embedding (and an untied head)"
    return f"added {added}; rows start at {tokens.init}, {where}"


def add_to_tokenizer(tokenizer, tokens: NewTokens) -> list[int]:
    """Add the tokens (those already in the vocabulary stay as they are); their ids, in order."""
    if tokens.plain:
        tokenizer.add_tokens(list(tokens.plain), special_tokens=False)
    if tokens.special:
        tokenizer.add_tokens(list(tokens.special), special_tokens=True)
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens.all]


def embedding_rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def fit_vocabulary(model, tokenizer) -> list[int]:
    """Grow the model's embedding (and untied head) to the tokenizer's length when it is
    shorter; the ids of the rows added (they still need their values: initialise_rows)."""
    rows, wanted = embedding_rows(model), len(tokenizer)
    if wanted <= rows:
        return []
    # mean_resizing=False: our own initialisation follows (transformers' samples a Gaussian
    # with the embeddings' covariance, a 262k x 640 pass for nothing)
    model.resize_token_embeddings(wanted, mean_resizing=False)
    return list(range(rows, wanted))


@torch.no_grad()
def initialise_rows(model, tokenizer, tokens: NewTokens, new_rows: list[int]) -> None:
    """New rows (the last ones, as fit_vocabulary adds them) of the embedding and of an
    untied head: the mean of the rows that existed before, plus N(0, 1/sqrt(width)) noise
    (noise_init); or the mean of the rows of each
    token's description (desc_init, desc_init_w_noise; a token without a description gets the
    mean). Seeded by the caller (transformers' set_seed)."""
    if not new_rows:
        return
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    descriptions = dict(tokens.descriptions) if tokens.init != "noise_init" else {}
    noise = tokens.init in ("noise_init", "desc_init_w_noise")
    new = set(new_rows)
    first = min(new_rows)  # fit_vocabulary's rows are the last ones
    for weight in matrices:
        # no fp32 copy of the old rows (Gemma: 262k x 640): mean accumulates in fp32
        mean = weight[:first].mean(dim=0, dtype=torch.float32)
        width = weight.shape[1]
        for row in new_rows:
            value = mean
            text = descriptions.get(tokenizer.convert_ids_to_tokens(row))
            if text is not None:
                ids = [i for i in tokenizer.encode(text, add_special_tokens=False) if i not in new]
                if ids:
                    value = weight[ids].float().mean(dim=0)
            if noise:
                value = value + torch.randn(width, device=weight.device) / math.sqrt(width)
            weight[row] = value.to(weight.dtype)


def trainable_token_indices(model, token_ids: list[int]) -> dict[str, list[int]]:
    """peft's `trainable_token_indices` for these rows: the embedding's, and an untied head's
    (a tied head follows the embedding in peft)."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    indices = {names[embedding]: sorted(set(token_ids))}
    if head is not None and head.weight is not embedding.weight:
        indices[names[head]] = sorted(set(token_ids))
    return indices
