"""In-process GPU timings of the choices lmforge makes per device, on Gemma-3-1B's shapes:

- the loss over a 262k vocabulary: full logits (plain transformers), lmforge's chunked linear
  cross-entropy at several chunk sizes, liger-kernel's fused linear cross-entropy;
- the gated MLP: the model's own forward vs lmforge's lean one (one activation fewer kept);
- attention over one row of 8 samples: torch varlen_attn, per-sample sdpa, FlexAttention.

Forward + backward, median of 10 after 3 warm-ups (CUDA events), and the peak memory above
what the inputs take. python benchmarks/gpu/kernels.py [--tokens 8192]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F


def timed(fn, warmup=3, iters=10) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**30


def loss_rows(tokens: int, hidden: int = 1152, vocab: int = 262144) -> list[tuple]:
    from lmforge.train.losses.linear_ce import linear_cross_entropy_sum

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(1, tokens + 1, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
    h.requires_grad_(True)
    w = (torch.randn(vocab, hidden, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (1, tokens + 1), device="cuda", generator=g)

    def full():
        logits = (h[0, :-1] @ w.t()).float()
        F.cross_entropy(logits, labels[0, 1:]).backward()

    rows = [("loss: full logits (plain)", *timed(full))]
    for chunk in (128, 512, 1024, 2048):

        def chunked(chunk=chunk):
            total, count = linear_cross_entropy_sum(h, w, labels, chunk_tokens=chunk)
            (total / count).backward()

        rows.append((f"loss: lmforge chunked, {chunk} tokens", *timed(chunked)))
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()

        def fused():
            liger(w, h[0, :-1], labels[0, 1:]).backward()

        rows.append(("loss: liger fused linear CE", *timed(fused)))
    except ImportError:
        rows.append(("loss: liger (not installed)", float("nan"), float("nan")))
    return rows


def mlp_rows(tokens: int, hidden: int = 1152, inner: int = 6912) -> list[tuple]:
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP

    from lmforge.model.gated_mlp import _forward

    config = Gemma3TextConfig(hidden_size=hidden, intermediate_size=inner)
    mlp = Gemma3MLP(config).cuda().to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    lean = _forward.__get__(mlp)
    return [
        ("MLP: the model's own", *timed(lambda: mlp(x).sum().backward())),
        ("MLP: lmforge lean", *timed(lambda: lean(x).sum().backward())),
    ]


def attention_rows(tokens: int) -> list[tuple]:
    from lmforge.model import varlen_kernels as k

    g = torch.Generator().manual_seed(0)
    cuts = sorted(torch.randperm(tokens - 1, generator=g)[:7].add(1).tolist())
    edges = [0, *cuts, tokens]
    cu = torch.tensor(edges, dtype=torch.int32, device="cuda")
    longest = max(b - a for a, b in zip(edges, edges[1:]))
    q = torch.randn(1, 4, tokens, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kv = [
        torch.randn(1, 1, tokens, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2)
    ]
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest}
    host = {"cu_seq_lens_q": cu.cpu(), "max_length_q": longest}
    rows = []
    for name, fn, extra in (
        ("attention: torch varlen_attn", k.torch_varlen, kwargs),
        ("attention: per-sample sdpa", k.per_sample_sdpa, host),
        ("attention: FlexAttention", k.flex_document, kwargs),
    ):

        def step(fn=fn, extra=extra):
            out, _ = fn(None, q, kv[0], kv[1], None, scaling=256**-0.5, sliding_window=512, **extra)
            out.float().sum().backward()

        try:
            rows.append((name, *timed(step)))
        except Exception as exc:  # report, keep measuring the others
            rows.append((f"{name}: {type(exc).__name__}: {str(exc)[:80]}", float("nan"), 0.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--tokenizer", help="unused (run.sh passes it to every part)")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.tokens} tokens")
    print("| what | ms (fwd+bwd) | peak GiB above inputs |\n| --- | ---: | ---: |")
    for rows in (loss_rows, mlp_rows, attention_rows):
        for name, ms, gib in rows(args.tokens):
            print(f"| {name} | {ms:.2f} | {gib:.2f} |", flush=True)


if __name__ == "__main__":
    main()
