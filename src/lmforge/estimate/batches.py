"""The data's length distribution -> the largest batch a run will see, and the run's tokens.

Lengths come from the encoded dataset itself (the same encoding and cache as training), so
truncation at cutoff_len, templates and dropped samples are already in them. The largest batch
is what peak memory depends on:

- padded rows (the default): batch x the longest sample, padding included;
- padding_free: the batch's samples side by side in one row, the longest ones together;
- packing: rows of up to cutoff_len holding several samples, flattened into one row when the
  attention runs per sample (sdpa, flash-attention), padded to the longest row otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.data.encoding.packing import pack_lengths


@dataclass(frozen=True)
class Lengths:
    """Token counts of the training samples, as encoded."""

    tokens: np.ndarray  # per sample (for pairs: the longer of chosen and rejected)
    trained: np.ndarray  # trained positions per sample
    rows_per_sample: int = 1  # 2 for preference pairs and KTO (two sequences per sample)
    exact: bool = True  # False: streaming data, every sample taken as cutoff_len long

    @property
    def samples(self) -> int:
        return len(self.tokens)

    def clipped(self, cutoff_len: int) -> Lengths:
        """As if encoded with a smaller cutoff_len (samples cut, trained tokens in proportion)."""
        tokens = np.minimum(self.tokens, cutoff_len)
        share = np.where(self.tokens > 0, tokens / np.maximum(self.tokens, 1), 0)
        return Lengths(
            tokens,
            np.floor(self.trained * share).astype(np.int64),
            self.rows_per_sample,
            self.exact,
        )


@dataclass(frozen=True)
class Batch:
    """One forward pass: `rows` x `row_len` positions computed (padding included)."""

    rows: int
    row_len: int
    real_tokens: int
    trained: int
    segments: tuple[int, ...]  # the samples' lengths (attention runs within each)
    padded: bool  # rows of different lengths padded: a mask is built for the whole row
    flattened: bool  # several samples in one row, attention per sample

    @property
    def positions(self) -> int:
        return self.rows * self.row_len


def lengths_from_rows(rows, *, cutoff_len: int) -> Lengths:
    """Lengths of a stage's training rows: a TokenizedSet, a PackedSet (its samples), a list of
    dicts (pairs, KTO, prompts), or a stream (unknown: cutoff_len each)."""
    samples = getattr(rows, "samples", None)
    if samples is not None and hasattr(rows, "rows"):  # PackedSet: the samples it packs
        rows = samples
    arrays = getattr(rows, "arrays", None)
    if arrays is not None:  # TokenizedSet: flat arrays and offsets
        offsets = arrays["offsets"]
        tokens = np.diff(offsets).astype(np.int64)
        trained_flags = (arrays["labels"] != IGNORE_INDEX).astype(np.int64)
        sums = np.add.reduceat(trained_flags, offsets[:-1]) if len(tokens) else np.zeros(0)
        sums = np.where(tokens > 0, sums, 0)
        return Lengths(tokens, sums.astype(np.int64))
    if not hasattr(rows, "__len__"):  # streaming: not known before training reads it
        return Lengths(np.full(1, cutoff_len), np.full(1, cutoff_len), exact=False)
    tokens, trained, per_sample = [], [], 1
    for row in rows:
        if "chosen_input_ids" in row:
            per_sample = 2
            n = max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))
            t = sum(
                int(np.count_nonzero(np.asarray(row[k]) != IGNORE_INDEX))
                for k in ("chosen_labels", "rejected_labels")
                if k in row
            )
        elif "input_ids" in row:
            per_sample = 2 if "kto_label" in row else 1
            # KTO: each sample's row and its KL row (another record's answer) pad alike
            n = max(len(row["input_ids"]), len(row.get("kl_input_ids", ())))
            labels = row.get("labels")
            t = n if labels is None else int(np.count_nonzero(np.asarray(labels) != IGNORE_INDEX))
        else:  # prompts of ppo/grpo
            n, t = len(row.get("prompt_ids", ())), 0
        tokens.append(n)
        trained.append(t)
    return Lengths(np.asarray(tokens, np.int64), np.asarray(trained, np.int64), per_sample)


def largest_batch(
    lengths: Lengths,
    batch_size: int,
    *,
    packing: bool,
    padding_free: bool,
    per_sample_attention: bool,
    cutoff_len: int,
    seed: int = 42,
    extra_tokens: int = 0,
) -> Batch:
    """The batch with the most positions the data can produce (the longest samples together).
    `extra_tokens`: generated tokens added to every row (ppo/grpo)."""
    tokens = np.sort(lengths.tokens)[::-1] + extra_tokens
    trained = int(np.sort(lengths.trained)[::-1][:batch_size].sum())
    per = lengths.rows_per_sample
    if packing:
        plan = pack_lengths(np.minimum(tokens, cutoff_len).tolist(), cutoff_len, seed)
        row_sums = sorted((int(sum(tokens[i] for i in row)), row) for row in plan)[::-1]
        chosen = row_sums[:batch_size]
        segments = tuple(int(tokens[i]) for _, row in chosen for i in row)
        if per_sample_attention or padding_free:
            total = sum(s for s, _ in chosen)
            return Batch(1, total, total, _trained_share(lengths, segments), segments, False, True)
        longest = chosen[0][0]
        real = sum(s for s, _ in chosen)
        return Batch(
            len(chosen), longest, real, _trained_share(lengths, segments), segments, True, False
        )
    top = tokens[: batch_size * 1]
    segments = tuple(int(n) for n in top) * per
    if padding_free:
        total = int(top.sum()) * per
        return Batch(1, total, total, trained, segments, False, True)
    rows = len(top) * per
    longest = int(top[0]) if len(top) else 0
    padded = rows > 1 and len(set(segments)) > 1
    return Batch(rows, longest, int(top.sum()) * per, trained, segments, padded, False)


def _trained_share(lengths: Lengths, segments: tuple[int, ...]) -> int:
    ratio = lengths.trained.sum() / max(int(lengths.tokens.sum()), 1)
    return int(round(sum(segments) * ratio))


def run_tokens(
    lengths: Lengths,
    *,
    batch_size: int,
    accumulation: int,
    world_size: int,
    epochs: float,
    max_steps: int,
    packing: bool,
    padding_free: bool,
    cutoff_len: int,
    seed: int = 42,
) -> dict:
    """Steps, real tokens, positions computed (with padding) and trained tokens of the whole
    run: batches drawn in a seeded random order, as the trainer's sampler does."""
    tokens = lengths.tokens
    per = lengths.rows_per_sample
    if packing:
        plan = pack_lengths(np.minimum(tokens, cutoff_len).tolist(), cutoff_len, seed)
        row_tokens = np.asarray([sum(int(tokens[i]) for i in row) for row in plan], np.int64)
    else:
        row_tokens = tokens
    rows = len(row_tokens)
    per_step = batch_size * accumulation * world_size
    steps_per_epoch = max(1, -(-rows // per_step))
    order = np.random.default_rng(seed).permutation(rows)
    shuffled = row_tokens[order]
    padded_positions = 0
    for start in range(0, rows, batch_size):
        chunk = shuffled[start : start + batch_size]
        padded_positions += (
            int(chunk.sum()) if padding_free or packing else len(chunk) * int(chunk.max())
        )
    real = int(row_tokens.sum())
    if max_steps and max_steps > 0:
        scale = max_steps / steps_per_epoch
        steps = max_steps
    else:
        scale = epochs
        steps = int(np.ceil(steps_per_epoch * epochs))
    return {
        "steps": steps,
        "epochs": scale,
        "real_tokens": int(real * per * scale),
        "positions": int(padded_positions * per * scale),
        "trained_tokens": int(lengths.trained.sum() * scale),
        "tokens_per_epoch": real * per,
    }
