"""The router (load-balancing) loss of mixture-of-experts models: LLaMA-Factory's
moe_aux_loss_coef turns it on in training, with that weight.

transformers' MoE models (Qwen2/3-MoE, Mixtral, OLMoE, ...) compute it when their config says
output_router_logits, return it as `aux_loss`, and add coef x aux_loss to the loss they compute
from labels. lmforge's own losses (chunked, weighted) are computed outside the model, so they
add it themselves: `router_loss`, the same term the model's own loss would add.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import UserError
from lmforge.model.hf_config import text_config

# Where transformers' MoE configs keep the weight (router_aux_loss_coef; JetMoE: aux_loss_coef).
_COEF_KEYS = ("router_aux_loss_coef", "aux_loss_coef")


def enable_router_loss(hf_config: Any, coef: float, where: str | None = None) -> None:
    """Set a transformers config (before the model is built) to return the router loss with
    weight `coef`."""
    text = text_config(hf_config)
    if not hasattr(text, "output_router_logits"):
        raise UserError(
            f"moe_aux_loss_coef is set, but this `{text.model_type}` model has no router loss "
            "(it is not a mixture-of-experts model transformers computes one for)",
            where=where,
            fix="remove moe_aux_loss_coef",
        )
    text.output_router_logits = True
    key = next((k for k in _COEF_KEYS if hasattr(text, k)), _COEF_KEYS[0])
    setattr(text, key, coef)


def router_loss_weight(model) -> float | None:
    """The weight of the router loss the model returns, or None when it returns none."""
    text = text_config(model.config)
    if not getattr(text, "output_router_logits", False):
        return None
    return next((getattr(text, k) for k in _COEF_KEYS if hasattr(text, k)), None)


def with_router_loss(loss, outputs, model):
    """`loss` plus coef x the router loss of the forward that gave `outputs`, as the model
    adds it to its own loss (TRL's DPO and KTO trainers add it the same way)."""
    aux = outputs.get("aux_loss") if hasattr(outputs, "get") else None
    if aux is None:
        return loss
    weight = router_loss_weight(model)
    return loss if weight is None else loss + weight * aux.to(loss.device)


def describe(model) -> str:
    weight = router_loss_weight(model)
    return f" + {weight:g} x router load-balancing loss" if weight is not None else ""
