"""Packing: several encoded samples per row of cutoff_len, each still on its own.

Rows are filled by best-fit decreasing: longest samples first (ties in a seeded order), each
into the fullest row it still fits in. Inside a row every sample keeps position ids from 0 and
attends only to itself. We do not build that mask ourselves: the collator passes position_ids
and no attention_mask, and transformers turns restarting position ids into

- a block-diagonal causal mask for sdpa / eager / flex attention (masking_utils detects the
  packed sequences and applies causal, sliding-window and chunked rules per sample), and
- varlen flash-attention calls for flash_attention_2/3 (the collator flattens the batch into
  one row and passes cu_seq_lens / max_length, as DataCollatorWithFlattening does).

A ready-made 4D mask would be passed through unchanged to every layer, which drops the sliding
window of models such as Gemma 3; position ids keep it. transformers only looks for packed
sequences when the model runs without a KV cache: model/packing.py turns the cache off and
proves on the real model, before training, that no sample sees another.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Sequence

import numpy as np


def pack_lengths(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Indices of samples grouped into rows holding at most `capacity` tokens each."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -int(lengths[i]))  # stable: equal lengths keep the seeded order
    rows: list[list[int]] = []
    # Open rows bucketed by free room; `rooms` lists the distinct free amounts, sorted, so the
    # best fit is one bisect away (at most `capacity` distinct values, whatever the data size).
    by_room: dict[int, list[int]] = {}
    rooms: list[int] = []
    for index in order:
        size = int(lengths[index])
        if size > capacity:
            raise ValueError(f"sample {index} has {size} tokens, more than a row ({capacity})")
        at = bisect_left(rooms, size)
        if at < len(rooms):
            room = rooms[at]
            row = by_room[room].pop()
            if not by_room[room]:
                del by_room[room], rooms[at]
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        left = room - size
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                insort(rooms, left)
            by_room[left].append(row)
    return rows


def packing_efficiency(lengths: Sequence[int], rows: list[list[int]], capacity: int) -> float:
    """Real tokens / row capacity: the share of each packed row that is not padding."""
    if not rows:
        return 0.0
    return float(np.sum(np.asarray(lengths, dtype=np.int64))) / (len(rows) * capacity)


class PackedSet(Sequence):
    """Rows of packed samples, built on demand from the encoded samples and the row plan.

    Each row is `{"input_ids", "labels", "lengths"}`; `lengths` tells the collator where each
    sample starts (positions restart there, and that label is masked)."""

    def __init__(self, samples: Sequence[dict], rows: list[list[int]]):
        self.samples = samples
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        parts = [self.samples[i] for i in self.rows[index]]
        return {
            "input_ids": np.concatenate([np.asarray(p["input_ids"]) for p in parts]),
            "labels": np.concatenate([np.asarray(p["labels"]) for p in parts]),
            "lengths": [len(p["input_ids"]) for p in parts],
        }
