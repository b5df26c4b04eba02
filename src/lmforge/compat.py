"""One place for the library APIs that were renamed inside the version range pyproject allows.

Each shim looks at what the installed library has (a dataclass's fields, a method, a forward's
parameters) and never at a version string, so a backport or a rename reverted upstream still
picks the name that exists. The renames (transformers; the others had none lmforge relies on):

- 5.23: TrainingArguments `gradient_checkpointing(_kwargs)` -> `activation_checkpointing(_kwargs)`
  (the old names stay as deprecated aliases for a while); the Trainer then calls the model's
  `activation_checkpointing_enable` where it has one, `gradient_checkpointing_enable` before.
- 5.24: the model forward's `past_key_values` -> `cache`, and the outputs' `past_key_values` ->
  `cache` (the old names are deprecated aliases, to be removed in 5.40).

docs/architecture.md ("Supported versions") says which versions are tested and how.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any


def pick_name(available: Iterable[str], new: str, old: str) -> str:
    """`new` where the library has it, else `old` (a library before the rename)."""
    return new if new in set(available) else old


def field_names(dataclass_type: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(dataclass_type))


def parameter_names(function: Callable) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return frozenset()


# -- TrainingArguments ------------------------------------------------------------------------


def checkpointing_arguments(
    enabled: bool, kwargs: dict[str, Any] | None = None, arguments_type: type | None = None
) -> dict[str, Any]:
    """The TrainingArguments keywords that switch activation checkpointing on or off:
    `activation_checkpointing` and `activation_checkpointing_kwargs` where TrainingArguments has
    them (transformers >= 5.23), else `gradient_checkpointing` and `gradient_checkpointing_kwargs`.
    """
    if arguments_type is None:
        from transformers import TrainingArguments as arguments_type
    name = pick_name(
        field_names(arguments_type), "activation_checkpointing", "gradient_checkpointing"
    )
    return {name: enabled, f"{name}_kwargs": kwargs}


# -- models -----------------------------------------------------------------------------------


def enable_activation_checkpointing(model, kwargs: dict[str, Any] | None = None) -> None:
    """Switch on activation checkpointing in a transformers (or peft) model by the method it has:
    `activation_checkpointing_enable(activation_checkpointing_kwargs=...)` (>= 5.23), else
    `gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)`."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_activation_checkpointing(model) -> bool:
    """Whether checkpointing is on: `is_activation_checkpointing` (>= 5.23) or
    `is_gradient_checkpointing`."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(model, name):
            return bool(getattr(model, name))
    return False


def _transformers_model(model):
    """The transformers model inside a peft wrapper (whose forward takes **kwargs only)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


@lru_cache(maxsize=1)
def _outputs_name_the_cache() -> bool:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" in field_names(CausalLMOutputWithPast)


def cache_keyword(model) -> str:
    """The forward keyword that takes the KV cache: `cache` (transformers >= 5.24) or
    `past_key_values`. Read from the model's forward; a forward that names neither (**kwargs
    only) follows what transformers' own output classes call the cache."""
    params = parameter_names(_transformers_model(model).forward)
    if "cache" in params or "past_key_values" in params:
        return pick_name(params, "cache", "past_key_values")
    return "cache" if _outputs_name_the_cache() else "past_key_values"


def output_cache(outputs):
    """The KV cache a forward returned: `outputs.cache` (>= 5.24) or `outputs.past_key_values`."""
    found = getattr(outputs, "cache", None)
    return found if found is not None else getattr(outputs, "past_key_values", None)
