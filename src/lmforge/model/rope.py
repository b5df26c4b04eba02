"""RoPE scaling (`rope_scaling`): a model trained for N positions reads longer rows.

LLaMA-Factory's rule, kept: in training the factor is ceil(cutoff_len / the model's pre-trained
length), and nothing is scaled when cutoff_len fits in the positions the model has. What it
lacks, added: the factor training used is written to run_plan.yaml (`rope_factor`, 1 when
nothing was scaled) and inference takes it from there, so chat, eval and export run the model
that was trained (LLaMA-Factory's inference always uses factor 2); `rope_factor` sets it by hand.

transformers 5 keeps the rotary settings in `config.rope_parameters`: one dict, or one per
layer type (Gemma 3: full_attention and sliding_attention). Only the layers that attend over
the whole row are scaled: a sliding-window layer never sees a distance beyond its window.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from lmforge.errors import UserError
from lmforge.model.hf_config import text_config

# The kinds whose formula needs the pre-trained length (transformers' original_max_position_embeddings).
_NEEDS_ORIGINAL = ("dynamic", "yarn", "llama3")
# LLaMA-Factory's llama3 settings (Meta's Llama 3.1 values).
_LLAMA3_FREQ_FACTORS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
INFERENCE_DEFAULT_FACTOR = 2.0  # LLaMA-Factory's, for weights with no record of their own


@dataclass(frozen=True)
class RopeScaling:
    """How the rotary embedding of the global-attention layers is stretched."""

    kind: str  # one of ROPE_SCALING_KINDS (config/schema.py)
    factor: float
    original_length: int  # the positions the model was pre-trained for

    @property
    def positions(self) -> int:
        return int(self.original_length * self.factor)

    def describe(self) -> str:
        return (
            f"{self.kind} x{self.factor:g} ({self.original_length} -> {self.positions} positions)"
        )


def rope_scaling_for(
    model_path,
    kind: str | None,
    *,
    factor: float | None,
    context_len: int | None = None,
    trust_remote_code: bool = False,
    where: str | None = None,
) -> tuple[RopeScaling | None, str]:
    """The scaling the model in `model_path` loads with, and the plan's line about it; (None,
    "") without a kind. `context_len` (training's cutoff_len) derives the factor when
    `factor` is None; inference passes the factor the weights were trained with."""
    if kind is None:
        return None, ""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    return plan_rope_scaling(hf_config, kind, factor=factor, context_len=context_len, where=where)


def global_rope_parameters(hf_config: Any) -> dict:
    """The rope_parameters dict of the layers that attend over the whole row (a live
    reference: changing it changes the config)."""
    hf_config = text_config(hf_config)
    params = getattr(hf_config, "rope_parameters", None)
    if not isinstance(params, dict):
        params = {}
        hf_config.rope_parameters = params
    nested = params.get("full_attention")
    return nested if isinstance(nested, dict) else params


def original_length(hf_config: Any) -> int:
    """The positions the model was pre-trained for: max_position_embeddings, unless its config
    is scaled already (then the length before that scaling)."""
    positions = int(text_config(hf_config).max_position_embeddings)
    params = global_rope_parameters(hf_config)
    if params.get("rope_type", "default") == "default":
        return positions
    if params.get("original_max_position_embeddings"):
        return int(params["original_max_position_embeddings"])
    return round(positions / float(params.get("factor") or 1.0))


def plan_rope_scaling(
    hf_config: Any,
    kind: str,
    *,
    factor: float | None,
    context_len: int | None,
    where: str | None = None,
) -> tuple[RopeScaling | None, str]:
    """(the scaling to apply or None, one line for the plan). `factor` as recorded or set;
    else derived from `context_len` (training); else INFERENCE_DEFAULT_FACTOR."""
    hf_config = text_config(hf_config)
    if getattr(hf_config, "max_position_embeddings", None) is None:
        raise UserError(
            f"rope_scaling: {kind} needs the model's max_position_embeddings, and its config.json "
            "has none",
            where=where,
            fix="remove rope_scaling",
        )
    current = global_rope_parameters(hf_config).get("rope_type", "default")
    original = original_length(hf_config)
    positions = int(hf_config.max_position_embeddings)
    if factor is None and context_len is not None:
        if context_len <= positions:
            return None, (
                f"rope_scaling {kind}: not applied, cutoff_len {context_len} fits in the "
                f"model's {positions} positions"
            )
        factor = float(math.ceil(context_len / original))
    elif factor is None:
        factor = INFERENCE_DEFAULT_FACTOR
    if factor <= 1:
        return None, f"rope_scaling {kind}: not applied (rope_factor {factor:g})"
    if current not in ("default", kind):
        raise UserError(
            f"rope_scaling: {kind} would replace the model's own `{current}` RoPE scaling "
            f"(its config.json)",
            where=where,
            fix=f"set rope_scaling: {current} to extend the model's own scaling, or remove "
            "rope_scaling",
        )
    scaling = RopeScaling(kind, float(factor), original)
    return scaling, f"rope: {scaling.describe()}"


def apply_rope_scaling(hf_config: Any, scaling: RopeScaling) -> None:
    """Set the scaling on a transformers config (before the model is built from it). Setting
    what a saved, already scaled config holds changes nothing: a model trained with a scaling
    and loaded with the same one is not scaled twice."""
    hf_config = text_config(hf_config)
    params = global_rope_parameters(hf_config)
    same_kind = params.get("rope_type", "default") == scaling.kind
    kept = {
        k: v for k, v in params.items() if same_kind or k in ("rope_theta", "partial_rotary_factor")
    }
    params.clear()
    params.update(kept, rope_type=scaling.kind, factor=scaling.factor)
    if scaling.kind in _NEEDS_ORIGINAL:
        params["original_max_position_embeddings"] = scaling.original_length
    if scaling.kind == "llama3":
        for key, value in _LLAMA3_FREQ_FACTORS.items():
            params.setdefault(key, value)
    hf_config.max_position_embeddings = scaling.positions


def changes_config(hf_config: Any, scaling: RopeScaling) -> bool:
    """Whether applying `scaling` changes the config (False for a model saved with it)."""
    before = (
        dict(global_rope_parameters(hf_config)),
        text_config(hf_config).max_position_embeddings,
    )
    scaled = copy.deepcopy(hf_config)
    apply_rope_scaling(scaled, scaling)
    after = (dict(global_rope_parameters(scaled)), text_config(scaled).max_position_embeddings)
    return before != after
