"""`lmforge data inspect`: what training will see, sample by sample, and in numbers.

Each chosen sample is rendered from its token ids with the trained tokens (labels != -100)
marked, so a template that trains the prompt, or misses the end-of-turn token, is visible.
The statistics come from the same encoding training uses (and caches).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lmforge.config.schema import DataConfig
from lmforge.data.encoding.cache import TokenizedSet
from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.data.encoding.loader import DataReport, encode_datasets, packing_enabled
from lmforge.data.encoding.packing import pack_lengths, packing_efficiency
from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError

GREEN, RESET = "\x1b[32m", "\x1b[0m"
OPEN, CLOSE = "[[", "]]"


@dataclass
class SampleView:
    index: int  # position in the training set, before packing
    where: str  # file:record N
    segments: list[tuple[str, bool]]  # (text, trained), in order
    prompt_tokens: int  # tokens not trained on
    target_tokens: int  # tokens trained on
    tokens_lost: int  # cut at cutoff_len
    input_ids: list[int] = field(repr=False, default_factory=list)
    labels: list[int] = field(repr=False, default_factory=list)


@dataclass
class DataInspection:
    samples: list[SampleView]
    report: DataReport
    lengths: dict[str, int]  # p50, p90, p99, max of sample lengths in tokens
    duplicates: int  # samples whose input_ids equal an earlier sample's
    packing: dict[str, Any] | None  # rows, row_tokens, efficiency; None without packing

    def stats(self) -> dict[str, Any]:
        r = self.report
        return {
            "records": r.records,
            "train_samples": r.train_samples,
            "eval_samples": r.eval_samples,
            "skipped_invalid": r.skipped,
            "skip_reasons": r.skip_reasons,
            "lengths": self.lengths,
            "tokens": r.tokens,
            "trained_tokens": r.trained_tokens,
            "truncated": r.truncated,
            "tokens_lost": r.tokens_lost,
            "no_trained_token": r.no_target,
            "no_trained_token_examples": r.no_target_where,
            "duplicates": self.duplicates,
            "packing": self.packing,
            "cutoff_len": r.cutoff_len,
            "encoding": r.cache,
            "notes": list(dict.fromkeys(r.notes)),
        }

    def to_dict(self) -> dict[str, Any]:
        samples = []
        for view in self.samples:
            item = asdict(view)
            item["segments"] = [{"text": t, "trained": trained} for t, trained in view.segments]
            samples.append(item)
        return {"samples": samples, "stats": self.stats()}

    def render(self, color: bool) -> str:
        """Samples with trained tokens in green (color) or inside [[...]], then statistics."""
        out: list[str] = []
        for view in self.samples:
            lost = f", {view.tokens_lost} tokens cut at cutoff_len" if view.tokens_lost else ""
            out.append(
                f"--- sample {view.index} ({view.where}): {view.prompt_tokens} prompt + "
                f"{view.target_tokens} target tokens{lost}"
            )
            out.append("".join(_mark(text, trained, color) for text, trained in view.segments))
            out.append("")
        marker = "green" if color else f"inside {OPEN} {CLOSE}"
        out.append(f"(trained tokens are {marker})" if self.samples else "(no sample to show)")
        out.append("")
        out += ["Statistics", *(f"  {line}" for line in self._stat_lines())]
        return "\n".join(out)

    def _stat_lines(self) -> list[str]:
        r, n = self.report, self.lengths
        records = ", ".join(f"{name} {count}" for name, count in r.records.items())
        lines = [
            f"records: {records}; train {r.train_samples}, eval {r.eval_samples}",
            f"length (tokens): p50 {n['p50']}, p90 {n['p90']}, p99 {n['p99']}, max {n['max']}"
            f" (cutoff_len {r.cutoff_len})",
            f"tokens: {r.tokens} ({r.trained_tokens} trained)",
            f"truncated at cutoff_len: {r.truncated} records, {r.tokens_lost} tokens lost",
            f"no trained token (dropped from training): {r.no_target}"
            + (f"; first: {', '.join(r.no_target_where[:3])}" if r.no_target_where else ""),
            f"duplicates (identical input_ids): {self.duplicates}",
        ]
        if r.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in r.skip_reasons.items())
            lines.append(f"skipped invalid records: {r.skipped} ({reasons})")
        if self.packing:
            p = self.packing
            lines.append(
                f"packing: {r.train_samples} samples in {p['rows']} rows of {p['row_tokens']} "
                f"tokens, efficiency {p['efficiency']:.1%} (real tokens / row capacity)"
            )
        lines.append(f"encoding: {r.cache}")
        lines += [f"note: {note}" for note in dict.fromkeys(r.notes)]
        return lines


def inspect_data(
    data: DataConfig,
    template: ChatTemplate,
    tokenizer,
    seed: int,
    *,
    num: int = 3,
    index: int | None = None,
    stage: str = "sft",
) -> DataInspection:
    """Encode (or load the cached encoding of) the data as training would; show `num` training
    samples from `index` (default 0) and compute the statistics. A streaming dataset is read
    in full here: the statistics need every sample."""
    data = dataclasses.replace(data, streaming=False)
    report = DataReport()
    train, evaluation = encode_datasets(data, template, tokenizer, seed, report, stage=stage)
    start = 0 if index is None else index
    if len(train) and not 0 <= start < len(train):
        raise UserError(
            f"--index {start} is outside the training set (samples 0 to {len(train) - 1})",
            fix=f"give an index below {len(train)}",
        )
    chosen = range(start, min(start + max(num, 0), len(train)))
    views = [_view(train, i, tokenizer) for i in chosen]
    lengths = np.concatenate([train.lengths(), evaluation.lengths()])
    packing = None
    if packing_enabled(data) and len(train):
        rows = pack_lengths(train.lengths(), data.cutoff_len, seed)
        efficiency = packing_efficiency(train.lengths(), rows, data.cutoff_len)
        packing = {"rows": len(rows), "row_tokens": data.cutoff_len, "efficiency": efficiency}
    return DataInspection(
        views, report, length_percentiles(lengths), count_duplicates(train, evaluation), packing
    )


def length_percentiles(lengths: np.ndarray) -> dict[str, int]:
    if not len(lengths):
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99], method="nearest")
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(lengths.max())}


def count_duplicates(*sets: TokenizedSet) -> int:
    """Samples whose token ids equal an earlier sample's (train and eval together)."""
    seen: set[bytes] = set()
    duplicates = 0
    for data in sets:
        for i in range(len(data)):
            ids = np.ascontiguousarray(data[i]["input_ids"], dtype=np.int32)
            digest = hashlib.blake2b(ids.tobytes(), digest_size=16).digest()
            duplicates += digest in seen
            seen.add(digest)
    return duplicates


def _view(data: TokenizedSet, index: int, tokenizer) -> SampleView:
    item = data[index]
    ids = [int(t) for t in item["input_ids"]]
    labels = [int(t) for t in item["labels"]]
    trained = [label != IGNORE_INDEX for label in labels]
    return SampleView(
        index=index,
        where=data.where(index),
        segments=token_segments(tokenizer, ids, trained),
        prompt_tokens=trained.count(False),
        target_tokens=trained.count(True),
        tokens_lost=data.lost(index),
        input_ids=ids,
        labels=labels,
    )


def token_segments(tokenizer, ids: list[int], trained: list[bool]) -> list[tuple[str, bool]]:
    """Text of each run of trained / untrained tokens. Each run's text is the difference of
    decoded prefixes, so spaces that a tokenizer attaches across a boundary are kept."""
    if not ids:
        return []
    bounds = [0] + [i for i in range(1, len(ids)) if trained[i] != trained[i - 1]] + [len(ids)]
    segments = []
    previous = ""
    for start, end in zip(bounds[:-1], bounds[1:]):
        text = tokenizer.decode(ids[:end], skip_special_tokens=False)
        if text.startswith(previous):
            piece = text[len(previous) :]
        else:  # a multi-byte character split across the boundary: decode the run alone
            piece = tokenizer.decode(ids[start:end], skip_special_tokens=False)
        segments.append((piece, trained[start]))
        previous = text
    return [s for s in segments if s[0]]


def _mark(text: str, trained: bool, color: bool) -> str:
    if not trained:
        return text
    return f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}"
