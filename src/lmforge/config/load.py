"""YAML file + command-line overrides -> typed Config.

One path for every entry point: a YAML file, `key=value` overrides and `--key value` flags (or
the flags alone, as `llamafactory-cli train --stage sft ...` takes them) all become one flat
mapping, which is checked key by key before anything heavy happens: every unknown key is named
in one error (with a "did you mean" only for a typo), wrong types name the key, value and
expected type, and LLaMA-Factory's keys that do nothing here are accepted and kept with the
reason (`Config.not_used`, listed in the plan).

Relative paths follow LLaMA-Factory: they are read from the working directory. An input (a
model, adapter, dataset folder, ...) that exists only next to the YAML file is read from there;
outputs (output_dir, logging_dir, swanlab_logdir) always go under the working directory, so a
training run and the inference YAML that names its output (`adapter_name_or_path: saves/...`)
meet when both are run from the same folder.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from lmforge.config.passthrough import training_argument_value
from lmforge.config.schema import SECTIONS, Bounds, Config, ResolvedPath, key_index
from lmforge.config.yaml_file import parse_yaml, read_yaml_mapping
from lmforge.errors import UserError
from lmforge.suggest import closest_key

COMMAND_LINE = "command line"
# Outputs always go under the working directory; every other path key is an input.
_OUTPUT_PATH_KEYS = {"output_dir", "logging_dir", "swanlab_logdir", "export_dir", "save_dir"}
# Inputs that may be a name instead of a path (a hub id, a catalogue name): kept as written
# when no such file or folder exists.
_NAME_OR_PATH_KEYS = {
    "model_name_or_path",
    "adapter_name_or_path",
    "adapters",
    "ref_model",
    "reward_model",
    "deepspeed",
    "task_dir",  # a benchmark folder, or a hub dataset id
}
_PATH_KEYWORDS = {"auto", "true", "false", "latest", "none"}
_DATASET_DIR_KEYWORDS = {"online"}  # LLaMA-Factory's `dataset_dir: ONLINE`: hub dataset ids
_CONFIG_SUFFIXES = (".yaml", ".yml")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_KEYS_FILE = Path(__file__).with_name("llamafactory_keys.yaml")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (optional) and apply `key=value` / `--key value` overrides; with no
    file, the flags alone are the config (its source is then "command line")."""
    flat: dict[str, Any] = {}
    bases: dict[str, Path | None] = {}
    parsed = parse_overrides(overrides or [])  # a word that is no override is refused first
    if path is not None:
        path = Path(path)
        flat = read_yaml_mapping(path)
        base_dir = path.resolve().parent
        bases = {key: base_dir for key in flat}
    for key, value in parsed.items():
        flat.pop(key, None)  # the command line's value, at the command line's place
        flat[key] = value
        bases[key] = None  # command-line paths are relative to the working directory only
    config = build_config(flat, bases, where=str(path) if path is not None else COMMAND_LINE)
    config.source = str(path) if path is not None else COMMAND_LINE
    config.path = str(path) if path is not None else None
    return config


def split_config_argument(args: list[str]) -> tuple[str | None, list[str]]:
    """A command's words after its own options -> (the YAML file or None, the overrides).

    As with `llamafactory-cli`, the YAML file is the word that is neither an override
    (`key=value`) nor a flag (`--key`) nor a flag's value (`--key value`); a command may also
    be flags only. A `.yaml` file after a bare `--flag` is the config, not the flag's value.
    """
    path: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            rest.append(arg)
            following = args[i + 1] if i + 1 < len(args) else None
            takes_value = "=" not in arg and following is not None
            if takes_value and not following.startswith("--"):
                if path is None and _is_config_file(following):
                    path = following  # `--plot_loss train.yaml`: a bare flag, then the file
                else:
                    rest.append(following)
                i += 1
        elif "=" in arg or path is not None:
            rest.append(arg)  # an override; a second file name is refused by parse_overrides
        else:
            path = arg
        i += 1
    return path, rest


def _is_config_file(arg: str) -> bool:
    return arg.lower().endswith(_CONFIG_SUFFIXES) and Path(arg).is_file()


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


@dataclass(frozen=True)
class LlamaFactoryKeys:
    """llamafactory_keys.yaml, read: what each LLaMA-Factory key is here."""

    kinds: dict[str, str]  # key -> "lmforge" | "transformers" | "alias" | "not used"
    aliases: dict[str, str]  # older or LLaMA-Factory name -> lmforge key
    not_used: dict[str, str]  # key -> why it does nothing here
    groups: dict[str, list[str]]  # LLaMA-Factory dataclass -> its keys, in file order
    source: dict[str, Any]  # the releases and commit the keys were taken from


@functools.cache
def llamafactory_keys() -> LlamaFactoryKeys:
    data = yaml.safe_load(_KEYS_FILE.read_text(encoding="utf-8"))
    reasons: dict[str, str] = data["reasons"]
    kinds, aliases, not_used, groups = {}, {}, {}, {}
    for group, keys in data["keys"].items():
        groups[group] = list(keys)
        for key, kind in keys.items():
            if isinstance(kind, dict):
                kinds[key], aliases[key] = "alias", kind["alias"]
            elif kind in ("lmforge", "transformers"):
                kinds[key] = kind
            else:
                kinds[key], not_used[key] = "not used", reasons[kind]
    return LlamaFactoryKeys(kinds, aliases, not_used, groups, data["llamafactory"])


def build_config(flat: dict[str, Any], bases: dict[str, Path | None], *, where: str) -> Config:
    """`bases`: key -> the folder of the YAML file that set it, or None (command line)."""
    config = Config()
    index = key_index()
    lf = llamafactory_keys()
    origins = {key: where if bases.get(key) is not None else COMMAND_LINE for key in flat}
    # First every key is named: all unknown keys are reported together, before any value.
    kinds: dict[str, tuple[str, str]] = {}  # given key -> (kind, lmforge key)
    unknown: list[str] = []
    for key in flat:
        target = lf.aliases.get(key, key)
        if target in index:
            kinds[key] = ("schema", target)
        elif key in lf.not_used:
            kinds[key] = ("not used", key)
        elif target in _training_arguments_keys():
            kinds[key] = ("passthrough", target)
        elif lf.kinds.get(key) == "transformers":  # a key this transformers no longer has
            kinds[key] = ("not used", key)
        else:
            unknown.append(key)
    if unknown:
        raise unknown_keys_error(unknown, origins)
    for key, (_kind, target) in kinds.items():
        if target != key and target in flat:
            raise UserError(
                f"`{key}` and `{target}` are both set, and `{key}` is the older name of `{target}`",
                where=origins[key],
                fix=f"keep only `{target}`",
            )
    not_used: list[tuple[str, str]] = []
    for key, value in flat.items():
        kind, target = kinds[key]
        source = origins[key]
        if kind == "schema":
            section_name, f = index[target]
            hint = _type_hints(SECTIONS[section_name])[f.name]
            bounds = f.metadata.get("bounds")
            word = _bounds_word(value, bounds)
            if word is not None:  # a number key's word (val_size: auto)
                value = word
            else:
                given = value
                try:
                    value = coerce(key, value, hint, f.metadata.get("choices"), where=source)
                except UserError:
                    if bounds is None or not bounds.words:
                        raise
                    raise UserError(
                        f"`{key}: {_show(given)}` is not valid: {key} must be {bounds.describe()}",
                        where=source,
                        fix=f"give `{key}` a number or {', '.join(bounds.words)}",
                    ) from None
                check_bounds(key, value, bounds, f.default, where=source, given=given)
            if f.metadata.get("path") and value is not None:
                value = _resolve_path(config, target, value, bases.get(key))
            setattr(getattr(config, section_name), f.name, value)
        elif kind == "passthrough":
            if target == "deepspeed" and isinstance(value, str):
                value = _resolve_path(config, target, value, bases.get(key))
            config.passthrough[target] = training_argument_value(target, value)
        elif value is not None and value is not False:  # `use_galore: false` asks for nothing
            not_used.append((key, _not_used_reason(key)))
        origins.setdefault(target, source)
    config.origins = origins
    config.not_used = tuple(not_used)
    config.given = frozenset(flat) | frozenset(target for _, target in kinds.values())
    return config


def _not_used_reason(key: str) -> str:
    reason = llamafactory_keys().not_used.get(key)
    if reason is not None:
        return reason
    import transformers

    return f"transformers {transformers.__version__} has no such TrainingArguments key"


def known_keys() -> list[str]:
    """Every key a config may hold: lmforge's, LLaMA-Factory's and TrainingArguments'."""
    return sorted(set(key_index()) | set(llamafactory_keys().kinds) | _training_arguments_keys())


def unknown_keys_error(keys: list[str], origins: dict[str, str]) -> UserError:
    """One error naming every unknown key, each with a suggestion where it is a typo of a
    known key (never a key of other meaning), and where it was set when that differs."""
    known = known_keys()
    sources = {origins[key] for key in keys}
    where = sources.pop() if len(sources) == 1 else None

    def describe(key: str) -> str:
        notes = [origins[key]] if where is None else []
        match = closest_key(key, known)
        if match:
            notes.append(f"did you mean `{match}`?")
        return f"`{key}`" + (f" ({'; '.join(notes)})" if notes else "")

    if len(keys) == 1:
        match = closest_key(keys[0], known)
        fix = f"did you mean `{match}`? (docs/config.md lists every key)" if match else None
        return UserError(
            f"unknown key {describe(keys[0]) if where is None else f'`{keys[0]}`'}",
            where=where,
            fix=fix or "remove it, or see docs/config.md for every key lmforge accepts",
        )
    return UserError(
        f"{len(keys)} unknown keys: {', '.join(describe(key) for key in keys)}",
        where=where,
        fix="correct or remove them (docs/config.md lists every key lmforge accepts)",
    )


def _bounds_word(value: Any, bounds: Bounds | None) -> str | None:
    """The word `value` names when the number key also accepts words (`auto`), else None."""
    if bounds is None or not bounds.words or not isinstance(value, str):
        return None
    word = value.strip().lower()
    return word if word in bounds.words else None


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
    if choices and isinstance(value, bool) and result not in choices:
        # YAML reads `no`/`off` as false and `yes`/`on` as true: the word was most likely a choice
        word = "no" if value is False else "yes"
        result = word if word in choices else result
    if choices and result not in choices:
        # `yes`, `on` and `true` all reach us as true: say so rather than show a word not written
        read_as = (
            f" (YAML reads {'yes, on and true' if value else 'no, off and false'} as {result})"
        )
        raise UserError(
            f"`{key}: {result}` is not one of {', '.join(choices)}"
            + (read_as if isinstance(value, bool) else ""),
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


def _resolve_path(config: Config, key: str, value: Any, base_dir: Path | None) -> Any:
    """The value with its relative paths resolved (see the module's doc); each resolved path
    is recorded in `config.paths` under the key (`key.name` for mappings, `key[i]` for lists)."""
    if key == "datasets":  # inline dataset entries
        return {
            name: _resolve_dataset_entry(config, f"datasets.{name}", entry, base_dir)
            for name, entry in value.items()
        }
    if isinstance(value, dict):  # adapters: {name: path}
        return {
            name: _resolve_one(config, f"{key}.{name}", key, path, base_dir)
            for name, path in value.items()
        }
    if key == "adapter_name_or_path" and "," in value:
        parts = [p.strip() for p in value.split(",")]
        return ",".join(
            _resolve_one(config, f"{key}[{i}]", key, p, base_dir) for i, p in enumerate(parts)
        )
    return _resolve_one(config, key, key, value, base_dir)


def _resolve_dataset_entry(config: Config, label: str, entry: dict, base_dir: Path | None) -> dict:
    entry = dict(entry)
    for field_name in ("path", "file_name"):
        value = entry.get(field_name)
        if isinstance(value, str):
            entry[field_name] = _resolve_one(
                config, f"{label}.{field_name}", "datasets", value, base_dir
            )
        elif isinstance(value, list):
            entry[field_name] = [
                _resolve_one(config, f"{label}.{field_name}[{i}]", "datasets", v, base_dir)
                if isinstance(v, str)
                else v
                for i, v in enumerate(value)
            ]
    return entry


def _resolve_one(config: Config, label: str, key: str, value: str, base_dir: Path | None) -> str:
    found = resolve_relative(key, value, base_dir)
    if found is None:
        return value
    config.paths[label] = found
    return found.path


def resolve_relative(key: str, value: str, base_dir: Path | None) -> ResolvedPath | None:
    """Where the path `value` of `key` points, or None when it is a word, not a path (`auto`,
    a hub id, a catalogue name). `base_dir`: the YAML file's folder (None: command line).

    Relative paths are read from the working directory, as LLaMA-Factory reads them. An input
    that exists only next to the YAML file is read from there; an input found nowhere is
    named under the working directory (so an error names where it was looked for), unless it
    may be a name. Outputs always go under the working directory."""
    lowered = value.strip().lower()
    if lowered in _PATH_KEYWORDS or (key == "dataset_dir" and lowered in _DATASET_DIR_KEYWORDS):
        return None
    if "://" in value:
        return None  # a URL
    path = Path(value).expanduser()
    if path.is_absolute():
        return ResolvedPath(str(path), "as given")
    in_cwd = os.path.abspath(path)
    if key in _OUTPUT_PATH_KEYS:
        return ResolvedPath(in_cwd, "working directory")
    if _exists(in_cwd):
        return ResolvedPath(in_cwd, "working directory")
    if base_dir is not None and _exists(os.path.abspath(base_dir / path)):
        return ResolvedPath(os.path.abspath(base_dir / path), "YAML file's folder")
    if key == "datasets" and base_dir is not None:
        # Files of a dataset declared in the YAML file: one found nowhere is named next to it.
        return ResolvedPath(os.path.abspath(base_dir / path), "YAML file's folder, not found")
    if key == "tokenized_path":
        return ResolvedPath(in_cwd, "working directory")  # saved there on the first run
    explicit = value.startswith(("./", "../", ".\\", "..\\"))
    if key in _NAME_OR_PATH_KEYS and not explicit:
        return None  # a hub id or catalogue name (or a path that does not exist)
    return ResolvedPath(in_cwd, "working directory, not found")


def _exists(path: str) -> bool:
    """The file or folder exists, or the glob pattern (`data/*.jsonl`) matches something."""
    return os.path.exists(path) or (glob.has_magic(path) and bool(glob.glob(path)))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _training_arguments_keys() -> frozenset[str]:
    """transformers.TrainingArguments keys we pass through unchanged (loaded only when needed)."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in fields(TrainingArguments) if f.init)
