"""Data files -> records (dicts), lazily, with errors that name the file and line.

Supported: .json (a list, one object, or JSON lines), .jsonl, .csv, .parquet, .arrow (IPC file
or stream, as `datasets.save_to_disk` writes), .txt (one record `{"text": line}` per non-blank
line, for pre-training). A folder is read as all its files of one type, a glob as all matches,
both in sorted order. JSON is parsed here rather than by `datasets` so a syntax error is
reported as file:line:column.

Text files are UTF-8, or UTF-16/UTF-32 told by their byte order mark (or, without one, by the
NUL bytes around ASCII, as JSON's RFC 8259 does); a byte that does not decode is an error naming
the file, line and byte offset. A line of JSON lines (or a CSV row) that is not a record is
yielded as a `MalformedLine` and reading goes on, so every bad line is reported as a problem of
its record (and `skip_invalid` can skip it); `read_records` raises it instead.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.text_encoding import bom_encoding

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


@dataclass(frozen=True)
class MalformedLine:
    """A line that should have been a record but cannot be read as one (1-based `line`)."""

    line: int
    reason: str
    fix: str

    def error(self, source: str) -> UserError:
        return UserError(self.reason, where=f"{source}:{self.line}", fix=self.fix)


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
    """All records of one file or folder (as earlier versions: a list); a malformed line is
    raised as an error."""
    records = []
    for source, _, record in iter_records([path]):
        if isinstance(record, MalformedLine):
            raise record.error(source)
        records.append(record)
    return records


# ---- text: encoding, lines ------------------------------------------------------------------

_CHUNK = 1 << 20


def detect_encoding(head: bytes) -> tuple[str, int]:
    """(codec, length of the byte order mark) from the first 4 bytes of a text file."""
    declared = bom_encoding(head)
    if declared:
        return declared
    if len(head) >= 2 and b"\x00" in head[:4]:  # ASCII in UTF-16/32 without a BOM
        return json.detect_encoding(head), 0
    return "utf-8", 0


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its line end) of a text file, decoded as it is encoded,
    a chunk at a time; a byte that does not decode is a UserError naming line and offset."""
    with path.open("rb") as handle:
        codec, offset = detect_encoding(handle.read(4))
        handle.seek(offset)
        decoder = codecs.getincrementaldecoder(codec)()
        lineno, pieces = 1, []  # pieces: the line read so far (a long line spans chunks)
        while chunk := handle.read(_CHUNK):
            pending = decoder.getstate()[0]  # bytes of a character split across chunks
            try:
                lines = decoder.decode(chunk).split("\n")
            except UnicodeDecodeError as exc:
                start = offset - len(pending)
                raise _decode_error(path, codec, pending + chunk, exc, start, lineno) from None
            offset += len(chunk)
            for line in lines[:-1]:
                yield lineno, "".join(pieces) + line + "\n"
                lineno, pieces = lineno + 1, []
            pieces.append(lines[-1])
        try:
            pieces.append(decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:  # the file ends inside a character
            pending = decoder.getstate()[0]
            start = offset - len(pending)
            raise _decode_error(path, codec, pending, exc, start, lineno) from None
        if "".join(pieces):
            yield lineno, "".join(pieces)


def read_text(path: Path) -> str:
    return "".join(line for _, line in text_lines(path))


def _decode_error(path, codec, data, exc, start, lineno) -> UserError:
    """Where the undecodable byte is: the line (`lineno` plus the line ends decoded before it
    in `data`, which starts at byte offset `start`) and the byte offset."""
    line = lineno + data[: exc.start].decode(codec, errors="replace").count("\n")
    bad = " ".join(f"0x{byte:02x}" for byte in data[exc.start : exc.end])
    name = codec.upper().replace("-LE", " little-endian").replace("-BE", " big-endian")
    fix = (
        "save the file as UTF-8 (from Latin-1/Windows-1252: `iconv -f cp1252 -t utf-8 IN > OUT`); "
        "UTF-16 and UTF-32 files are read when they start with a byte order mark (BOM)"
        if codec == "utf-8"
        else "re-save the file as UTF-8 (the bytes there are not valid " + name + ")"
    )
    return UserError(
        f"not valid {name}: {bad} at byte offset {start + exc.start} ({exc.reason})",
        where=f"{path}:{line}",
        fix=fix,
    )


def _json_records(path: Path) -> Iterator[Any]:
    if path.suffix.lower() == ".jsonl":
        yield from _json_lines(path)
        return
    text = read_text(path)
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
    for lineno, line in text_lines(path):
        if not line.strip():
            continue  # blank lines separate nothing; they are not records
        try:
            yield json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield MalformedLine(
                lineno,
                f"not valid JSON ({exc.msg} at column {exc.colno})",
                "each line must be one complete JSON object; repair that line",
            )


def _csv_records(path: Path) -> Iterator[dict[str, str] | MalformedLine]:
    reader = csv.DictReader(line for _, line in text_lines(path))
    for row in reader:
        if None in row:  # more cells than the header has columns
            yield MalformedLine(
                reader.line_num,
                f"a row has more cells than the header has columns ({len(reader.fieldnames)})",
                "quote cells that contain commas, or add the missing header columns",
            )
        else:
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
    for _, line in text_lines(path):
        if line.strip():
            yield {"text": line.rstrip("\r\n")}
