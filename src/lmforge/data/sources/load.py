"""Which records are used: datasets resolved, read, converted to Samples, mixed and split.

Every record is converted and checked before training starts. Invalid records (a line of a
data file that is not even a record, such as broken JSON, included) stop the run with the first
few problems and a count (`UserError`), unless `skip_invalid: true`, in which case they are
skipped and counted in the report (`skipped`, `skip_reasons`, `skip_examples`). With
`streaming: true` records are read lazily while training consumes them (max_steps required), so
a bad record is met, and reported the same way, only when it is reached.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lmforge.config.schema import DataConfig
from lmforge.data.problems import Problem, RecordCheck, invalid_records_error, skip_reasons
from lmforge.data.sample import Sample
from lmforge.data.sources import placeholders
from lmforge.data.sources.formats import check_stage, to_sample
from lmforge.data.sources.hub import iter_hub_records
from lmforge.data.sources.mixing import (
    NO_AUTO_STAGES,
    auto_split,
    explicit_val_size,
    is_auto,
    mix,
    mix_iter,
    sample_count,
    shuffle_buffer,
    val_count,
)
from lmforge.data.sources.mixing import split as split
from lmforge.data.sources.readers import RawRecord, iter_records
from lmforge.data.sources.registry import DatasetSpec, resolve_datasets
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

_WATCHED_COLUMNS = ("input", "system", "history", "tools")  # present but unmapped: say so
SKIP_EXAMPLES = 5


# ---- which datasets -------------------------------------------------------------------------


def inline_entries(data: DataConfig) -> dict[str, Any]:
    """The YAML's `datasets:` mapping (inline dataset entries)."""
    value = data.datasets
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(
            f"`datasets` must be a mapping of names to descriptions, not {type(value).__name__}",
            fix="write `datasets: {my_data: {path: data.jsonl, formatting: sharegpt}}`",
        )
    return value


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def dataset_names(data: DataConfig) -> list[str]:
    """Training datasets: `dataset`, or else every inline dataset not used for evaluation."""
    names = _names(data.dataset)
    if not names:
        evaluation = set(_names(data.eval_dataset))
        names = [n for n in inline_entries(data) if n not in evaluation]
    if not names:
        raise UserError(
            "no dataset given",
            fix="set `dataset` to names from dataset_info.json (e.g. identity), or declare "
            "datasets inline under `datasets:`",
        )
    return names


def eval_dataset_names(data: DataConfig) -> list[str]:
    return _names(data.eval_dataset)


def resolve_specs(
    data: DataConfig, names: list[str] | None = None, stage: str | None = None
) -> list[DatasetSpec]:
    """Specs for `names` (default: the training datasets), checked against the stage."""
    names = dataset_names(data) if names is None else names
    specs = resolve_datasets(names, data.dataset_dir, inline_entries(data), data.dataset_dir)
    if stage is not None:
        for spec in specs:
            check_stage(spec, stage)
    return specs


def check_datasets(data: DataConfig, stage: str) -> list[DatasetSpec]:
    """Fail fast, before any model is loaded: every training and evaluation dataset resolves
    (entries, files present) and fits the stage. No record is read."""
    return resolve_specs(data, stage=stage) + resolve_specs(
        data, eval_dataset_names(data), stage=stage
    )


# ---- one dataset ----------------------------------------------------------------------------


@dataclass
class DatasetRead:
    """One dataset read and converted: its samples, and the problems of the other records."""

    spec: DatasetSpec
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    notes: list[str] = field(default_factory=list)
    error: UserError | None = None  # about the dataset as a whole (e.g. an unused placeholder)


def spec_records(spec: DatasetSpec, streaming: bool = False) -> Iterator[RawRecord]:
    if spec.load_from == "file":
        return iter_records(spec.paths)
    return iter_hub_records(spec, streaming)


def read_dataset(
    spec: DatasetSpec, data: DataConfig, stage: str, seed: int, *, limit: bool = True
) -> DatasetRead:
    """Every record of the dataset converted; `limit` applies num_samples and max_samples."""
    raw = list(spec_records(spec))
    if limit and spec.num_samples is not None:
        raw = sample_count(raw, spec.num_samples, seed)
    if limit and data.max_samples is not None:
        raw = raw[: data.max_samples]
    result = DatasetRead(spec, records=len(raw))
    converter = RecordConverter(spec, stage, data.default_system)
    for source, index, record in raw:
        sample, problems = converter(source, index, record)
        if sample is not None:
            result.samples.append(sample)
        result.problems += problems
    try:
        converter.finish()
    except UserError as error:
        result.error = error
    result.notes = converter.notes(raw[0][2] if raw else None)
    return result


class RecordConverter:
    """Placeholders, conversion and default system for the records of one dataset."""

    def __init__(self, spec: DatasetSpec, stage: str, default_system: str | None = None):
        self.spec, self.stage, self.default_system = spec, stage, default_system
        self.use = placeholders.PlaceholderUse()

    def __call__(self, source: str, index: int, record: Any) -> tuple[Sample | None, list]:
        check = RecordCheck(source, index)
        record = placeholders.fill_record(record, self.spec, check, self.use)
        sample = to_sample(self.spec, record, check, self.stage)
        if sample is not None and sample.system is None and self.default_system:
            sample.system = self.default_system
        return (sample if check.ok else None), check.problems

    def finish(self) -> None:
        placeholders.check_unused(self.spec, self.use)

    def notes(self, first_record: Any) -> list[str]:
        notes = [placeholders.unfilled_note(self.spec, self.use)]
        if isinstance(first_record, dict) and self.stage != "pt":
            mapped = set(self.spec.columns.values())
            unused = [c for c in _WATCHED_COLUMNS if c in first_record and c not in mapped]
            if unused:
                notes.append(
                    f"dataset `{self.spec.name}`: column(s) {', '.join(unused)} are in the data "
                    "but not mapped in `columns`, so they are not used (as in LLaMA-Factory); "
                    "map them to use them"
                )
        return [note for note in notes if note]


# ---- all datasets: mixed, split -------------------------------------------------------------


def load_samples(data: DataConfig, report: Any, *, stage: str = "sft", seed: int = 42) -> list:
    """The training datasets as one mixed list of Samples (no split)."""
    reads = [read_dataset(s, data, stage, seed) for s in resolve_specs(data, stage=stage)]
    _account(reads, data, report)
    return mix([r.samples for r in reads], data.mix_strategy, data.interleave_probs, seed)


def load_splits(
    data: DataConfig, report: Any, *, seed: int = 42, stage: str = "sft", max_steps: int = -1
) -> tuple[Iterable[Sample], list[Sample]]:
    """(train, eval) Samples. train is a list, or a lazy re-iterable SampleStream when
    streaming; eval comes from eval_dataset or val_size (not both), and is always a list."""
    train_specs = resolve_specs(data, stage=stage)
    eval_specs = resolve_specs(data, eval_dataset_names(data), stage=stage)
    if eval_specs and explicit_val_size(data.val_size) > 0:
        raise UserError(
            "both val_size and eval_dataset are set",
            fix="hold out part of the training data with val_size, or evaluate on "
            "eval_dataset; remove the other",
        )
    if data.streaming:
        return _stream_splits(data, report, train_specs, eval_specs, seed, stage, max_steps)
    train_reads = [read_dataset(s, data, stage, seed) for s in train_specs]
    eval_reads = [read_dataset(s, data, stage, seed) for s in eval_specs]
    _account(train_reads + eval_reads, data, report, eval_count=len(eval_reads))
    train = mix([r.samples for r in train_reads], data.mix_strategy, data.interleave_probs, seed)
    if eval_reads:
        evaluation = mix(
            [r.samples for r in eval_reads], data.mix_strategy, data.interleave_probs, seed
        )
        return train, evaluation
    if is_auto(data.val_size):
        if stage in NO_AUTO_STAGES:
            return train, []
        train, evaluation, note = auto_split(train, seed)
        logger.info(note)
        _append(report, "notes", note)
        return train, evaluation
    return split(train, data.val_size, seed)


def _account(reads: list[DatasetRead], data: DataConfig, report: Any, eval_count: int = 0) -> None:
    """Counts in the report; invalid records refused, or skipped and reported."""
    for read in reads:
        if read.error is not None:
            raise read.error
    first_eval = len(reads) - eval_count
    problems: list[Problem] = []
    for position, read in enumerate(reads):
        name = read.spec.name + (" (eval)" if position >= first_eval else "")
        records = getattr(report, "records", None)
        if isinstance(records, dict):
            records[name] = read.records
        problems += read.problems
        for note in read.notes:
            logger.warning(note)
            _append(report, "notes", note)
    if not problems:
        return
    if not data.skip_invalid:
        raise invalid_records_error(problems, sum(r.records for r in reads))
    record_skips(report, problems)


def record_skips(report: Any, problems: list[Problem]) -> None:
    """Skipped records into the report: `skipped` (count), `skip_reasons` (reason -> count),
    `skip_examples` (the first few problems in full), added to any report object."""
    reasons = skip_reasons(problems)
    count = sum(reasons.values())
    report.skipped = (getattr(report, "skipped", 0) or 0) + count
    merged = dict(getattr(report, "skip_reasons", None) or {})
    for reason, n in reasons.items():
        merged[reason] = merged.get(reason, 0) + n
    report.skip_reasons = merged
    examples = list(getattr(report, "skip_examples", None) or [])
    examples += [str(p) for p in problems[: max(0, SKIP_EXAMPLES - len(examples))]]
    report.skip_examples = examples
    summary = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
    logger.warning("skipped %d invalid records (%s); first: %s", count, summary, problems[0])


def _append(report: Any, name: str, value: Any) -> None:
    values = getattr(report, name, None)
    if values is None:
        values = []
        setattr(report, name, values)
    values.append(value)


# ---- streaming ------------------------------------------------------------------------------


class SampleStream:
    """A lazily read, re-iterable sequence of Samples (each iteration reads the data again)."""

    def __init__(self, make: Callable[[], Iterator[Sample]]):
        self._make = make

    def __iter__(self) -> Iterator[Sample]:
        return self._make()


def _stream_splits(data, report, train_specs, eval_specs, seed, stage, max_steps):
    if max_steps is None or max_steps <= 0:
        raise UserError(
            "streaming: true needs max_steps: a stream has no known length, so epochs "
            "cannot be counted",
            fix="set max_steps (e.g. max_steps: 1000), or streaming: false",
        )
    if eval_specs:
        eval_reads = [read_dataset(s, data, stage, seed) for s in eval_specs]
        _account(eval_reads, data, report, eval_count=len(eval_reads))
    for spec in train_specs:
        if spec.num_samples is not None:
            note = f"dataset `{spec.name}`: num_samples is not applied when streaming"
            logger.warning(note)
            _append(report, "notes", note)
    streams = [SampleStream(_dataset_stream(s, data, report, stage)) for s in train_specs]

    def mixed() -> Iterator[Sample]:
        samples = mix_iter(streams, data.mix_strategy, data.interleave_probs, seed)
        return shuffle_buffer(samples, max(1, data.buffer_size), seed)

    if eval_specs:
        evaluation = mix(
            [r.samples for r in eval_reads], data.mix_strategy, data.interleave_probs, seed
        )
        return SampleStream(mixed), evaluation
    if is_auto(data.val_size):
        count = 0
        if stage not in NO_AUTO_STAGES:
            _append(report, "notes", "val_size: auto: streaming data has no known length, no split")
    else:
        count = val_count(data.val_size, None)
    evaluation = list(itertools.islice(mixed(), count)) if count else []
    return SampleStream(lambda: itertools.islice(mixed(), count, None)), evaluation


def _dataset_stream(spec, data, report, stage) -> Callable[[], Iterator[Sample]]:
    skipped: set[tuple[str, int]] = set()  # each pass re-reads the data: report a record once

    def generate() -> Iterator[Sample]:
        records = spec_records(spec, streaming=True)
        if data.max_samples is not None:
            records = itertools.islice(records, data.max_samples)
        converter = RecordConverter(spec, stage, data.default_system)
        counts = getattr(report, "records", None)
        for read, (source, index, record) in enumerate(records, start=1):
            if isinstance(counts, dict):
                counts[spec.name] = max(counts.get(spec.name, 0), read)  # records read so far
            sample, problems = converter(source, index, record)
            if problems and not data.skip_invalid:
                raise invalid_records_error(problems, read)
            if problems and (source, index) not in skipped:
                skipped.add((source, index))
                record_skips(report, problems)
            if sample is not None:
                yield sample

    return generate
