"""`lmforge data validate`: every problem of every record of every dataset, without stopping.

Unlike training, which stops at the first problem, this reads all training and evaluation
datasets in full (max_samples and num_samples are not applied, so records training would not
reach are checked too) and turns dataset-level errors (a missing file, broken JSON, an unknown
formatting) into problems as well, so one run lists everything to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.schema import DataConfig
from lmforge.data.problems import Problem
from lmforge.data.sources.formats import check_stage
from lmforge.data.sources.load import (
    dataset_names,
    eval_dataset_names,
    inline_entries,
    read_dataset,
)
from lmforge.data.sources.registry import resolve_datasets
from lmforge.errors import UserError


@dataclass
class ValidationResult:
    problems: list[Problem] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)  # records checked, per dataset
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def invalid_records(self) -> int:
        return len({(p.file, p.record) for p in self.problems if p.record is not None})

    def lines(self, limit: int | None = 50) -> list[str]:
        """`file:record N:field: reason` lines (the first `limit`), then how many in all."""
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [str(p) for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more")
        lines.append(self.summary())
        return lines

    def summary(self) -> str:
        """How many problems in how many of the records, and how many concern a whole dataset
        (one that could not be read, or not to its end)."""
        records = _count(sum(self.records.values()), "record")
        if not self.problems:
            return f"no problems in {records}"
        whole = sum(1 for p in self.problems if p.record is None)
        if not whole:
            return f"{_count(len(self.problems), 'problem')} in {self.invalid_records} of {records}"
        in_records = len(self.problems) - whole
        datasets = f"{whole} about a whole dataset (not read, or not all of it)"
        if not in_records:
            what = "a whole dataset" if whole == 1 else "whole datasets"
            return (
                f"{_count(whole, 'problem')}, about {what} (not read, or not all of it); "
                f"{records} checked"
            )
        return (
            f"{_count(len(self.problems), 'problem')}: {in_records} in {self.invalid_records} of "
            f"{records}, {datasets}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def validate_data(data: DataConfig, stage: str = "sft", seed: int = 42) -> ValidationResult:
    result = ValidationResult()
    try:
        names = list(dict.fromkeys(dataset_names(data) + eval_dataset_names(data)))
    except UserError as error:
        result.problems.append(Problem.from_error(error, "configuration"))
        return result
    for name in names:
        try:
            (spec,) = resolve_datasets([name], data.dataset_dir, inline_entries(data))
            check_stage(spec, stage)
            read = read_dataset(spec, data, stage, seed, limit=False)
        except UserError as error:  # this dataset cannot be read at all; check the others
            result.problems.append(Problem.from_error(error))
            continue
        result.records[name] = read.records
        result.problems += read.problems
        if read.error is not None:
            result.problems.append(Problem.from_error(read.error, "placeholder"))
        result.notes += read.notes
    return result
