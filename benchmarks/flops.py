"""Model FLOPs of a LoRA SFT step, and the matmul peak they are compared with (MFU).

What is counted, per step (multiply-add = 2 FLOPs; frozen base weights, LoRA on every linear
layer of the decoder, lm_head frozen and tied to the embeddings):

    body     4 * N_linear * T      forward 2·N·T, backward to the activations 2·N·T (frozen
                                   weights get no weight gradient)
    lora     6 * N_lora * T        forward 2·N·T, backward to activations 2·N·T and to the
                                   LoRA weights 2·N·T
    attn     12 * heads * head_dim * pairs      per layer; forward Q·K^T and P·V are 2·d per
                                   (query, key) pair each, backward is twice the forward;
                                   pairs = sum over samples and positions i of min(i, window),
                                   i.e. causal, within each sample only
    lm_head  4 * hidden * vocab * T_trained     forward and backward to the hidden states,
                                   only at positions whose next token is trained

T = real (non-padding) tokens, T_trained = positions with a trained next token. Not counted:
norms, activations, softmax, RoPE, the embedding lookup, the optimizer (all elementwise), and
work a tool chooses to do on top: padding, logits at untrained positions, recomputation
(gradient checkpointing, the chunked loss's backward). So MFU compares useful work only, and
the same step costs the same FLOPs in every tool.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    windows: tuple[int | None, ...]  # per layer: sliding window, or None for full attention
    lora_rank: int

    @classmethod
    def from_config(cls, config: dict, lora_rank: int) -> Shape:
        layers = config["num_hidden_layers"]
        kinds = config.get("layer_types") or ["full_attention"] * layers
        window = config.get("sliding_window")
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=layers,
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            head_dim=config.get("head_dim")
            or config["hidden_size"] // config["num_attention_heads"],
            vocab=config["vocab_size"],
            windows=tuple(window if k == "sliding_attention" else None for k in kinds),
            lora_rank=lora_rank,
        )

    @classmethod
    def from_model_dir(cls, model_dir: Path, lora_rank: int) -> Shape:
        return cls.from_config(json.loads((model_dir / "config.json").read_text()), lora_rank)

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer in one decoder layer: q k v o gate up down."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears())

    @property
    def lora_params(self) -> int:
        return self.layers * sum(self.lora_rank * (a + b) for a, b in self.linears())


def causal_pairs(length: int, window: int | None) -> int:
    """(query, key) pairs a causal sample of `length` tokens attends to: sum of min(i, w)."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def step_flops(shape: Shape, lengths: list[int], trained: int) -> dict[str, float]:
    """Model FLOPs of one optimizer step over samples of these lengths (see module doc)."""
    tokens = sum(lengths)
    pairs = sum(causal_pairs(n, w) for n in lengths for w in shape.windows)
    parts = {
        "body": 4.0 * shape.linear_params * tokens,
        "lora": 6.0 * shape.lora_params * tokens,
        "attn": 12.0 * shape.heads * shape.head_dim * pairs,
        "lm_head": 4.0 * shape.hidden * shape.vocab * trained,
    }
    parts["total"] = sum(parts.values())
    return parts


def matmul_peak(
    dtype_name: str, device: str = "cpu", seconds: float = 2.0, shapes: list | None = None
) -> float:
    """Best FLOP/s of matmuls in this dtype on this device (the MFU denominator).

    The best over several shapes, because a library's fast path may cover some shapes only
    (on a CPU without native bf16, a bf16 matmul can be 20x slower than a bf16 linear layer):
    a square 1024 matmul, and linear layers (x @ W^T with W stored (out, in), as models store
    it) of that shape and of the shapes of a 270M model's layers."""
    import torch

    dtype = getattr(torch, dtype_name)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    shapes = shapes or [(1024, 1024, 1024), (1024, 640, 2048), (1024, 2048, 640), (512, 640, 32768)]
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        weight = b.t().contiguous()
        flops = 2.0 * m * k * n
        ops = [lambda a=a, weight=weight: torch.nn.functional.linear(a, weight)]
        if m == k == n:
            ops.append(lambda a=a, b=b: torch.matmul(a, b))
        for op in ops:
            op()  # warm-up: thread pool, kernel selection
            sync()
            deadline = time.perf_counter() + seconds
            while True:
                start = time.perf_counter()
                op()
                sync()
                best = max(best, flops / (time.perf_counter() - start))
                if time.perf_counter() > deadline:
                    break
    return best
