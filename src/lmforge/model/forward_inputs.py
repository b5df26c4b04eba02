"""Which inputs a model's forward takes. Remote code (`trust_remote_code`) often spells out its
forward's arguments, without transformers' newer ones (`logits_to_keep`, the padding-free
`cu_seq_lens_q`, ...), and raises a TypeError on anything else."""

from __future__ import annotations

import inspect


def unwrapped(model):
    """The transformers model under peft's wrapper (PeftModel.forward takes `**kwargs` and
    passes them on, so its own signature says nothing)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def forward_takes(model, name: str, *, through_kwargs: bool = True) -> bool:
    """Whether the model's forward takes `name`: as a named parameter, or (`through_kwargs`)
    through `**kwargs`, which transformers' own models hand on to attention and loss."""
    try:
        parameters = inspect.signature(unwrapped(model).forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    if name in parameters:
        return True
    return through_kwargs and any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def is_transformers_model(model) -> bool:
    """A model class of the transformers package itself, not remote code from a model folder."""
    return type(unwrapped(model)).__module__.startswith("transformers.")
