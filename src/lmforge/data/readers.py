"""Data files -> lists of records (dicts), with errors that name the file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv")


def read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        raise UserError(
            f"{path} is a folder; this version reads single files",
            fix=f"point `file_name` at a {'/'.join(SUPPORTED_SUFFIXES)} file",
        )
    if suffix == ".jsonl":
        records = _read_json_lines(path)
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            records = list(csv.DictReader(handle))
    else:
        raise UserError(
            f"cannot read {path}: unsupported file type `{suffix}`",
            fix=f"use one of: {', '.join(SUPPORTED_SUFFIXES)}",
        )
    if not records:
        raise UserError(f"{path} holds no records", fix="add records or remove the dataset")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(
                f"{path}:record {index} is a {type(record).__name__}, not an object",
                fix="each record must be a JSON object with the dataset's columns",
            )
    return records


def _read_json(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{"):
            return _read_json_lines(path)  # JSON lines saved as .json, as datasets accepts
        raise UserError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})",
            fix="repair the JSON at that line",
        ) from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise UserError(f"{path} must hold a JSON list of records", fix="wrap records in [...]")
    return data


def _read_json_lines(path: Path) -> list[Any]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}:{lineno}:{exc.colno}: not valid JSON ({exc.msg})",
                    fix="each line must be one complete JSON object; repair that line",
                ) from None
    return records
