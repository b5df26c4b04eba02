"""`{{name}}`-style placeholders in data, such as those in LLaMA-Factory's identity.json.

LLaMA-Factory leaves them to the user (edit the file, e.g. with sed). Here a dataset entry may
give `placeholders: {name: ..., author: ...}`: every `{{key}}` in the dataset's mapped columns is
replaced when the data is read, so the file stays as shipped. With values given, the data and
the values must match: a placeholder without a value is a record problem, and a value no
record uses is an error (usually a misspelt key). Without values, text is left as written and
the records holding placeholders are counted in a note, since they would be trained verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lmforge.data.problems import RecordCheck
from lmforge.data.sources.registry import DatasetSpec
from lmforge.errors import UserError

# Identifiers only, so `{{ . }}` or `{{...}}` in ordinary text is never taken for a placeholder.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass
class PlaceholderUse:
    """What one dataset's records contain, gathered while reading it."""

    seen: set[str] = field(default_factory=set)  # every placeholder name found
    records: int = 0  # records holding at least one placeholder


def fill_record(record: Any, spec: DatasetSpec, check: RecordCheck, use: PlaceholderUse) -> Any:
    """The record with placeholders in its mapped columns replaced (a copy if any changed)."""
    if not isinstance(record, dict):
        return record
    filled = dict(record)
    found_any = False
    for column in set(spec.columns.values()) & set(record):
        names: list[str] = []
        filled[column] = _fill(record[column], spec.placeholders, names)
        if names:
            found_any = True
            use.seen.update(names)
            missing = sorted({n for n in names if n not in spec.placeholders})
            if spec.placeholders and missing:
                given = ", ".join(sorted(spec.placeholders))
                check.problem(
                    column,
                    "placeholder "
                    + ", ".join("{{" + n + "}}" for n in missing)
                    + f" has no value (values are given for: {given})",
                    f"add {missing[0]}: ... to the dataset's `placeholders`, or correct the "
                    "placeholder in the data",
                    "placeholder",
                )
    use.records += found_any
    return filled


def _fill(value: Any, values: dict[str, str], names: list[str]) -> Any:
    if isinstance(value, str):
        if "{{" not in value:
            return value

        def replace(match: re.Match) -> str:
            names.append(match.group(1))
            return values.get(match.group(1), match.group(0))

        return PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [_fill(item, values, names) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, values, names) for key, item in value.items()}
    return value


def check_unused(spec: DatasetSpec, use: PlaceholderUse) -> None:
    unused = sorted(set(spec.placeholders) - use.seen)
    if not unused:
        return
    seen = ", ".join("{{" + n + "}}" for n in sorted(use.seen)) or "none"
    raise UserError(
        f"placeholders given for {', '.join(unused)}, but no record of dataset `{spec.name}` "
        "contains " + ", ".join("{{" + n + "}}" for n in unused),
        where=spec.declared_in or None,
        fix=f"check the spelling of the keys in `placeholders` (the data uses: {seen})",
    )


def unfilled_note(spec: DatasetSpec, use: PlaceholderUse) -> str | None:
    if spec.placeholders or not use.records:
        return None
    names = ", ".join("{{" + n + "}}" for n in sorted(use.seen))
    return (
        f"dataset `{spec.name}`: {use.records} records contain placeholders ({names}) that are "
        f"trained as written; give values with `placeholders` (see docs/data.md)"
    )
