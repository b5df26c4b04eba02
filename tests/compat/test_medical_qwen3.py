"""Tutorial 1: Qwen3-8B medical LoRA SFT (medical-o1 reasoning data, template qwen3), then the
tutorial's inference YAML in `lmforge chat`, from the same folder, finding the adapter the
training wrote. Both files run as the tutorial has them; the training command only adds
`max_steps=2 logging_steps=1` (two steps, each one's loss logged)."""

from __future__ import annotations

import yaml

from compat.conftest import PROMPTS, step_losses
from lmforge.cli import main

TRAIN = "examples/train_lora/qwen3_lora_sft_medical.yaml"
INFER = "examples/inference/qwen3_lora_sft_medical.yaml"


def test_medical_lora_sft_then_chat_with_the_adapter(llamafactory_dir, monkeypatch, capsys):
    code = main(["train", TRAIN, "max_steps=2", "logging_steps=1"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    out = llamafactory_dir / "saves/qwen3-8b/lora/sft"
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()  # the last step's
    assert (out / "training_loss.png").is_file()  # plot_loss: true
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["template"] == "qwen3" and saved["max_steps"] == 2
    losses = step_losses(out)
    assert sorted(losses) == [1, 2] and all(loss > 0 for loss in losses.values()), losses
    # The reasoning in the <think> block is trained (qwen3 is a reasoning template).
    assert "carry reasoning that is not trained" not in err

    # The inference YAML's `adapter_name_or_path: saves/qwen3-8b/lora/sft` is the folder above.
    attached = []
    import lmforge.model.load as model_load

    original = model_load.attach_adapters

    def recording(model, paths, **kwargs):
        attached.append(list(paths))
        return original(model, paths, **kwargs)

    monkeypatch.setattr(model_load, "attach_adapters", recording)
    assert main(["chat", INFER, "--prompt", PROMPTS["medical"]]) == 0, capsys.readouterr().err
    answer = capsys.readouterr()
    assert "error:" not in answer.err
    assert answer.out.strip(), "the chat printed no answer"
    assert attached == [[str(out)]]
