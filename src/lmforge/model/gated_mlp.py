"""Gated MLPs that keep one activation fewer for the backward pass.

LLaMA-style MLPs compute down(act(gate(x)) * up(x)). Autograd keeps gate(x) for the activation's
backward and act(gate(x)) and up(x) for the product's: three tensors of tokens x intermediate
per layer. Here the product is one autograd function that keeps gate(x) and up(x) only and
recomputes act(gate(x)) in the backward pass, an elementwise op (about 1 % of a step), saving a
quarter of the MLP's activations (Gemma 3 270M: 147 KB per token). The same idea as
liger-kernel's GEGLU/SwiGLU kernels, which take over on CUDA when installed. Results are
identical: the same ops on the same values.
"""

from __future__ import annotations

import torch


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad_output):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            gate = gate.detach().requires_grad_(True)
            activated = ctx.act(gate)
        (grad_gate,) = torch.autograd.grad(activated, gate, grad_output * up)
        return grad_gate, grad_output * activated.detach(), None


def _forward(self, x):
    return self.down_proj(_GatedProduct.apply(self.gate_proj(x), self.up_proj(x), self.act_fn))


def use_lean_gated_mlps(model) -> int:
    """Give every LLaMA-style MLP (gate_proj, up_proj, down_proj and act_fn) the lean forward,
    after checking on one of them that it computes what the model's own forward does; returns
    how many were changed (0 when the check fails or there are none)."""
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    mlps = [
        module
        for module in model.modules()
        if type(module).__name__.endswith("MLP")
        and all(hasattr(module, name) for name in parts)
        and getattr(module, "gate_up_proj", None) is None  # fused variants differ
    ]
    if not mlps or not _same_output(mlps[0]):
        return 0
    for module in mlps:
        module.forward = _forward.__get__(module)
    return len(mlps)


def _same_output(module) -> bool:
    weight = module.gate_proj.weight
    if not weight.is_floating_point():  # quantized weights: leave the model as it is
        return False
    hidden = getattr(module.gate_proj, "in_features", weight.shape[-1])
    x = torch.randn(1, 3, hidden, generator=torch.Generator().manual_seed(0)).to(weight)
    was_training = module.training
    module.eval()  # no dropout: both passes see the same weights and use no random numbers
    try:
        with torch.no_grad():
            expected = module(x)
            lean = _forward.__get__(module)(x)
    finally:
        module.train(was_training)
    return torch.allclose(expected, lean, rtol=1e-4, atol=1e-5)
