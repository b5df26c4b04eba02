"""A problem in the data, located as `file:record N:field` (or `file:line` for a line that is
not a record at all), and the collector used per record.

Conversion records problems instead of raising at the first one, so `lmforge data validate` can
list every problem of every record, training can refuse with the first few plus a count, and
`skip_invalid` can skip exactly the records that have problems and say why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lmforge.errors import UserError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. `record` is the 0-based index within `file`; `kind` is a
    short category ("missing column", "wrong role order", ...) used to count skip reasons;
    `line` (1-based) places a record that could not be read (broken JSON) by its line."""

    file: str
    reason: str
    record: int | None = None
    field: str | None = None
    fix: str | None = None
    kind: str = "invalid record"
    line: int | None = None

    @property
    def where(self) -> str:
        parts = [self.file] if self.file else []
        if self.line is not None:
            parts.append(str(self.line))
        elif self.record is not None:
            parts.append(f"record {self.record}")
        if self.field:
            parts.append(self.field)
        return ":".join(parts)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason

    def to_error(self) -> UserError:
        return UserError(self.reason, where=self.where or None, fix=self.fix)

    @classmethod
    def from_error(cls, error: UserError, kind: str = "unreadable dataset") -> Problem:
        """A dataset-level error (missing file, broken JSON, ...) as a problem to list."""
        return cls(file=error.where or "", reason=error.what, fix=error.fix, kind=kind)


@dataclass
class RecordCheck:
    """Collects the problems of one record while it is converted."""

    source: str
    index: int
    problems: list[Problem] = field(default_factory=list)

    def problem(self, field: str | None, reason: str, fix: str | None, kind: str) -> None:
        self.problems.append(Problem(self.source, reason, self.index, field, fix, kind))

    def unreadable(self, line: int, reason: str, fix: str) -> None:
        """The record's line could not be read as a record at all."""
        self.problems.append(
            Problem(self.source, reason, self.index, None, fix, "malformed line", line)
        )

    @property
    def ok(self) -> bool:
        return not self.problems


LISTED_IN_ERROR = 3


def invalid_records_error(problems: list[Problem], records: int) -> UserError:
    """Training refuses invalid data: the first few problems, how many in all, and the two ways
    out, as one paragraph."""
    first = problems[0]
    bad = len({(p.file, p.record) for p in problems if p.record is not None})
    more = f" ({len(problems)} problems in {bad} of {records} records)" if len(problems) > 1 else ""
    if len(problems) > 1:
        others = [str(p) for p in problems[1:LISTED_IN_ERROR]]
        rest = len(problems) - LISTED_IN_ERROR
        more += ". Next: " + "; ".join(others) + (f"; and {rest} more" if rest > 0 else "")
    fix = first.fix.rstrip(".") + "; " if first.fix else ""
    fix += (
        "`lmforge data validate CONFIG.yaml` lists every problem; "
        "`skip_invalid: true` skips invalid records (they are counted and reported)"
    )
    return UserError(first.reason + more, where=first.where or None, fix=fix)


def skip_reasons(problems: list[Problem]) -> dict[str, int]:
    """Skipped records per reason (a record with two kinds of problem counts under its first)."""
    first_per_record: dict[tuple[str, int | None], str] = {}
    for problem in problems:
        first_per_record.setdefault((problem.file, problem.record), problem.kind)
    return dict(Counter(first_per_record.values()).most_common())
