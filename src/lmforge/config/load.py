"""YAML file + command-line overrides -> typed Config.

One path for every entry point: a YAML file, `key=value` overrides and `--key value` flags all
become one flat mapping, which is checked key by key (unknown keys get a "did you mean", wrong
types name the key, value and expected type) before anything heavy happens.
"""

from __future__ import annotations

import functools
import math
import reprlib
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from lmforge.config.schema import SECTIONS, Bounds, Config, key_index
from lmforge.config.yaml_file import parse_yaml, read_yaml_mapping
from lmforge.errors import UserError
from lmforge.suggest import did_you_mean

# Keys whose relative values name something that must already exist: resolved against the YAML
# file's folder when it exists there, else left for the working directory (LLaMA-Factory's rule).
_INPUT_PATH_KEYS = {"model_name_or_path", "adapter_name_or_path", "dataset_dir", "adapters"}
_PATH_KEYWORDS = {"auto", "true", "false", "latest", "none"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (optional) and apply `key=value` / `--key value` overrides."""
    flat: dict[str, Any] = {}
    origins: dict[str, Path | None] = {}
    base_dir: Path | None = None
    if path is not None:
        path = Path(path)
        flat = read_yaml_mapping(path)
        base_dir = path.resolve().parent
        origins = {key: base_dir for key in flat}
    for key, value in parse_overrides(overrides or []).items():
        flat[key] = value
        origins[key] = None  # command-line paths are relative to the working directory
    config = build_config(flat, origins, where=str(path) if path else "command line")
    config.source = str(path) if path else None
    return config


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`key=value`, `--key value`, `--key=value` and a bare `--flag` (true) -> mapping."""
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, raw = body, args[i + 1]
                i += 1
            else:
                key, raw = body, "true"
            key = key.replace("-", "_")
        elif "=" in arg:
            key, raw = arg.split("=", 1)
        else:
            raise UserError(
                f"cannot read the argument {arg!r}",
                fix="give overrides as key=value (for example learning_rate=1e-4) or --key value",
            )
        parsed[key.strip()] = _parse_scalar(raw)
        i += 1
    return parsed


def _parse_scalar(raw: str) -> Any:
    # YAML rules, so `null`, `true` and numbers mean the same as in the file.
    try:
        return parse_yaml(raw, "command line") if raw.strip() else None
    except UserError:
        return raw


def build_config(flat: dict[str, Any], origins: dict[str, Path | None], *, where: str) -> Config:
    config = Config()
    index = key_index()
    for key, value in flat.items():
        source = where if origins.get(key) is not None else "command line"
        if key in index:
            section_name, f = index[key]
            hint = _type_hints(SECTIONS[section_name])[f.name]
            given, value = value, coerce(key, value, hint, f.metadata.get("choices"), where=source)
            bounds = f.metadata.get("bounds")
            check_bounds(key, value, bounds, f.default, where=source, given=given)
            if f.metadata.get("path") and value is not None:
                value = _resolve_path(key, value, origins.get(key))
            setattr(getattr(config, section_name), f.name, value)
        elif key in _training_arguments_keys():
            config.passthrough[key] = value
        else:
            raise unknown_key_error(key, where=source)
    config.given = frozenset(flat)
    return config


def unknown_key_error(key: str, *, where: str) -> UserError:
    known = list(key_index()) + sorted(_training_arguments_keys())
    hint = did_you_mean(key, known).strip()
    fix = f"{hint} (docs/config.md lists every key)" if hint else "remove it, or see docs/config.md"
    return UserError(f"unknown key `{key}`", where=where, fix=fix)


def check_bounds(
    key: str, value: Any, bounds: Bounds | None, default: Any, *, where: str, given: Any = None
) -> None:
    """A number outside the key's allowed values: the key, the value (`given`: as written),
    where it was set and what is allowed, before anything is loaded."""
    if bounds is None or value is None or bounds.allows(value):
        return
    allowed = bounds.describe()
    if allowed.startswith(("a ", "any ")):
        fix = f"give `{key}` {allowed}"
    else:
        fix = f"set `{key}` to a value that is {allowed}"
    if default is not None and not isinstance(default, (list, dict)):
        fix += f" (the default is {default})"
    raise UserError(
        f"`{key}: {_show(value if given is None else given)}` is out of range: {key} must be "
        f"{allowed}",
        where=where,
        fix=fix,
    )


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 4, 4, 2


def _show(value: Any) -> str:
    """A value for a message, shortened (a value can be a huge structure)."""
    return _REPR.repr(value)


def coerce(key: str, value: Any, hint: Any, choices: tuple[str, ...] | None, *, where: str) -> Any:
    """Turn a YAML/command-line value into the field's type, or say exactly what is wrong."""
    optional, base = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise UserError(
            f"`{key}` cannot be null", where=where, fix=f"give it a {base.__name__} value"
        )
    try:
        result = _convert(value, base)
    except (TypeError, ValueError):
        raise UserError(
            f"`{key}: {_show(value)}` is not a valid {_type_name(base)}",
            where=where,
            fix=f"give `{key}` a {_type_name(base)}"
            + (f" (for example {_example(base)})" if _example(base) else ""),
        ) from None
    if isinstance(result, float) and not math.isfinite(result):
        raise UserError(
            f"`{key}: {_show(value)}` is not a finite number",
            where=where,
            fix=f"give `{key}` a number (for example {_example(base)})",
        )
    if choices and result not in choices:
        raise UserError(
            f"`{key}: {result}` is not one of {', '.join(choices)}",
            where=where,
            fix=f"set `{key}` to one of: {', '.join(choices)}",
        )
    return result


def _convert(value: Any, base: type) -> Any:
    if typing.get_origin(base) is dict:
        if typing.get_args(base)[1] is dict:
            return _convert_nested_mapping(value)
        return _convert_mapping(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError
    if base is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            number = float(value)  # accepts "1e3"
            if number.is_integer():
                return int(number)
        raise ValueError
    if base is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)  # PyYAML reads 5e-5 as a string; here it becomes a float
        raise ValueError
    if base is str:
        if isinstance(value, bool):
            return str(value).lower()  # `resume_from_checkpoint: false`
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return ",".join(value)  # `dataset: [a, b]` means `dataset: a,b`
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    raise TypeError(f"unsupported field type {base}")


def _convert_mapping(value: Any) -> dict[str, str]:
    """`{name: value, ...}` from YAML, or `name=value,name=value` from the command line."""
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict) or not value:
        raise ValueError
    if not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        raise ValueError
    return {str(k): str(v) for k, v in value.items()}


def _convert_nested_mapping(value: Any) -> dict[str, dict]:
    """`datasets: {name: {path: ..., formatting: ...}}`: names mapped to dataset entries."""
    if not isinstance(value, dict) or not value:
        raise ValueError
    if not all(isinstance(v, dict) for v in value.values()):
        raise ValueError
    return {str(k): dict(v) for k, v in value.items()}


def _unwrap_optional(hint: Any) -> tuple[bool, type]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, hint


def _type_name(base: type) -> str:
    if typing.get_origin(base) is dict:
        if typing.get_args(base)[1] is dict:
            return "mapping of dataset names to entries"
        return "mapping of names to values"
    return {bool: "boolean (true/false)", int: "whole number", float: "number", str: "string"}[base]


def _example(base: type) -> str:
    if typing.get_origin(base) is dict:
        if typing.get_args(base)[1] is dict:
            return "{chats: {path: data/chats.jsonl, formatting: openai}}"
        return "{medical: saves/medical, legal: saves/legal}"
    return {bool: "true", int: "8", float: "5e-5", str: ""}[base]


def _resolve_path(key: str, value: Any, base_dir: Path | None) -> Any:
    if base_dir is None:
        return value
    if key == "datasets":  # inline dataset entries: their files sit next to the YAML file
        return {name: _resolve_dataset_entry(entry, base_dir) for name, entry in value.items()}
    if isinstance(value, dict):
        return {name: _resolve_one(key, path, base_dir) for name, path in value.items()}
    parts = [p.strip() for p in value.split(",")] if key == "adapter_name_or_path" else [value]
    return ",".join(_resolve_one(key, p, base_dir) for p in parts)


def _resolve_dataset_entry(entry: dict, base_dir: Path) -> dict:
    entry = dict(entry)
    for field_name in ("path", "file_name"):
        value = entry.get(field_name)
        if isinstance(value, str):
            entry[field_name] = _join(value, base_dir)
        elif isinstance(value, list):
            entry[field_name] = [_join(v, base_dir) if isinstance(v, str) else v for v in value]
    return entry


def _join(value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def _resolve_one(key: str, value: str, base_dir: Path) -> str:
    if value.lower() in _PATH_KEYWORDS:
        return value  # `resume_from_checkpoint: auto` is a word, not a file name
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base_dir / path
    if key not in _INPUT_PATH_KEYS:
        return str(candidate)  # outputs: always next to the YAML file
    if value.startswith(("./", "../")) or candidate.exists():
        return str(candidate.resolve())
    if key == "dataset_dir" and not path.exists():
        return str(candidate)  # so the error names the folder next to the YAML file
    return value  # a hub id, catalogue name, or a path relative to the working directory


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _training_arguments_keys() -> frozenset[str]:
    """transformers.TrainingArguments keys we pass through unchanged (loaded only when needed)."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in fields(TrainingArguments) if f.init)
