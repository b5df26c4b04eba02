"""Keys passed through to transformers' TrainingArguments, read as its fields take them.

YAML (and OmegaConf, which LLaMA-Factory reads command lines with) turns `no` and `off` into
False, so `save_strategy: no` in a file, `save_strategy=no` or `--save_strategy no` reached
transformers as False ("False is not a valid SaveStrategy"; LLaMA-Factory fails the same way,
except with flags alone, which argparse keeps as text). A strategy field (save, eval, logging)
given False gets "no", the value that was written."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any


def training_argument_value(key: str, value: Any) -> Any:
    """`value` of TrainingArguments' field `key` as that field takes it (config/load.py)."""
    if value is False and any(_has_no(kind) for kind in _training_argument_kinds().get(key, ())):
        return "no"
    return value


def _has_no(kind: type) -> bool:
    return issubclass(kind, enum.Enum) and "no" in {member.value for member in kind}


@functools.cache
def _training_argument_kinds() -> dict[str, set[type]]:
    """field -> the types its annotation admits (bool, str, an enum, ...)."""
    from transformers import TrainingArguments  # only when a passed-through key is False

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except Exception:  # an annotation this Python cannot resolve: the fields' own types
        hints = {f.name: f.type for f in dataclasses.fields(TrainingArguments)}
    return {name: _types_of(hint) for name, hint in hints.items()}


def _types_of(hint) -> set[type]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_types_of(arg) for arg in typing.get_args(hint)))
    return {hint} if isinstance(hint, type) else set()
