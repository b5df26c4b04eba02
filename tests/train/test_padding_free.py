"""Padding-free batches: a batch's samples side by side in one row, no padding computed, and
the same loss and gradients as the padded batch of the same samples."""

import json

import pytest
import torch

from conftest import TOY_RECORDS, build_tiny_model, loss_and_grads, run_train
from lmforge.data.encoding.collate import PadCollator, make_collator
from lmforge.model.packing import prepare_model_for_packing

VOCAB = 120


def samples(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        prompt = n // 3
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def test_one_row_with_restarting_positions_and_no_varlen_kwargs_for_sdpa():
    collator = make_collator(0, packing=False, attn_implementation="sdpa", padding_free=True)
    batch = collator(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8, 9], "labels": [8, 9]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # A sample's first token is never predicted from the previous sample's last one.
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    flash = make_collator(
        0, packing=False, attn_implementation="flash_attention_2", padding_free=True
    )
    assert flash([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}])["cu_seq_lens_q"].tolist() == [
        0,
        3,
    ]


def test_loss_and_gradients_equal_the_padded_batch():
    model = build_tiny_model(VOCAB)
    prepare_model_for_packing(model)
    # 90 tokens: past the tiny Gemma's sliding window (64), which must still apply per sample.
    features = samples([9, 90, 23, 41])
    padded = PadCollator(0)(features)
    flat = make_collator(0, packing=False, attn_implementation="sdpa", padding_free=True)(features)
    assert padded["input_ids"].numel() == 4 * 90 and flat["input_ids"].numel() == 9 + 90 + 23 + 41
    padded_loss, padded_grads = loss_and_grads(model, padded)
    flat_loss, flat_grads = loss_and_grads(model, flat)
    assert flat_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, grad in padded_grads.items():
        assert torch.allclose(flat_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_training_curve_is_the_same_with_and_without(tmp_path, tiny_model_dir, caplog):
    def losses(name, **overrides):
        run = run_train(
            tmp_path,
            tiny_model_dir,
            records=TOY_RECORDS,  # answers of different lengths
            name=name,
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=4,
            max_steps=4,
            logging_steps=1,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            **overrides,
        )
        assert run.model.config._attn_implementation == "sdpa"  # per-sample attention undone
        lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    padded = losses("padded", padding_free=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="lmforge"):
        padding_free = losses("padding_free", padding_free=True)
    assert "padding-free (each batch in one row)" in caplog.text
    assert "attention: sdpa, one call per sample (no row-wide mask)" in caplog.text
    assert len(padded) == 4
    assert padding_free == pytest.approx(padded, rel=1e-4)
