"""Pairs -> alpaca.json / sharegpt.json / eval.json and dataset_info.json in output_dir.

Written as a stream (one record at a time into a temporary file, renamed when complete), so
10,000 chunks never sit in memory. Records keep their provenance in plain columns (`document`,
`chunk_id`, `char_start`, `char_end`); dataset_info.json maps only the training columns, so
LLaMA-Factory and lmforge read the files as they are and ignore the provenance.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INFO_FILE = "dataset_info.json"
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_COLUMNS = {"messages": "conversations"}


@dataclass
class Pair:
    """One training record: the turns (user, assistant, ...), an optional system prompt, and
    where it came from."""

    turns: list[tuple[str, str]]  # (user, assistant) in order
    provenance: dict[str, Any]
    system: str | None = None


def alpaca_record(pair: Pair) -> dict[str, Any]:
    *history, (question, answer) = pair.turns
    record: dict[str, Any] = {"instruction": question, "input": "", "output": answer}
    if history:
        record["history"] = [list(turn) for turn in history]
    if pair.system:
        record["system"] = pair.system
    return {**record, **pair.provenance}


def sharegpt_record(pair: Pair) -> dict[str, Any]:
    conversation = []
    for question, answer in pair.turns:
        conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    record: dict[str, Any] = {"conversations": conversation}
    if pair.system:
        record["system"] = pair.system
    return {**record, **pair.provenance}


class _ArrayFile:
    """A JSON array written one element at a time to `path`.tmp, renamed to `path` at close."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.handle = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.handle.write("[")
        self.count = 0

    def add(self, record: dict) -> None:
        self.handle.write(
            ("\n" if self.count == 0 else ",\n") + json.dumps(record, ensure_ascii=False)
        )
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n]\n" if self.count else "]\n")
        self.handle.close()
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class ExportCounts:
    train: int = 0
    eval: int = 0
    files: list[str] = field(default_factory=list)
    dataset_names: list[str] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)  # dataset name -> records written


class DatasetWriter:
    """`format`: alpaca | sharegpt | both; `with_eval`: write eval.json (in alpaca unless the
    format is sharegpt only). `prefix` names the datasets: prefix_alpaca, prefix_eval, ..."""

    def __init__(self, folder: str | Path, format: str, with_eval: bool, prefix: str = "synth"):
        self.folder = Path(folder)
        self.format = format
        self.prefix = prefix
        self.multi_turn = False
        self.has_system = False
        self.files: dict[str, _ArrayFile] = {}
        if format in ("alpaca", "both"):
            self.files["alpaca"] = _ArrayFile(self.folder / "alpaca.json")
        if format in ("sharegpt", "both"):
            self.files["sharegpt"] = _ArrayFile(self.folder / "sharegpt.json")
        self.eval_format = "alpaca" if format in ("alpaca", "both") else "sharegpt"
        self.eval_file = _ArrayFile(self.folder / "eval.json") if with_eval else None
        self.counts = ExportCounts()

    def add(self, pair: Pair, *, eval: bool = False) -> None:
        self.multi_turn |= len(pair.turns) > 1
        self.has_system |= bool(pair.system)
        if eval and self.eval_file is not None:
            self.eval_file.add(_RECORD[self.eval_format](pair))
            self.counts.eval += 1
            return
        for kind, handle in self.files.items():
            handle.add(_RECORD[kind](pair))
        self.counts.train += 1

    def close(self) -> ExportCounts:
        info_path = self.folder / INFO_FILE
        info = {}
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except ValueError:
                info = {}
        for kind, handle in self.files.items():
            handle.close()
            name = f"{self.prefix}_{kind}"
            info[name] = self._entry(kind, handle.path.name)
            self.counts.files.append(handle.path.name)
            self.counts.dataset_names.append(name)
            self.counts.records[name] = handle.count
        if self.eval_file is not None:
            self.eval_file.close()
            name = f"{self.prefix}_eval"
            info[name] = self._entry(self.eval_format, self.eval_file.path.name)
            self.counts.files.append(self.eval_file.path.name)
            self.counts.dataset_names.append(name)
            self.counts.records[name] = self.eval_file.count
        tmp = info_path.with_name(INFO_FILE + ".tmp")
        tmp.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, info_path)
        return self.counts

    def abandon(self) -> None:
        for handle in [*self.files.values(), self.eval_file]:
            if handle is not None:
                handle.abandon()

    def _entry(self, kind: str, file_name: str) -> dict[str, Any]:
        columns = dict(ALPACA_COLUMNS if kind == "alpaca" else SHAREGPT_COLUMNS)
        if kind == "alpaca" and self.multi_turn:
            columns["history"] = "history"
        if self.has_system:
            columns["system"] = "system"
        return {"file_name": file_name, "formatting": kind, "columns": columns}


_RECORD = {"alpaca": alpaca_record, "sharegpt": sharegpt_record}
