"""Data files -> records (dicts), lazily, with errors that name the file and line.

Supported: .json (a list, one object, or JSON lines), .jsonl, .csv, .parquet, .arrow (IPC file
or stream, as `datasets.save_to_disk` writes), .txt (one record `{"text": line}` per non-blank
line, for pre-training). A folder is read as all its files of one type, a glob as all matches,
both in sorted order. JSON is parsed here rather than by `datasets` so a syntax error is
reported as file:line:column.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

# Suffix -> reader kind; json and jsonl are one kind, as in LLaMA-Factory's FILEEXT2TYPE.
SUFFIXES = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
SUPPORTED_SUFFIXES = tuple(SUFFIXES)

RawRecord = tuple[str, int, Any]  # (file it came from, 0-based index in that file, record)


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files behind `file_name` entries: a file as is, a folder's files, a glob's matches."""
    files: list[Path] = []
    for path in paths:
        if glob.has_magic(str(path)):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            files += [m for m in matches if m.is_file() and m.suffix.lower() in SUFFIXES]
        elif path.is_dir():
            files += _folder_files(path)
        else:
            files.append(path)
    return files


def _folder_files(folder: Path) -> list[Path]:
    state = folder / "state.json"  # a `datasets.save_to_disk` folder: its arrow shards, in order
    if state.is_file():
        try:
            shards = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
            return shards
        except (ValueError, KeyError, TypeError):
            pass
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
    )
    kinds = {SUFFIXES[p.suffix.lower()] for p in files}
    if not files:
        raise UserError(
            f"folder {folder} holds no data file",
            fix=f"put {'/'.join(SUPPORTED_SUFFIXES)} files in it, or point `file_name` at a file",
        )
    if len(kinds) > 1:
        by_kind = ", ".join(sorted({p.suffix.lower() for p in files}))
        raise UserError(
            f"folder {folder} mixes file types ({by_kind})",
            fix="keep files of one type in a dataset folder (json and jsonl count as one), or "
            "list the files in `file_name`",
        )
    return files


def iter_file_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(index, record) of one file. An empty file is an error, not zero records."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"cannot read {path}: unsupported file type `{path.suffix}`",
            fix=f"use one of: {', '.join(SUPPORTED_SUFFIXES)}",
        )
    reader = {
        "json": _json_records,
        "csv": _csv_records,
        "parquet": _parquet_records,
        "arrow": _arrow_records,
        "text": _text_records,
    }[kind]
    count = 0
    for count, record in enumerate(reader(path), start=1):
        yield count - 1, record
    if count == 0:
        raise UserError(f"{path} holds no records", fix="add records or remove the dataset")


def iter_records(paths: list[Path]) -> Iterator[RawRecord]:
    for path in expand_paths(paths):
        for index, record in iter_file_records(path):
            yield str(path), index, record


def read_records(path: Path) -> list[Any]:
    """All records of one file or folder (as earlier versions: a list)."""
    return [record for _, _, record in iter_records([path])]


def _json_records(path: Path) -> Iterator[Any]:
    if path.suffix.lower() == ".jsonl":
        yield from _json_lines(path)
        return
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if _first_line_is_object(text):
            yield from _json_lines(path)  # JSON lines saved as .json, which datasets accepts
            return
        raise UserError(
            f"not valid JSON ({exc.msg})",
            where=f"{path}:{exc.lineno}:{exc.colno}",
            fix="repair the JSON at that line",
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(
            f"must hold a JSON list of records, not a {type(data).__name__}",
            where=str(path),
            fix="wrap the records in [...]",
        )
    yield from data


def _first_line_is_object(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _json_lines(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # blank lines separate nothing; they are not records
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"not valid JSON ({exc.msg})",
                    where=f"{path}:{lineno}:{exc.colno}",
                    fix="each line must be one complete JSON object; repair that line",
                ) from None


def _csv_records(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            if None in row:  # more cells than the header has columns
                raise UserError(
                    f"a row has more cells than the header has columns ({len(reader.fieldnames)})",
                    where=f"{path}:{reader.line_num}",
                    fix="quote cells that contain commas, or add the missing header columns",
                )
            yield row


def _parquet_records(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(
            f"{path} is not a readable parquet file ({exc})",
            fix="re-export the file, or check that it was copied completely",
        ) from None
    for batch in reader.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _arrow_records(path: Path) -> Iterator[dict]:
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            batches = iter(pa.ipc.open_stream(source))  # datasets writes the stream format
    except Exception as exc:
        raise UserError(
            f"{path} is not a readable arrow file ({exc})",
            fix="write it with pyarrow or datasets' save_to_disk, or use parquet/jsonl",
        ) from None
    for batch in batches:
        yield from batch.to_pylist()


def _text_records(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                yield {"text": line.rstrip("\r\n")}
