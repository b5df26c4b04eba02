"""LoRA, freeze and full SFT for a few steps on the tiny model: loss falls, files appear, and
what was saved reloads to the same logits as the model that was trained."""

import json

import pytest
import torch
import yaml

from conftest import FORGE_RECORD, SHORT_SFT, run_train, write_config
from lmforge.config import load_config
from lmforge.model.load import attach_adapters, load_model
from lmforge.train.run import run_training


def logged(run, key="loss"):
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def probe_logits(model) -> torch.Tensor:
    ids = torch.tensor([[2, 4, 93, 91, 77, 90, 103]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_trained_and_logged(run, learning_rate):
    records = logged(run)
    losses = [r["loss"] for r in records]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses
    assert records[-1]["current_steps"] == records[-1]["total_steps"] == 8
    assert records[-1]["num_tokens"] > 0 and records[-1]["throughput"] > 0
    for name in (
        "run_config.yaml",
        "run_plan.yaml",
        "all_results.json",
        "training_loss.png",
        "tokenizer.json",
        "chat_template.jinja",
        "checkpoint-4",
        "checkpoint-8",
    ):
        assert (run.output_dir / name).exists(), name
    assert not (run.output_dir / ".staging").exists()
    saved = yaml.safe_load((run.output_dir / "run_config.yaml").read_text())
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["template"] == "gemma" and saved["learning_rate"] == learning_rate


def test_lora_sft(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path, tiny_model_dir, SHORT_SFT, finetuning_type="lora", lora_rank=4, lora_alpha=32
    )
    assert_trained_and_logged(run, 1e-2)
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    base = load_model(tiny_model_dir)
    base_logits = probe_logits(base)
    reloaded = attach_adapters(base, [str(run.output_dir)], merge=True)
    run.model.eval()
    assert torch.allclose(probe_logits(reloaded), probe_logits(run.model), atol=1e-5)
    assert not torch.allclose(base_logits, probe_logits(reloaded), atol=1e-3)


def test_full_sft(tmp_path, tiny_model_dir):
    run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, finetuning_type="full", learning_rate=1e-3)
    assert_trained_and_logged(run, 1e-3)
    reloaded = load_model(run.output_dir)
    run.model.eval()
    assert torch.allclose(probe_logits(reloaded), probe_logits(run.model), atol=1e-5)


def test_freeze_sft_trains_only_last_layer(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        finetuning_type="freeze",
        freeze_trainable_layers=1,
        learning_rate=1e-2,
    )
    assert_trained_and_logged(run, 1e-2)
    base = load_model(tiny_model_dir).state_dict()
    reloaded = load_model(run.output_dir)
    after = reloaded.state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all(".layers.1." in k for k in changed), sorted(changed)
    run.model.eval()
    assert torch.allclose(probe_logits(reloaded), probe_logits(run.model), atol=1e-5)


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_mixed_precision_falls_back_on_cpu_without_support(tmp_path, tiny_model_dir, flag, caplog):
    from lmforge import device

    if flag == "bf16" and device.supports_bf16():
        pytest.skip("this CPU has native bf16")
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=1, **{flag: True})
    assert "training runs in fp32" in caplog.text
    # What the user asked for is kept as written; what was derived is in the plan.
    assert yaml.safe_load((run.output_dir / "run_config.yaml").read_text())[flag] is True
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan[flag] is False and plan["precision"] == "fp32"
    assert any(flag in note and "fp32" in note for note in plan["notes"])


def test_resume_from_checkpoint_ends_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    full = run_train(tmp_path / "a", tiny_model_dir, SHORT_SFT, max_steps=6, save_steps=3)
    first = run_train(tmp_path / "b", tiny_model_dir, SHORT_SFT, max_steps=6, save_steps=3)
    # Pretend the run died after checkpoint-3: resume continues from there.
    resumed = run_train(
        tmp_path / "b",
        tiny_model_dir,
        SHORT_SFT,
        max_steps=6,
        save_steps=3,
        resume_from_checkpoint=str(first.output_dir / "checkpoint-3"),
    )
    losses_full = [r["loss"] for r in logged(full)]
    losses_resumed = [r["loss"] for r in logged(resumed)]
    assert losses_resumed == pytest.approx(losses_full, abs=1e-6)
    assert [r["current_steps"] for r in logged(resumed)] == [1, 2, 3, 4, 5, 6]
    assert torch.allclose(
        probe_logits(full.model.eval()), probe_logits(resumed.model.eval()), atol=1e-6
    )


def test_training_leaves_the_config_as_written(tmp_path, tiny_model_dir):
    """Derived settings (lora_alpha's default, precision fallbacks, the evaluation schedule
    early stopping needs) go into the plan, not back into the config."""
    config_path = write_config(
        tmp_path,
        tiny_model_dir,
        records=[FORGE_RECORD] * 8,
        per_device_train_batch_size=2,
        max_steps=2,
        lora_rank=4,
        fp16=True,
        val_size=2,
        early_stopping_patience=3,
        save_steps=2,
        eval_steps=1,
    )
    config = load_config(config_path)
    before = config.to_flat_dict()
    run = run_training(config)
    assert config.to_flat_dict() == before
    assert config.method.lora_alpha is None and config.train.fp16 is True
    assert config.train.eval_strategy == "no" and config.train.load_best_model_at_end is False
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["lora_alpha"] == 8 and plan["template"] == "gemma" and plan["fp16"] is False
    assert plan["eval_strategy"] == "steps" and plan["load_best_model_at_end"] is True
    saved = yaml.safe_load((run.output_dir / "run_config.yaml").read_text())
    assert saved["lora_alpha"] is None and saved["fp16"] is True


def _training_order(monkeypatch, tmp_path, tiny_model_dir, **settings) -> list[int]:
    """Which record (its answer "Answer <i>.") each step of one epoch trained on."""
    from transformers import Trainer

    from conftest import VOCAB

    words = {i: w for w, i in VOCAB.items()}
    seen = []
    training_step = Trainer.training_step

    def spy(self, model, inputs, *args, **kwargs):
        text = "".join(words.get(int(i), "") for i in inputs["input_ids"].flatten())
        seen.append(int(text.split("Answer ")[1].split(".")[0]))
        return training_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", spy)
    records = [{"instruction": f"Q{i}", "input": "", "output": f"Answer {i}."} for i in range(8)]
    run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        records=records,
        per_device_train_batch_size=1,
        max_steps=-1,
        num_train_epochs=1,
        save_steps=100,
        **settings,
    )
    monkeypatch.undo()
    return seen


def test_disable_shuffling_trains_in_the_datasets_order(monkeypatch, tmp_path, tiny_model_dir):
    shuffled = _training_order(monkeypatch, tmp_path / "a", tiny_model_dir)
    in_order = _training_order(monkeypatch, tmp_path / "b", tiny_model_dir, disable_shuffling=True)
    assert sorted(shuffled) == list(range(8)) and shuffled != list(range(8))
    assert in_order == list(range(8))


@pytest.mark.parametrize(
    "settings",
    [
        {"disable_shuffling": True, "train_sampling_strategy": "group_by_length"},
        {"disable_shuffling": True, "group_by_length": True},
    ],
)
def test_two_training_orders_are_refused(tmp_path, tiny_model_dir, settings):
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="ask for two orders"):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, **settings)


def test_group_by_length_batches_samples_of_similar_length(monkeypatch, tmp_path, tiny_model_dir):
    """LLaMA-Factory's group_by_length: transformers' length-grouped sampler. 64 samples in
    batches of 4 come in megabatches of 16 (64 // (4 x 4)), each sorted longest first (its
    first sample may be swapped to put the longest of all first)."""
    from transformers import Trainer

    from lmforge.errors import UserError

    seen = []
    training_step = Trainer.training_step

    def spy(self, model, inputs, *args, **kwargs):
        seen.extend(inputs["attention_mask"].sum(-1).tolist())
        return training_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", spy)
    records = [
        {"instruction": "Q" * (1 + 7 * (i % 4)), "input": "", "output": "A" * (2 + 9 * (i % 4))}
        for i in range(64)
    ]
    settings = dict(
        records=records,
        per_device_train_batch_size=4,
        max_steps=-1,
        num_train_epochs=1,
        padding_free=False,
        val_size=0,
    )
    run_train(tmp_path, tiny_model_dir, SHORT_SFT, group_by_length=True, **settings)
    assert len(seen) == 64 and seen[0] == max(seen)
    for start in range(0, 64, 16):
        megabatch = seen[start + 1 : start + 16]
        assert megabatch == sorted(megabatch, reverse=True), seen
    seen.clear()
    run_train(tmp_path / "random", tiny_model_dir, SHORT_SFT, **settings)
    assert any(
        seen[s + 1 : s + 16] != sorted(seen[s + 1 : s + 16], reverse=True) for s in (0, 16, 32)
    )
    from lmforge.train.run import sampling_arguments

    dpo = load_config(
        write_config(tmp_path / "dpo", tiny_model_dir, SHORT_SFT, stage="dpo", group_by_length=True)
    )
    with pytest.raises(UserError, match="stage dpo batches pairs"):
        sampling_arguments(dpo)
