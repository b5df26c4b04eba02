"""Packing: rows respect cutoff_len, positions restart per sample, and each sample's loss in a
packed batch equals its loss alone (no attention or prediction across samples)."""

import numpy as np
import pytest
import torch

from conftest import build_tiny_decoder, build_tiny_model
from lmforge.data.encoding.collate import (
    PackedCollator,
    PadCollator,
    make_collator,
    segment_positions,
)
from lmforge.data.encoding.packing import PackedSet, pack_lengths, packing_efficiency
from lmforge.errors import UserError
from lmforge.model.packing import check_isolation, prepare_model_for_packing

VOCAB = 110


def test_rows_hold_every_sample_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 150, size=500).tolist() + [300, 300]
    rows = pack_lengths(lengths, 300, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 300 for row in rows)
    # Best-fit decreasing is at the lower bound on the number of rows here.
    assert len(rows) == int(np.ceil(sum(lengths) / 300))
    assert packing_efficiency(lengths, rows, 300) > 0.99
    assert rows == pack_lengths(lengths, 300, seed=1)


def test_seed_orders_equal_lengths_and_too_long_samples_fail():
    lengths = [4] * 8
    assert pack_lengths(lengths, 8, seed=0) != pack_lengths(lengths, 8, seed=1)
    with pytest.raises(ValueError):
        pack_lengths([9], 8, seed=0)


def test_collator_restarts_positions_and_masks_each_first_label():
    row = {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "lengths": [3, 2]}
    single = {"input_ids": [10, 11], "labels": [-100, 11]}
    batch = PackedCollator(0)([row, single])
    assert "attention_mask" not in batch  # a 2D mask would turn off transformers' detection
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 11, -100, -100, -100]]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [10, 11, 0, 0, 0]]


def test_flattened_batch_for_flash_attention_has_varlen_kwargs():
    row = {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "lengths": [3, 2]}
    single = {"input_ids": [10, 11], "labels": [10, 11]}
    batch = PackedCollator(0, flatten=True)([row, single])
    assert batch["input_ids"].shape == (1, 7)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 11]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 7]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3


def test_segment_positions():
    assert segment_positions([3, 1, 2]).tolist() == [0, 1, 2, 0, 0, 1]


def random_samples(count: int, seed: int, max_len: int = 100) -> list[dict]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        n = int(rng.integers(4, max_len))
        ids = rng.integers(3, VOCAB, size=n)
        labels = ids.copy()
        if i % 3:  # a masked prompt; every third sample trains on all tokens
            labels[: int(rng.integers(1, n - 1))] = -100
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def token_losses(model, batch) -> torch.Tensor:
    """Cross-entropy of each position's label, predicted from the previous position."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    return torch.nn.functional.pad(losses, (1, 0)), batch["labels"] != -100


def alone_losses(model, samples) -> list[float]:
    collate = PadCollator(0)
    out = []
    for sample in samples:
        losses, trained = token_losses(model, collate([sample]))
        trained[:, 0] = False  # the first label is never predicted
        out.append((losses[trained].sum() / trained.sum()).item())
    return out


def packed_losses(model, samples, rows, collator) -> list[float]:
    """Per-sample mean loss read out of packed batches (two rows per batch)."""
    packed = PackedSet(samples, rows)
    result: dict[int, float] = {}
    for start in range(0, len(packed), 2):
        features = [packed[i] for i in range(start, min(start + 2, len(packed)))]
        batch = collator(features)
        losses, trained = token_losses(model, batch)
        losses, trained = losses.reshape(-1), trained.reshape(-1)
        offset = 0
        width = batch["input_ids"].shape[1]
        for row_index, feature in enumerate(features):
            if not collator.flatten:
                offset = row_index * width
            for sample_index, n in zip(rows[start + row_index], feature["lengths"]):
                part = slice(offset, offset + n)
                result[sample_index] = (losses[part].sum() / trained[part].sum()).item()
                offset += n
    return [result[i] for i in range(len(samples))]


def tiny_llama(kind: str):
    return build_tiny_decoder(kind, VOCAB, max_position_embeddings=512, initializer_range=0.3)


MODELS = {
    "gemma3-sdpa": lambda: build_tiny_model(VOCAB),
    "gemma3-eager": lambda: build_tiny_model(VOCAB),
    "llama-sdpa": lambda: tiny_llama("llama"),
    "qwen2-sdpa": lambda: tiny_llama("qwen2"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_each_sample_loss_packed_equals_alone(name):
    model = MODELS[name]().eval()
    model.set_attn_implementation(name.split("-")[1])
    prepare_model_for_packing(model)
    # Up to 100 tokens: longer than the tiny Gemma's sliding window (64), which must still
    # apply per sample inside a row.
    samples = random_samples(12, seed=3)
    rows = pack_lengths([len(s["input_ids"]) for s in samples], 256, seed=0)
    assert any(len(row) > 1 for row in rows)
    alone = alone_losses(model, samples)
    packed = packed_losses(model, samples, rows, PackedCollator(0))
    assert packed == pytest.approx(alone, abs=1e-5)


def test_without_isolation_losses_differ_and_the_check_refuses():
    """The control: with a KV cache on, transformers does not see the packing, samples attend
    across the row, and check_isolation stops the run."""
    model = build_tiny_model(VOCAB).eval()
    assert model.config.use_cache
    samples = random_samples(6, seed=4)
    rows = pack_lengths([len(s["input_ids"]) for s in samples], 256, seed=0)
    packed = packed_losses(model, samples, rows, PackedCollator(0))
    assert packed != pytest.approx(alone_losses(model, samples), abs=1e-3)
    with pytest.raises(UserError, match="attend to each other"):
        check_isolation(model, PackedCollator(0))
    prepare_model_for_packing(model)
    check_isolation(model, PackedCollator(0))


def test_isolation_check_keeps_training_mode():
    model = build_tiny_model(VOCAB)
    prepare_model_for_packing(model)
    model.train()
    check_isolation(model, PackedCollator(0))
    assert model.training


def varlen_reference_attention(
    module, query, key, value, attention_mask, scaling=None, sliding_window=None, **kwargs
):
    """What flash-attention's varlen kernel computes, in plain torch: causal attention inside
    each [cu_seq_lens[i], cu_seq_lens[i + 1]) span only. It fails if the span kwargs do not
    reach the attention call, as flash_attention_2 would then attend across samples."""
    cu = kwargs["cu_seq_lens_q"].tolist()
    assert kwargs["cu_seq_lens_k"].tolist() == cu and kwargs["max_length_q"] > 0
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.zeros_like(query)
    for start, end in zip(cu[:-1], cu[1:]):
        n = end - start
        q_idx, kv_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = kv_idx <= q_idx
        if sliding_window:
            allowed &= q_idx - kv_idx < sliding_window
        out[:, :, start:end] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            attn_mask=allowed,
            scale=scaling,
        )
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_flattened_batch_reaches_attention_as_varlen_spans(kind):
    """The flash-attention path, checked on the CPU: the flattened batch's cu_seq_lens reach
    the attention function, and per-sample losses match. (The flash-attn kernel itself needs a
    GPU; this stands in for it with the same contract.)"""
    from transformers import AttentionInterface

    AttentionInterface.register("lmforge_varlen_reference", varlen_reference_attention)
    model = (build_tiny_model(VOCAB) if kind == "gemma3" else tiny_llama("llama")).eval()
    samples = random_samples(10, seed=5)
    alone = alone_losses(model, samples)
    model.set_attn_implementation("lmforge_varlen_reference")
    prepare_model_for_packing(model)
    collator = PackedCollator(0, flatten=True)
    check_isolation(model, collator)
    rows = pack_lengths([len(s["input_ids"]) for s in samples], 256, seed=0)
    assert packed_losses(model, samples, rows, collator) == pytest.approx(alone, abs=1e-5)


def flash_like_attention(module, query, key, value, attention_mask, **kwargs):
    """Like flash-attention without cu_seq_lens: varlen spans only for a single flattened row
    (transformers' rule), plain causal attention over each row otherwise."""
    positions = kwargs.get("position_ids")
    if query.shape[0] == 1 and positions is not None:
        starts = (positions[0] == 0).nonzero().view(-1).tolist() + [query.shape[2]]
        spans = torch.tensor(starts, dtype=torch.int32)
        return varlen_reference_attention(
            module,
            query,
            key,
            value,
            None,
            cu_seq_lens_q=spans,
            cu_seq_lens_k=spans,
            max_length_q=1,
            **{k: v for k, v in kwargs.items() if k.startswith("s")},
        )
    n = query.shape[2]
    spans = torch.tensor([0, n], dtype=torch.int32)
    rows = [
        varlen_reference_attention(
            module,
            query[i : i + 1],
            key[i : i + 1],
            value[i : i + 1],
            None,
            cu_seq_lens_q=spans,
            cu_seq_lens_k=spans,
            max_length_q=n,
            **{k: v for k, v in kwargs.items() if k.startswith("s")},
        )[0]
        for i in range(query.shape[0])
    ]
    return torch.cat(rows), None


def test_isolation_check_runs_several_rows_as_training_does():
    """A flash-like kernel isolates packed samples only in one flattened row: the check, which
    batches two rows, refuses padded rows and accepts the flattened collator."""
    from transformers import AttentionInterface

    AttentionInterface.register("lmforge_varlen_one_row", flash_like_attention)
    model = build_tiny_model(VOCAB).eval()
    model.set_attn_implementation("lmforge_varlen_one_row")
    prepare_model_for_packing(model)
    with pytest.raises(UserError, match="attend to each other"):
        check_isolation(model, PackedCollator(0))
    check_isolation(model, PackedCollator(0, flatten=True))
    for flash in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):
        assert make_collator(0, packing=True, attn_implementation=flash).flatten
    assert not make_collator(0, packing=True, attn_implementation="sdpa").flatten
    assert isinstance(make_collator(0, packing=False, attn_implementation="sdpa"), PadCollator)
