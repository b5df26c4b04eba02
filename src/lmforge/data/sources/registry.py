"""Dataset descriptions -> DatasetSpec: LLaMA-Factory's dataset_info.json, and inline entries.

An entry reads exactly as in LLaMA-Factory's data/README: `file_name` or `hf_hub_url` /
`ms_hub_url`, `formatting`, `ranking`, `subset`, `split`, `folder`, `num_samples`, `columns`,
`tags`. As there, once `columns` is given only the columns it lists are read (so a dataset whose
entry maps `prompt` and `response` ignores its `input` column). Our additions: `formatting:
openai`, `file_name` as a list, folder or glob, `revision`, and `placeholders` (values for
`{{name}}`-style placeholders such as those in LLaMA-Factory's identity.json).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.suggest import closest, did_you_mean

FORMATTINGS = ("alpaca", "sharegpt", "openai")
COLUMN_KEYS = tuple(
    "prompt query response history messages system tools chosen rejected kto_tag".split()
)
MEDIA_COLUMNS = ("images", "videos", "audios")
TAG_KEYS = tuple(
    "role_tag content_tag user_tag assistant_tag observation_tag function_tag system_tag".split()
)
SOURCE_KEYS = tuple(
    "file_name path hf_hub_url ms_hub_url om_hub_url script_url cloud_file_name".split()
)
ENTRY_KEYS = SOURCE_KEYS + tuple(
    "formatting ranking subset split folder revision num_samples columns tags placeholders".split()
)

# LLaMA-Factory's DatasetAttr defaults, used when an entry has no `columns` at all.
DEFAULT_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
    "openai": {"messages": "messages", "tools": "tools"},
}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}
INFO_FILE = "dataset_info.json"


@dataclass
class DatasetSpec:
    """Where one dataset comes from and how its records map to Samples."""

    name: str
    paths: list[Path] = field(default_factory=list)  # files, folders or globs (load_from file)
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)  # our key -> the data's column
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False
    load_from: str = "file"  # file | hf_hub | ms_hub
    hub_id: str | None = None
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    revision: str | None = None
    num_samples: int | None = None
    placeholders: dict[str, str] = field(default_factory=dict)
    declared_in: str = ""  # where the entry is written, for errors about the entry itself

    @property
    def path(self) -> Path | None:
        return self.paths[0] if self.paths else None

    @property
    def kto(self) -> bool:
        return "kto_tag" in self.columns

    @property
    def label(self) -> str:
        """How records of this dataset are named in errors when no file is at hand."""
        if self.load_from == "file":
            return str(self.path)
        subset = f"/{self.subset}" if self.subset else ""
        return f"{self.load_from.replace('_hub', '')}:{self.hub_id}{subset}[{self.split}]"


def load_registry(dataset_dir: str | Path) -> dict[str, dict[str, Any]]:
    info_path = Path(dataset_dir) / INFO_FILE
    if not info_path.is_file():
        raise UserError(
            f"no {INFO_FILE} in {dataset_dir}",
            fix=f"set `dataset_dir` to the folder that holds {INFO_FILE} (a relative path is read "
            "from the working directory, else from the YAML file's folder), or declare the dataset inline "
            "under `datasets:` in the YAML file",
        )
    text = info_path.read_text(encoding="utf-8")
    try:
        registry = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"not valid JSON ({exc.msg})",
            where=f"{info_path}:{exc.lineno}:{exc.colno}",
            fix="repair the JSON at that line",
        ) from None
    if not isinstance(registry, dict):
        raise UserError(
            "must hold a JSON object mapping dataset names to their descriptions",
            where=str(info_path),
            fix='write it as {"my_data": {"file_name": "my_data.json"}}',
        )
    return registry


def resolve_datasets(
    names: list[str],
    dataset_dir: str | Path,
    inline: dict[str, Any] | None = None,
    inline_base_dir: str | Path | None = None,
) -> list[DatasetSpec]:
    """Specs for `names`, from inline entries first, then dataset_info.json in dataset_dir.

    An inline entry without a source (no file_name/path/hub url) extends the dataset_info.json
    entry of the same name, e.g. `identity: {placeholders: {name: Forge}}`.
    """
    inline = inline or {}
    dataset_dir = str(dataset_dir)
    base = Path(inline_base_dir) if inline_base_dir is not None else Path(dataset_dir)
    online = dataset_dir.upper() == "ONLINE"
    needs_registry = [n for n in names if not _has_source(inline.get(n)) and not online]
    registry = load_registry(dataset_dir) if needs_registry else {}
    info_path = Path(dataset_dir) / INFO_FILE
    specs = []
    for name in names:
        if _has_source(inline.get(name)):
            specs.append(_inline_spec(name, inline[name], base))
        elif online:  # LLaMA-Factory's `dataset_dir: ONLINE`: names are hub dataset ids
            entry = {"hf_hub_url": name, **(inline.get(name) or {})}
            specs.append(spec_from_entry(name, entry, base, f"dataset `{name}` (ONLINE)"))
        elif name in registry:
            entry = registry[name]
            if name in inline:
                entry = _merge(entry, inline[name], name)
            specs.append(spec_from_entry(name, entry, Path(dataset_dir), _where(info_path, name)))
        else:
            raise _unknown_dataset(name, info_path, registry, inline)
    return specs


def inline_dataset_specs(mapping: dict[str, Any], base_dir: str | Path) -> list[DatasetSpec]:
    """The `datasets:` mapping of a training YAML -> specs, in the order written.

    Each value is a dataset_info.json entry; `path` may stand for `file_name`; relative paths
    are read from base_dir (config loading has already resolved them as docs/config.md says).
    """
    if not isinstance(mapping, dict):
        raise UserError(
            f"`datasets` must be a mapping of names to descriptions, not {type(mapping).__name__}",
            fix="write `datasets: {my_data: {path: data.jsonl, formatting: sharegpt}}`",
        )
    return [_inline_spec(name, entry, Path(base_dir)) for name, entry in mapping.items()]


def spec_from_entry(name: str, entry: Any, base_dir: Path, where: str) -> DatasetSpec:
    if not isinstance(entry, dict):
        raise UserError(
            f"must be an object, not {type(entry).__name__}",
            where=where,
            fix='write {"file_name": "data.json"}',
        )
    _check_keys(entry, ENTRY_KEYS, where, "key")
    formatting = entry.get("formatting") or "alpaca"
    if formatting not in FORMATTINGS:
        raise UserError(
            f"unknown formatting `{formatting}`",
            where=where,
            fix=f"use one of: {', '.join(FORMATTINGS)}" + _did_you_mean(formatting, FORMATTINGS),
        )
    spec = DatasetSpec(name=name, formatting=formatting, declared_in=where)
    spec.ranking = _boolean(entry.get("ranking", False), "ranking", where)
    spec.columns = _columns(entry, formatting, where)
    spec.tags = _tags(entry, formatting, where)
    spec.placeholders = _placeholders(entry.get("placeholders"), where)
    spec.subset = _optional_str(entry, "subset", where)
    spec.split = _optional_str(entry, "split", where) or "train"
    spec.folder = _optional_str(entry, "folder", where)
    spec.revision = _optional_str(entry, "revision", where)
    spec.num_samples = _num_samples(entry.get("num_samples"), where)
    _set_source(spec, entry, base_dir, where)
    return spec


def _set_source(spec: DatasetSpec, entry: dict, base_dir: Path, where: str) -> None:
    use_ms = os.environ.get("USE_MODELSCOPE_HUB", "").lower() in ("1", "true", "y", "yes")
    if "ms_hub_url" in entry and (use_ms or "hf_hub_url" not in entry):
        spec.load_from, spec.hub_id = "ms_hub", str(entry["ms_hub_url"])
    elif "hf_hub_url" in entry:
        spec.load_from, spec.hub_id = "hf_hub", str(entry["hf_hub_url"])
    elif "om_hub_url" in entry:
        raise UserError(
            "`om_hub_url` (Modelers/openMind hub) is not supported",
            where=where,
            fix="use `hf_hub_url` or `ms_hub_url`, or download the data and set `file_name`",
        )
    elif "script_url" in entry:
        raise UserError(
            "`script_url` (a dataset loading script) is not supported: datasets 4+ no longer "
            "runs loading scripts",
            where=where,
            fix="run the script once to produce a json/jsonl/parquet file and set `file_name`",
        )
    elif "cloud_file_name" in entry:
        raise UserError(
            "`cloud_file_name` (s3/gcs) is not supported",
            where=where,
            fix="download the file and set `file_name` to it",
        )
    else:
        names = entry.get("file_name", entry.get("path"))
        if names is None:
            raise UserError(
                "has no `file_name`",
                where=where,
                fix="add the data file's name (relative to dataset_dir), or `hf_hub_url`",
            )
        spec.paths = [_local_path(n, base_dir, where) for n in _as_list(names, "file_name", where)]


def _local_path(name: str, base_dir: Path, where: str) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if glob.has_magic(str(path)):
        if not glob.glob(str(path), recursive=True):
            raise UserError(
                f"no file matches {path}",
                where=where,
                fix="check the pattern in `file_name` (it is relative to dataset_dir)",
            )
    elif not path.exists():
        raise UserError(
            f"data file {path} does not exist",
            where=where,
            fix="check `file_name` (it is relative to dataset_dir) or create the file",
        )
    return path


def _columns(entry: dict, formatting: str, where: str) -> dict[str, str]:
    given = entry.get("columns")
    if given is None:
        return dict(DEFAULT_COLUMNS[formatting])
    if not isinstance(given, dict):
        raise UserError(
            "`columns` must be an object", where=where, fix='write "columns": {"prompt": "q"}'
        )
    media = [key for key in MEDIA_COLUMNS if given.get(key)]
    if media:
        raise UserError(
            f"multimodal columns ({', '.join(media)}) are not supported by this version",
            where=where,
            fix="use a text-only dataset, or remove those columns",
        )
    given = {k: v for k, v in given.items() if k not in MEDIA_COLUMNS}
    _check_keys(given, COLUMN_KEYS, f"{where}: columns", "column key")
    columns = {key: str(value) for key, value in given.items() if value not in (None, "")}
    if formatting != "alpaca":  # a conversation needs its messages column; default it as LF
        columns.setdefault("messages", DEFAULT_COLUMNS[formatting]["messages"])
    return columns


def _tags(entry: dict, formatting: str, where: str) -> dict[str, str]:
    defaults = OPENAI_TAGS if formatting == "openai" else SHAREGPT_TAGS
    given = entry.get("tags") or {}
    if not isinstance(given, dict):
        raise UserError("`tags` must be an object", where=where, fix='write "tags": {...}')
    _check_keys(given, TAG_KEYS, f"{where}: tags", "tag")
    # Tags left out keep their defaults (LLaMA-Factory would unset them and drop such records).
    return {**defaults, **{k: str(v) for k, v in given.items() if v not in (None, "")}}


def _placeholders(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, (str, int, float)) for v in value.values()
    ):
        raise UserError(
            "`placeholders` must map placeholder names to text",
            where=where,
            fix='write "placeholders": {"name": "Forge", "author": "Forge Labs"}',
        )
    return {str(k): str(v) for k, v in value.items()}


def _inline_spec(name: str, entry: Any, base_dir: Path) -> DatasetSpec:
    where = f"config `datasets.{name}`"
    if isinstance(entry, dict) and not _has_source(entry):
        raise UserError(
            "has no `path` (or `file_name`, `hf_hub_url`, `ms_hub_url`), and no dataset of "
            "that name is in dataset_info.json to extend",
            where=where,
            fix="add `path: my_data.jsonl` (relative to the YAML file's folder)",
        )
    return spec_from_entry(name, entry, base_dir, where)


def _merge(entry: Any, extra: Any, name: str) -> Any:
    if not isinstance(extra, dict):
        raise UserError(
            f"must be a mapping, not {type(extra).__name__}",
            where=f"config `datasets.{name}`",
            fix="write `placeholders: {name: Forge}` or other dataset_info.json keys under it",
        )
    if not isinstance(entry, dict):
        return entry  # spec_from_entry says what is wrong with it
    return {**entry, **extra}  # the YAML's keys win, whole values (columns replace columns)


def _has_source(entry: Any) -> bool:
    return isinstance(entry, dict) and any(key in entry for key in SOURCE_KEYS)


def _unknown_dataset(name: str, info_path: Path, registry: dict, inline: dict) -> UserError:
    known = sorted(set(registry) | set(inline))
    hint = did_you_mean(name, known)
    listed = ", ".join(known) or "(none)"
    return UserError(
        f"dataset `{name}` is not in {info_path}",
        fix=f"{hint}use one of: {listed}; or add an entry for it there, or declare it under "
        "`datasets:` in the YAML file",
    )


def _where(info_path: Path, name: str) -> str:
    return f"{info_path}: dataset `{name}`"


def _check_keys(given: dict, known: tuple[str, ...], where: str, what: str) -> None:
    for key in given:
        if key in known:
            continue
        if what == "key":  # LLaMA-Factory ignores unknown entry keys; we only catch likely typos
            if closest(str(key), known, cutoff=0.8) is None:
                continue
        raise UserError(
            f"unknown {what} `{key}`",
            where=where,
            fix=f"use one of: {', '.join(known)}" + _did_you_mean(str(key), known),
        )


def _did_you_mean(value: str, known: tuple[str, ...]) -> str:
    hint = did_you_mean(str(value), known).strip()
    return f" ({hint})" if hint else ""


def _as_list(value: Any, key: str, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise UserError(
            f"`{key}` must be a file name or a list of file names",
            where=where,
            fix=f'write "{key}": "data.json"',
        )
    return values


def _boolean(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise UserError(f"`{key}` must be true or false", where=where, fix=f'write "{key}": true')


def _optional_str(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise UserError(f"`{key}` must be a string", where=where, fix=f'write "{key}": "..."')


def _num_samples(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(
            "`num_samples` must be a positive whole number", where=where, fix='"num_samples": 1000'
        )
    return value
