"""GPU-only (skipped without CUDA). Stages with a reference model on a GPU: the Trainer moves
the model it trains there, and the reference (a frozen copy with full/freeze tuning, or an
explicit ref_model) must be there too, or its first forward pass meets batches on another
device. Two steps each, in bf16, with finite losses (run_stage)."""

import pytest
import torch

from conftest import run_stage

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tests/gpu)"),
]


@pytest.mark.parametrize("stage", ["dpo", "kto", "grpo"])
def test_full_tuning_with_a_reference_copy_trains_on_the_gpu(tmp_path, tiny_model_dir, stage):
    run_stage(tmp_path, tiny_model_dir, stage, finetuning_type="full")


def test_lora_with_an_explicit_ref_model_trains_on_the_gpu(tmp_path, tiny_model_dir):
    run_stage(tmp_path, tiny_model_dir, "dpo", ref_model=str(tiny_model_dir))


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_asft_trains_on_the_gpu_and_starts_at_dfts_loss(tmp_path, tiny_model_dir, finetuning_type):
    import json

    from conftest import SHORT_SFT, run_train

    def losses(run):
        lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    settings = {"bf16": True, "max_steps": 2, "save_steps": 100, "finetuning_type": finetuning_type}
    dft = run_train(tmp_path / "dft", tiny_model_dir, SHORT_SFT, use_dft_loss=True, **settings)
    asft = run_train(tmp_path / "asft", tiny_model_dir, SHORT_SFT, use_asft_loss=True, **settings)
    assert losses(asft)[0] == pytest.approx(losses(dft)[0], rel=1e-2)  # KL 0 at the start
