"""Encoded samples (or packed rows) -> tensors for the model.

PadCollator: one sample per row, right padding, an attention mask.
PairCollator, KTOCollator: preference data (dpo, rm; kto), right padding.
PromptCollator: prompts for ppo/grpo, left padding (generation continues every row together).
PackedCollator: rows holding one or more samples; position ids restart at each sample and the
label of each sample's first token is -100 (it would be predicted from the previous sample's
last token). No attention_mask: transformers builds the per-sample mask from the position ids
(see packing.py), and a 2D mask would switch that detection off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmforge.data.encoding.encode import IGNORE_INDEX


def _round_up(length: int, multiple: int | None) -> int:
    return (length + multiple - 1) // multiple * multiple if multiple else length


class PadCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        input_ids = np.full((len(features), length), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(features), length), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((len(features), length), dtype=np.int64)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = f["input_ids"]
            labels[row, :n] = f["labels"]
            attention[row, :n] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention),
        }


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    length = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (length - len(r)) for r in rows], dtype=torch.long)


class PairCollator:
    """Chosen rows first, then rejected rows, in one padded batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["chosen_input_ids"] for f in features] + [
            f["rejected_input_ids"] for f in features
        ]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        input_ids = pad_rows(ids, self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": pad_rows([[1] * len(r) for r in ids], 0),
            "labels": pad_rows(labels, IGNORE_INDEX),
        }


class KTOCollator:
    """The samples' rows, then their KL rows (each prompt with another record's answer, paired
    at encoding time by add_kl_completions), whose log-ratio estimates KL(policy || reference)
    for the batch, as in the KTO paper."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features] + [f["kl_input_ids"] for f in features]
        labels = [f["labels"] for f in features] + [f["kl_labels"] for f in features]
        return {
            "input_ids": pad_rows(ids, self.pad_token_id),
            "attention_mask": pad_rows([[1] * len(r) for r in ids], 0),
            "labels": pad_rows(labels, IGNORE_INDEX),
            "desirable": torch.tensor([bool(f["kto_label"]) for f in features]),
        }


class PromptCollator:
    """Left-padded prompt ids (generation continues every row at the same position), plus
    the rows themselves for the rewards."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["prompt_ids"]) for f in features)
        ids = [
            [self.pad_token_id] * (length - len(f["prompt_ids"])) + f["prompt_ids"]
            for f in features
        ]
        mask = [
            [0] * (length - len(f["prompt_ids"])) + [1] * len(f["prompt_ids"]) for f in features
        ]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "index": torch.tensor([f["index"] for f in features], dtype=torch.long),
            "rows": features,
        }


class PackedCollator:
    """Rows of packed samples (`lengths` gives each sample's size; absent = one sample).

    flatten=False: rows padded to the longest; padding is its own segment with labels -100.
    flatten=True: the whole batch becomes one row without padding (padding-free batches, and
    flash-attention, whose varlen path needs one row). With `varlen_kwargs` the row carries
    cu_seq_lens_q/k and max_length_q/k, which flash-attention reads instead of inferring them
    from position ids in every layer; sdpa and eager build their per-sample mask from the
    position ids alone."""

    def __init__(
        self,
        pad_token_id: int,
        *,
        flatten: bool = False,
        varlen_kwargs: bool | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        self.pad_token_id = pad_token_id
        self.flatten = flatten
        self.varlen_kwargs = flatten if varlen_kwargs is None else varlen_kwargs
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        rows = [self._row(f) for f in features]
        if self.flatten:
            return self._flat(rows)
        length = _round_up(max(len(ids) for ids, _, _ in rows), self.pad_to_multiple_of)
        input_ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((len(rows), length), dtype=np.int64)
        for row, (ids, row_labels, lengths) in enumerate(rows):
            n = len(ids)
            input_ids[row, :n] = ids
            labels[row, :n] = row_labels
            positions[row, :n] = segment_positions(lengths)
            positions[row, n:] = np.arange(length - n)  # padding: a segment of its own
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
        }

    def _row(self, feature: dict) -> tuple[np.ndarray, np.ndarray, list[int]]:
        ids = np.asarray(feature["input_ids"], dtype=np.int64)
        labels = np.array(feature["labels"], dtype=np.int64)  # a copy: masked below
        lengths = list(feature.get("lengths") or [len(ids)])
        if sum(lengths) != len(ids):
            raise ValueError(f"packed row lengths {lengths} do not add up to {len(ids)} tokens")
        labels[segment_starts(lengths)] = IGNORE_INDEX
        return ids, labels, lengths

    def _flat(self, rows: list[tuple[np.ndarray, np.ndarray, list[int]]]) -> dict:
        lengths = [n for _, _, row_lengths in rows for n in row_lengths]
        batch = {
            "input_ids": torch.from_numpy(np.concatenate([ids for ids, _, _ in rows]))[None],
            "labels": torch.from_numpy(np.concatenate([labels for _, labels, _ in rows]))[None],
            "position_ids": torch.from_numpy(segment_positions(lengths))[None],
        }
        if self.varlen_kwargs:
            cu_seq_lens = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
            batch.update(
                cu_seq_lens_q=cu_seq_lens,
                cu_seq_lens_k=cu_seq_lens,
                max_length_q=max(lengths),
                max_length_k=max(lengths),
            )
        return batch


def segment_starts(lengths: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def segment_positions(lengths: Sequence[int]) -> np.ndarray:
    """0..n-1 for each segment, concatenated: [3, 2] -> [0, 1, 2, 0, 1]."""
    total = int(np.sum(lengths))
    return np.arange(total, dtype=np.int64) - np.repeat(segment_starts(lengths), lengths)


def make_collator(
    pad_token_id: int,
    *,
    packing: bool,
    attn_implementation: str | None,
    padding_free: bool = False,
    varlen: bool = False,
):
    """The collator for this run: padded rows, packed rows, or padding-free batches (one row).
    Rows are flattened, with the sample boundaries as varlen kwargs, for attention that runs
    per sample from them: flash-attention (flash_attention_2/3 and hub kernels named *flash*),
    or any other the caller names with `varlen`; padding-free batches are one row in any case."""
    varlen = varlen or "flash" in (attn_implementation or "")
    if not (packing or padding_free):
        return PadCollator(pad_token_id)
    return PackedCollator(pad_token_id, flatten=varlen or padding_free, varlen_kwargs=varlen)
