"""Several datasets -> one sequence of samples; train/eval split; seeded shuffling.

Strategies follow LLaMA-Factory (which uses `datasets.interleave_datasets`): `concat` appends
the datasets; `interleave_under` draws from them in turn (or at random with
`interleave_probs`) and stops when any is used up; `interleave_over` restarts used-up datasets
until every one has been used up once. All randomness comes from the seed. Works on lists and
on re-iterable streams alike.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from lmforge.errors import UserError

T = TypeVar("T")
STRATEGIES = ("concat", "interleave_under", "interleave_over")


def parse_probs(text: str | None, count: int) -> list[float] | None:
    if text in (None, ""):
        return None
    try:
        probs = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise UserError(
            f"`interleave_probs: {text}` is not a comma-separated list of numbers",
            fix="write e.g. interleave_probs: 0.7,0.3 (one per dataset)",
        ) from None
    if len(probs) != count or any(p < 0 for p in probs) or sum(probs) <= 0:
        raise UserError(
            f"`interleave_probs: {text}` must give one non-negative number per dataset "
            f"({count}), not all zero",
            fix="write one probability per dataset in `dataset`, e.g. 0.7,0.3 (they are "
            "normalised to sum to 1)",
        )
    total = sum(probs)
    return [p / total for p in probs]


def mix(datasets: Sequence[Sequence[T]], strategy: str, probs: str | None, seed: int) -> list[T]:
    return list(mix_iter(datasets, strategy, probs, seed))


def mix_iter(
    datasets: Sequence[Iterable[T]], strategy: str, probs: str | None, seed: int
) -> Iterator[T]:
    if strategy not in STRATEGIES:
        raise UserError(
            f"unknown mix_strategy `{strategy}`", fix=f"use one of: {', '.join(STRATEGIES)}"
        )
    if strategy == "concat" or len(datasets) == 1:
        if probs and len(datasets) > 1:
            raise UserError(
                "interleave_probs is set, but mix_strategy is concat, which ignores it",
                fix="set mix_strategy: interleave_under (or interleave_over), or remove "
                "interleave_probs",
            )
        return itertools.chain.from_iterable(datasets)
    weights = parse_probs(probs, len(datasets))
    return interleave(datasets, weights, seed, until_all=strategy == "interleave_over")


def interleave(
    datasets: Sequence[Iterable[T]], probs: list[float] | None, seed: int, *, until_all: bool
) -> Iterator[T]:
    """Round-robin (no probs) or seeded random draws. Stops when one dataset is used up, or
    (until_all) when every one has been used up at least once, restarting the others."""
    rng = random.Random(seed)
    iterators = [iter(d) for d in datasets]
    exhausted = [False] * len(datasets)
    turn = 0
    while True:
        if probs is None:
            index, turn = turn % len(datasets), turn + 1
        else:
            index = rng.choices(range(len(datasets)), weights=probs)[0]
        try:
            yield next(iterators[index])
            continue
        except StopIteration:
            pass
        exhausted[index] = True
        if not until_all or all(exhausted):
            return
        iterators[index] = iter(datasets[index])
        try:
            yield next(iterators[index])
        except StopIteration:  # an empty dataset cannot be oversampled
            return


def shuffle_buffer(items: Iterable[T], buffer_size: int, seed: int) -> Iterator[T]:
    """A stream shuffled within a window of buffer_size, as `datasets` does when streaming."""
    rng = random.Random(seed)
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def sample_count(samples: Sequence[T], count: int, seed: int) -> list[T]:
    """LLaMA-Factory's `num_samples`: a seeded random subset, repeated when count > len."""
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    chosen = order[:count]
    chosen += [rng.randrange(len(samples)) for _ in range(count - len(chosen))]
    return [samples[i] for i in chosen]


AUTO = "auto"  # val_size: auto, the default
AUTO_MIN_RECORDS = 50  # fewer records than this: no automatic split
AUTO_SHARE, AUTO_MIN, AUTO_MAX = 0.05, 8, 500
NO_AUTO_STAGES = ("ppo", "grpo")  # they do not evaluate during training


def is_auto(val_size) -> bool:
    return isinstance(val_size, str) and val_size.strip().lower() == AUTO


def holds_out(val_size) -> bool:
    """Whether val_size may hold records out (`auto`, or a number above 0)."""
    return is_auto(val_size) or (val_size or 0) > 0


def explicit_val_size(val_size) -> float:
    """val_size as the number the user gave; `auto` counts as 0 (not given)."""
    return 0.0 if is_auto(val_size) else float(val_size or 0)


def auto_val_count(total: int) -> int:
    """`val_size: auto`: 5% of the records, at least 8 and at most 500; none below 50 records."""
    if total < AUTO_MIN_RECORDS:
        return 0
    return min(AUTO_MAX, max(AUTO_MIN, int(round(total * AUTO_SHARE))))


def auto_split(samples: list[T], seed: int) -> tuple[list[T], list[T], str]:
    """`val_size: auto` on a list: (train, eval, the note saying what was done)."""
    count = auto_val_count(len(samples))
    if not count:
        return (
            samples,
            [],
            f"val_size: auto: fewer than {AUTO_MIN_RECORDS} records ({len(samples)}), no split",
        )
    train, evaluation = split(samples, count, seed)
    return (
        train,
        evaluation,
        f"val_size: auto held out {count} of {len(samples)} records for evaluation "
        "(val_size: 0 turns this off)",
    )


def val_count(val_size: float, total: int | None) -> int:
    """val_size as a number of records: a fraction < 1 of total, or a count >= 1."""
    if val_size <= 0:
        return 0
    if val_size >= 1:
        if not float(val_size).is_integer():
            raise UserError(
                f"val_size {val_size} is neither a fraction below 1 nor a whole count",
                fix="use e.g. val_size: 0.1 (10%) or val_size: 200 (records)",
            )
        return int(val_size)
    if total is None:
        raise UserError(
            f"val_size {val_size} is a fraction, but a stream has no known length",
            fix="give val_size as a number of records when streaming, e.g. val_size: 500",
        )
    return int(round(total * val_size))


def split(samples: list[T], val_size: float, seed: int) -> tuple[list[T], list[T]]:
    """Seeded shuffle, then the first val_size records are held out for evaluation."""
    count = val_count(val_size, len(samples))
    if val_size <= 0:
        return samples, []
    if not 0 < count < len(samples):
        raise UserError(
            f"val_size {val_size} leaves {count} of {len(samples)} samples for evaluation",
            fix="use a fraction between 0 and 1, or a count smaller than the number of samples",
        )
    shuffled = samples[:]
    random.Random(seed).shuffle(shuffled)
    return shuffled[count:], shuffled[:count]
