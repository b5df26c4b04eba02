"""Optimizers LLaMA-Factory's keys ask for: Muon with AdamW (`use_muon`), which lmforge builds,
and Adam-mini (`use_adam_mini`, its package's), both through `custom_optimizer` in
stages/base.py; and GaLore / APOLLO (`use_galore`, `use_apollo`), which
are transformers' own low-rank optimizers set through TrainingArguments (`low_rank_arguments`).

Muon (Jordan et al., 2024; "Muon is Scalable for LLM Training", Moonshot 2025) updates each 2-D
weight of the hidden layers by its momentum orthogonalised with a Newton-Schulz iteration, its
step scaled by 0.2 * sqrt(max(rows, columns)) so that AdamW's learning rate and weight decay
carry over; embeddings, the output head, norms and biases stay with AdamW. torch.optim.Muon
takes 2-D weights only, and the Trainer takes one optimizer, so `MuonAdamW` is both in one (the
same arithmetic as torch.optim.Muon with adjust_lr_fn="match_rms_adamw" and torch.optim.AdamW:
tests/train/test_optimizers.py).
"""

from __future__ import annotations

import math

import torch

from lmforge.config.schema import comma_separated

# Newton-Schulz quintic coefficients (Keller Jordan's; torch.optim.Muon's defaults)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def orthogonalised(matrix: torch.Tensor) -> torch.Tensor:
    """About U V^T of matrix = U S V^T, in bf16 (five quintic Newton-Schulz steps)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.bfloat16()
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=NS_EPS))
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups marked `muon: True` (2-D weights), AdamW for the others."""

    def __init__(
        self,
        muon_params,
        adamw_params,
        *,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        groups = [
            {"params": list(muon_params), "muon": True},
            {"params": list(adamw_params), "muon": False},
        ]
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, betas=betas, eps=eps)
        super().__init__([g for g in groups if g["params"]], defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon updates 2-D weights only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    (self._muon if group["muon"] else self._adamw)(param, group)
        return loss

    def _muon(self, param, group) -> None:
        lr, momentum = group["lr"], group["momentum"]
        state = self.state[param]
        buffer = state.setdefault("momentum_buffer", torch.zeros_like(param.grad))
        buffer.lerp_(param.grad, 1 - momentum)
        update = param.grad.lerp(buffer, momentum)  # Nesterov
        param.mul_(1 - lr * group["weight_decay"])
        scale = 0.2 * math.sqrt(max(param.shape))
        param.add_(orthogonalised(update).to(param.dtype), alpha=-lr * scale)

    def _adamw(self, param, group) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step = state["step"].item()
        param.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(param.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
        corrected = math.sqrt(1 - beta2**step)
        denominator = (state["exp_avg_sq"].sqrt() / corrected).add_(eps)
        param.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))


def muon_optimizer(model, args) -> MuonAdamW:
    """LLaMA-Factory's split: Muon for the trainable 2-D weights but the embedding and the
    output head, AdamW for everything else; AdamW's settings from TrainingArguments."""
    skip = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        skip.add(id(head.weight))
    muon, adamw = [], []
    for param in model.parameters():
        if param.requires_grad:
            (muon if param.ndim == 2 and id(param) not in skip else adamw).append(param)
    return MuonAdamW(
        muon,
        adamw,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )


def adam_mini_optimizer(model, args):
    """Adam-mini over the trainable parameters, told the model's width and heads (how it
    blocks the attention weights) and whether ZeRO-3 or FSDP shards them; AdamW's settings."""
    from adam_mini import Adam_mini
    from transformers.integrations import is_deepspeed_zero3_enabled

    text = model.config.get_text_config()
    return Adam_mini(
        named_parameters=[(n, p) for n, p in model.named_parameters() if p.requires_grad],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        model_sharding=bool(args.fsdp) or is_deepspeed_zero3_enabled(),
        dim=text.hidden_size,
        n_heads=text.num_attention_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None),
        verbose=False,
    )


# Every module inside a decoder layer (transformers keeps the nn.Linear ones): GaLore's and
# APOLLO's `all`, as LLaMA-Factory's, which leaves out the output head.
IN_LAYERS = r".*\.(layers|h|blocks)\.\d+\..+"

# the package each optimizer key needs, and the lmforge extra that installs it
PACKAGES = {
    "use_galore": ("galore_torch", "galore"),
    "use_apollo": ("apollo_torch", "apollo"),
    "use_adam_mini": ("adam_mini", "adam-mini"),
    "use_badam": ("badam", "badam"),
}


def low_rank_kind(method) -> str | None:
    """`galore` or `apollo` when the config asks for one (use_galore / use_apollo)."""
    return "galore" if method.use_galore else "apollo" if method.use_apollo else None


def low_rank_arguments(method) -> dict:
    """TrainingArguments' optim, optim_target_modules and optim_args for GaLore or APOLLO
    with LLaMA-Factory's settings."""
    if method.use_galore:
        kind, target, layerwise = "galore", method.galore_target, method.galore_layerwise
        optim_args = {
            "rank": method.galore_rank,
            "update_proj_gap": method.galore_update_interval,
            "scale": method.galore_scale,
            "proj_type": method.galore_proj_type,
        }
    elif method.use_apollo:
        kind, target, layerwise = "apollo", method.apollo_target, method.apollo_layerwise
        optim_args = {
            "rank": method.apollo_rank,
            "update_proj_gap": method.apollo_update_interval,
            "scale": method.apollo_scale,
            "proj_type": method.apollo_proj_type,
            "proj": method.apollo_proj,
            "scale_type": method.apollo_scale_type,
        }
    else:
        return {}
    names = comma_separated(target)
    return {
        "optim": f"{kind}_adamw" + ("_layerwise" if layerwise else ""),
        "optim_target_modules": IN_LAYERS if names == ["all"] else names,
        "optim_args": ",".join(f"{k}={v}" for k, v in optim_args.items()),
    }
