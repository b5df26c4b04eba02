"""dataset_info.json (LLaMA-Factory's dataset registry) -> DatasetSpec."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

FORMATTINGS = ("alpaca", "sharegpt")
DEFAULT_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
}
DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class DatasetSpec:
    name: str
    path: Path
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def load_registry(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise UserError(
            f"no dataset_info.json in {dataset_dir}",
            fix="set `dataset_dir` to the folder that holds dataset_info.json "
            "(relative paths in a YAML file are read from the YAML file's folder)",
        )
    try:
        registry = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{info_path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            fix="repair the JSON at that line",
        ) from None
    if not isinstance(registry, dict):
        raise UserError(
            f"{info_path} must hold a JSON object mapping dataset names to their descriptions",
            fix='write it as {"my_data": {"file_name": "my_data.json"}}',
        )
    return registry


def resolve_datasets(names: list[str], dataset_dir: str | Path) -> list[DatasetSpec]:
    dataset_dir = Path(dataset_dir)
    registry = load_registry(dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    specs = []
    for name in names:
        if name not in registry:
            close = difflib.get_close_matches(name, list(registry), n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            known = ", ".join(sorted(registry)) or "(none)"
            raise UserError(
                f"dataset `{name}` is not in {info_path}",
                fix=f"{hint}use one of: {known}; or add an entry for it there",
            )
        specs.append(_spec_from_entry(name, registry[name], dataset_dir, info_path))
    return specs


def _spec_from_entry(
    name: str, entry: dict[str, Any], dataset_dir: Path, info_path: Path
) -> DatasetSpec:
    where = f"{info_path}: dataset `{name}`"
    if not isinstance(entry, dict):
        raise UserError("must be an object", where=where, fix='write {"file_name": "data.json"}')
    if "file_name" not in entry:
        if "hf_hub_url" in entry or "ms_hub_url" in entry or "script_url" in entry:
            raise UserError(
                "hub and script datasets are not supported by this version",
                where=where,
                fix="download the data and point `file_name` at the local file",
            )
        raise UserError("has no `file_name`", where=where, fix="add the data file's name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise UserError(
            f"unknown formatting `{formatting}`",
            where=where,
            fix=f"use one of: {', '.join(FORMATTINGS)}",
        )
    for unsupported in ("ranking", "kto_tag"):
        if entry.get(unsupported) or entry.get("columns", {}).get(unsupported):
            raise UserError(
                f"`{unsupported}` (preference/KTO data) is not supported by this version",
                where=where,
                fix="use an SFT dataset here",
            )
    path = dataset_dir / entry["file_name"]
    if not path.exists():
        raise UserError(
            f"data file {path} does not exist",
            where=where,
            fix="check `file_name` (it is relative to dataset_dir) or create the file",
        )
    columns = {**DEFAULT_COLUMNS[formatting], **(entry.get("columns") or {})}
    tags = {**DEFAULT_TAGS, **(entry.get("tags") or {})}
    return DatasetSpec(name=name, path=path, formatting=formatting, columns=columns, tags=tags)
