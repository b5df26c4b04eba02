"""Config -> encoded train/eval sets, with a report of what was read, cut, dropped and packed.

Encoding is cached (cache.py): the same data, tokenizer, template and settings are tokenized
once. It runs in `preprocessing_num_workers` processes when there is enough data to repay
starting them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset
from tqdm.auto import tqdm

from lmforge.config.schema import DataConfig
from lmforge.data.encoding.cache import (
    TokenizedSet,
    cache_folder,
    code_fingerprint,
    digest,
    load_entry,
    object_fingerprint,
    samples_fingerprint,
    save_entry,
    tokenizer_fingerprint,
)
from lmforge.data.encoding.encode import IGNORE_INDEX, encode_sample
from lmforge.data.encoding.packing import PackedSet, pack_lengths, packing_efficiency
from lmforge.data.sources.load import load_splits
from lmforge.data.sources.reasoning import THINK_CLOSE, THINK_OPEN
from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

# Data keys that do not change the tokens of any sample (packing runs after the cache).
RUNTIME_KEYS = frozenset(
    {
        "packing",
        "neat_packing",
        "padding_free",
        "preprocessing_num_workers",
        "overwrite_cache",
        "tokenized_path",
    }
)
# DataReport fields produced by encoding, stored with a cache entry.
ENCODING_STATS = (
    "truncated",
    "tokens_lost",
    "no_target",
    "no_target_where",
    "tokens",
    "trained_tokens",
)
STREAM_PACK_WINDOW = 1000  # streaming + packing: samples packed together
MIN_SAMPLES_PER_WORKER = 200  # below this, starting processes costs more than it saves
SHOWN_LOCATIONS = 20


@dataclass
class DataReport:
    records: dict[str, int] = field(default_factory=dict)  # per dataset, after max_samples
    skipped: int = 0  # invalid records skipped (skip_invalid: true); set by sources.py
    skip_reasons: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    train_samples: int = 0
    eval_samples: int = 0
    truncated: int = 0  # samples cut at cutoff_len
    tokens_lost: int = 0  # ... and how many tokens they lost
    no_target: int = 0  # dropped: nothing left to train on after truncation
    no_target_where: list[str] = field(default_factory=list)  # the first few of them
    tokens: int = 0
    trained_tokens: int = 0
    train_rows: int = 0  # rows the trainer sees: samples, or packed rows
    packing_efficiency: float | None = None  # real tokens / row capacity, when packing
    cutoff_len: int = 0
    cache: str = ""  # where the encoding came from

    def lines(self) -> list[str]:
        read = ", ".join(f"{name} {count}" for name, count in self.records.items())
        lines = [
            f"records: {read}; train {self.train_samples}, eval {self.eval_samples}",
            f"tokens: {self.tokens} ({self.trained_tokens} trained)",
        ]
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skip_reasons.items())
            first = f"; first: {self.skip_examples[0]}" if self.skip_examples else ""
            lines.append(f"skipped invalid records: {self.skipped} ({reasons}){first}")
        if self.truncated:
            lines.append(
                f"truncated at cutoff_len: {self.truncated} samples, {self.tokens_lost} tokens lost"
            )
        if self.no_target:
            first = f" (first: {self.no_target_where[0]})" if self.no_target_where else ""
            lines.append(
                f"dropped (no trained token left after truncation): {self.no_target}{first}"
            )
        if self.packing_efficiency is not None:
            lines.append(
                f"packing: {self.train_samples} samples in {self.train_rows} rows of "
                f"{self.cutoff_len} tokens, efficiency {self.packing_efficiency:.1%}"
            )
        if self.cache:
            lines.append(f"encoding: {self.cache}")
        lines += [f"note: {note}" for note in dict.fromkeys(self.notes)]
        return lines


def packing_enabled(data: DataConfig) -> bool:
    """`packing` or LLaMA-Factory's `neat_packing`: both mean packing without cross-attention."""
    return bool(data.packing or data.neat_packing)


def build_datasets(
    data: DataConfig,
    template: ChatTemplate,
    tokenizer,
    seed: int,
    *,
    stage: str = "sft",
    max_steps: int = -1,
) -> tuple[Sequence[dict], TokenizedSet, DataReport]:
    """Training rows (packed when asked), evaluation samples, and the report."""
    report = DataReport()
    if data.streaming:
        return _streaming_datasets(data, template, tokenizer, seed, stage, max_steps, report)
    train, evaluation = encode_datasets(data, template, tokenizer, seed, report, stage=stage)
    if not len(train):
        raise UserError(
            "no training sample is left after encoding",
            fix=f"raise cutoff_len (now {data.cutoff_len}) or check the data",
        )
    rows: Sequence[dict] = train
    if packing_enabled(data):
        plan = pack_lengths(train.lengths(), data.cutoff_len, seed)
        rows = PackedSet(train, plan)
        report.packing_efficiency = packing_efficiency(train.lengths(), plan, data.cutoff_len)
    report.train_rows = len(rows)
    return rows, evaluation, report


def encode_datasets(
    data: DataConfig,
    template: ChatTemplate,
    tokenizer,
    seed: int,
    report: DataReport,
    *,
    stage: str = "sft",
) -> tuple[TokenizedSet, TokenizedSet]:
    """Read, split and encode the data (or load the cached encoding); fills `report`."""
    report.cutoff_len = data.cutoff_len
    train, evaluation = load_splits(data, report, seed=seed, stage=stage)
    parts = {"train": list(train), "eval": list(evaluation)}
    for note in reasoning_notes(parts["train"] + parts["eval"], template):
        logger.warning(note)
        report.notes.append(note)
    key = encoding_key(parts, data, template, tokenizer, stage)
    folder = cache_folder(key, data.tokenized_path)
    entry = None if data.overwrite_cache else load_entry(folder, key)
    if entry is not None:
        sets, manifest = entry
        for name in ENCODING_STATS:
            setattr(report, name, manifest["stats"][name])
        report.cache = f"loaded from cache {folder} (tokenization skipped)"
        logger.info("Encoded data found in cache %s: tokenization skipped", folder)
    else:
        if data.overwrite_cache:
            logger.info("overwrite_cache: encoding the data again")
        encoder = SampleEncoder(template, tokenizer, data)
        workers = data.preprocessing_num_workers or 1
        sets = {
            name: _encode_set(part, encoder, workers, report, name) for name, part in parts.items()
        }
        stats = {name: getattr(report, name) for name in ENCODING_STATS}
        save_entry(folder, key, sets, {"stats": stats})
        report.cache = f"encoded and cached in {folder}"
        logger.info("Encoded data cached in %s", folder)
    report.train_samples, report.eval_samples = len(sets["train"]), len(sets["eval"])
    return sets["train"], sets["eval"]


def encoding_key(
    parts: dict[str, list], data: DataConfig, template: ChatTemplate, tokenizer, stage: str
) -> str:
    """Everything the encoded tokens depend on; see cache.py."""
    settings = {k: v for k, v in vars(data).items() if k not in RUNTIME_KEYS}
    return digest(
        {
            "stage": stage,
            "samples": {name: samples_fingerprint(part) for name, part in parts.items()},
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "template": object_fingerprint(template),
            "settings": settings,
            "code": code_fingerprint(_encoding_sources(template)),
        }
    )[:32]


def _encoding_sources(template) -> list[Path]:
    """encode.py, the template modules and this one: the code between a sample and its ids."""
    here = Path(__file__).parent
    templates = here.parent / "templates"
    files = [Path(__file__), here / "encode.py", *sorted(templates.glob("*.py"))]
    module = sys.modules.get(type(template).__module__)
    if getattr(module, "__file__", None):
        files.append(Path(module.__file__))
    return files


@dataclass
class SampleEncoder:
    """One sample -> (input_ids, labels, truncated, tokens lost, trained tokens).

    The only call into encode.py, so encoding options live in one place. Picklable, so a
    worker process can receive it."""

    template: ChatTemplate
    tokenizer: Any
    data: DataConfig

    def __call__(self, sample) -> tuple[np.ndarray, np.ndarray, bool, int, int]:
        result = self._encode(sample, self.data.cutoff_len)
        lost = getattr(result, "lost_tokens", None)
        if lost is None:  # measure what was cut by encoding without a limit
            lost = 0
            if result.truncated:
                lost = len(self._encode(sample, sys.maxsize).input_ids) - len(result.input_ids)
        # int32 arrays: a tenth of the pickling cost of lists on the way back from a worker
        ids = np.asarray(result.input_ids, dtype=np.int32)
        labels = np.asarray(result.labels, dtype=np.int32)
        trained = int(np.count_nonzero(labels != IGNORE_INDEX))
        return ids, labels, bool(result.truncated), lost, trained

    def _encode(self, sample, cutoff_len: int):
        return encode_sample(
            sample,
            self.template,
            self.tokenizer,
            cutoff_len,
            self.data.train_on_prompt,
            mask_history=self.data.mask_history,
        )


class EncodedStream(IterableDataset):
    """streaming: samples are encoded while training reads them (nothing cached); with packing,
    they are packed in windows of STREAM_PACK_WINDOW samples."""

    def __init__(
        self, samples: Iterable, encoder: SampleEncoder, pack_capacity: int | None, seed: int
    ):
        self.samples, self.encoder = samples, encoder
        self.pack_capacity, self.seed = pack_capacity, seed

    def __iter__(self) -> Iterator[dict]:
        encoded = self._encoded()
        if self.pack_capacity is None:
            yield from encoded
            return
        for window in _windows(encoded, STREAM_PACK_WINDOW):
            lengths = [len(sample["input_ids"]) for sample in window]
            packed = PackedSet(window, pack_lengths(lengths, self.pack_capacity, self.seed))
            yield from (packed[i] for i in range(len(packed)))

    def _encoded(self) -> Iterator[dict]:
        for sample in self.samples:
            ids, labels, _, _, trained = self.encoder(sample)
            if trained == 0:
                logger.warning("%s: no trained token within cutoff_len, dropped", sample.where)
                continue
            yield {"input_ids": np.asarray(ids), "labels": np.asarray(labels)}


def _windows(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    window: list[dict] = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def reasoning_notes(samples: Sequence, template: ChatTemplate) -> list[str]:
    """Every way reasoning in the data ends up not trained as reasoning, each counted (in the
    training plan and `lmforge data inspect`) so none of it happens silently: dropped by the
    template or settings, dropped from earlier answers (preserve_thinking: false), or left in an
    answer's text. Samples read from data hold reasoning apart from the answer, whatever the
    format (data/sources/reasoning.py)."""
    samples = list(samples)
    dropped = dropped_reasoning_note(samples, template)
    notes = [dropped] if dropped else [_history_note(samples, template)]
    opens = {THINK_OPEN, *(template.thinking_markers() or ())[:1]}
    count = sum(1 for s in samples if any(_in_text(m, opens) for m in _answers(s)))
    if count:
        markers = " or ".join(f"`{marker}`" for marker in sorted(opens))
        notes.append(
            f"{_samples(count, 'have', 'has')} {markers} inside an answer, not as a "
            f"`{THINK_OPEN}...{THINK_CLOSE}` block at its start: it is trained as text; to "
            "train it as reasoning, start the answer with the block (or use reasoning_content)"
        )
    return [note for note in notes if note]


def dropped_reasoning_note(samples: Sequence, template: ChatTemplate) -> str | None:
    """Reasoning in the data that the template will not render (a template without a reasoning
    block, or enable_thinking: false), counted so it is never dropped silently."""
    thinking = template.thinking
    if thinking is not None and template.options.enable_thinking is not False:
        return None
    count = sum(1 for sample in samples if _has_reasoning(sample))
    if not count:
        return None
    if thinking is None:
        why = f"template `{template.name}` has no reasoning block"
        fix = "use a reasoning template (qwen3, deepseekr1; see docs/thinking.md) to train it"
    else:
        why = "enable_thinking is false"
        fix = "set enable_thinking: true (or null) to train it"
    return f"{_samples(count, 'carry', 'carries')} reasoning that is not trained: {why}; {fix}"


def _history_note(samples: Sequence, template: ChatTemplate) -> str | None:
    """Reasoning of answers before the last user turn, which reasoning templates drop unless
    preserve_thinking (as the vendors render history)."""
    if template.thinking is None or template.options.preserve_thinking:
        return None
    count = 0
    for sample in samples:
        messages = list(getattr(sample, "messages", None) or [])
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last_user = users[-1] if users else -1
        count += any(m.get("reasoning") for m in messages[:last_user])
    if not count:
        return None
    return (
        f"{_samples(count, 'carry', 'carries')} reasoning in answers before the last user turn "
        "that is not trained: preserve_thinking is false, so earlier answers are rendered "
        "without it, as the vendor's template does; set preserve_thinking: true to train it "
        "(docs/thinking.md, multi-turn reasoning data)"
    )


def _samples(count: int, plural: str, singular: str) -> str:
    return f"{count} samples {plural}" if count != 1 else f"1 sample {singular}"


def _answers(sample) -> list[dict]:
    messages = list(getattr(sample, "messages", None) or [])
    messages += [
        m for m in (getattr(sample, "chosen", None), getattr(sample, "rejected", None)) if m
    ]
    return [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]


def _has_reasoning(sample) -> bool:
    return any(m.get("reasoning") for m in _answers(sample))


def _in_text(message: dict, opens: set[str]) -> bool:
    content = message.get("content")
    return isinstance(content, str) and any(marker in content for marker in opens)


def _streaming_datasets(data, template, tokenizer, seed, stage, max_steps, report):
    report.cutoff_len = data.cutoff_len
    train, evaluation = load_splits(data, report, seed=seed, stage=stage, max_steps=max_steps)
    encoder = SampleEncoder(template, tokenizer, data)
    eval_set = _encode_set(list(evaluation), encoder, 1, report, "eval")
    capacity = data.cutoff_len if packing_enabled(data) else None
    report.eval_samples = len(eval_set)
    report.cache = "streaming: encoded while training reads the data (not cached)"
    return EncodedStream(train, encoder, capacity, seed), eval_set, report


def _encode_set(
    samples: list, encoder: SampleEncoder, workers: int, report: DataReport, label: str
) -> TokenizedSet:
    def kept() -> Iterator[tuple[np.ndarray, np.ndarray, str, int, int]]:
        for sample, (ids, labels, truncated, lost, trained) in zip(
            samples, _encode_in_order(samples, encoder, workers, label)
        ):
            report.truncated += truncated
            report.tokens_lost += lost
            if trained == 0:
                report.no_target += 1
                if len(report.no_target_where) < SHOWN_LOCATIONS:
                    report.no_target_where.append(sample.where)
                    logger.warning("%s: no trained token within cutoff_len, dropped", sample.where)
                continue
            report.tokens += len(ids)
            report.trained_tokens += trained
            yield ids, labels, sample.source_file, sample.record_index, lost

    return TokenizedSet.build(kept())


_worker_encoder: SampleEncoder | None = None


def _init_worker(encoder: SampleEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    # The processes are the parallelism: the tokenizer's own threads would only contend.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _encode_chunk(chunk: list) -> list:
    return [_worker_encoder(sample) for sample in chunk]


def _encode_in_order(samples: list, encoder: SampleEncoder, workers: int, label: str) -> Iterator:
    """Encoded samples in input order, with a progress bar; in worker processes if it pays."""
    processes = _process_count(encoder, workers, len(samples))
    size = max(16, min(1000, -(-len(samples) // max(processes * 8, 1))))
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    pool = None
    if processes > 1:
        # fork where available: workers inherit the tokenizer instead of unpickling it.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = context.Pool(processes, initializer=_init_worker, initargs=(encoder,))
        logger.info("Encoding %d %s samples in %d processes", len(samples), label, processes)
    # The bar starts after the pool: its monitor thread must not exist when workers fork.
    bar = tqdm(total=len(samples), desc=f"Encoding {label}", unit="sample", disable=not samples)
    try:
        if pool is not None:
            results = pool.imap(_encode_chunk, chunks)
        else:
            results = ([encoder(sample) for sample in chunk] for chunk in chunks)
        for chunk_result in results:
            bar.update(len(chunk_result))
            yield from chunk_result
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def _process_count(encoder: SampleEncoder, workers: int, count: int) -> int:
    processes = min(workers, count // MIN_SAMPLES_PER_WORKER)
    if processes <= 1:
        if workers > 1:
            logger.info(
                "preprocessing_num_workers: %d samples encode in this process (fewer than %d "
                "per worker)",
                count,
                MIN_SAMPLES_PER_WORKER,
            )
        return 1
    if "fork" not in multiprocessing.get_all_start_methods():
        try:
            pickle.dumps(encoder)  # spawned workers receive the tokenizer pickled
        except Exception as exc:  # noqa: BLE001 - any pickling failure means "not picklable"
            logger.warning(
                "preprocessing_num_workers: the tokenizer cannot be sent to worker processes "
                "(%s); encoding in this process",
                exc,
            )
            return 1
    return processes
