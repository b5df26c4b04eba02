"""Lean gated MLPs: the same outputs and gradients as the model's own forward, one activation
fewer kept for the backward pass, and models with other MLPs left alone."""

import torch

from conftest import build_tiny_model
from lmforge.model.gated_mlp import use_lean_gated_mlps


def loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_bytes(model, ids) -> int:
    seen: dict[int, int] = {}

    def pack(tensor):
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


def test_same_loss_and_gradients_and_less_kept_for_backward():
    model = build_tiny_model(120)
    ids = torch.randint(3, 120, (2, 40), generator=torch.Generator().manual_seed(0))
    expected_loss, expected_grads = loss_and_grads(model, ids)
    before = saved_bytes(model, ids)
    assert use_lean_gated_mlps(model) == 2  # one per layer
    loss, grads = loss_and_grads(model, ids)
    assert loss == expected_loss
    for name, grad in expected_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-5, atol=1e-7), name
    # 2 layers x 2 x 40 tokens x 64 intermediate x 4 bytes: act(gate(x)) is no longer kept.
    assert before - saved_bytes(model, ids) == 2 * 2 * 40 * 64 * 4


class SumGateMLP(torch.nn.Module):
    """Has the gated MLP's parts but adds instead of multiplying."""

    def __init__(self):
        super().__init__()
        self.gate_proj = torch.nn.Linear(8, 16, bias=False)
        self.up_proj = torch.nn.Linear(8, 16, bias=False)
        self.down_proj = torch.nn.Linear(16, 8, bias=False)
        self.act_fn = torch.nn.GELU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) + self.up_proj(x))


def test_an_mlp_that_computes_something_else_is_left_alone():
    model = torch.nn.Sequential(SumGateMLP(), SumGateMLP())
    assert use_lean_gated_mlps(model) == 0  # checked against its own forward: they differ
    assert all("forward" not in vars(mlp) for mlp in model)
