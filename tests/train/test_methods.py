"""LoRA variants (DoRA, rsLoRA, PiSSA, LoRA+, extra targets, continued/new adapters), freeze
extras, and the QLoRA / pure_bf16 rules, each trained a few steps on the tiny model."""

import json

import pytest
import torch

from conftest import SHORT_SFT, build_tiny_decoder, run_train, write_config
from lmforge.cli import main
from lmforge.model.adapters import loraplus_param_groups
from lmforge.model.load import attach_adapters, load_model


def adapter_config(run) -> dict:
    return json.loads((run.output_dir / "adapter_config.json").read_text())


@pytest.mark.parametrize(
    "flag, key, expected",
    [
        ("use_dora", "use_dora", True),
        ("use_rslora", "use_rslora", True),
    ],
)
def test_lora_variants_train_and_are_saved(tmp_path, tiny_model_dir, flag, key, expected):
    run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2, **{flag: True})
    assert adapter_config(run)[key] == expected
    assert torch.isfinite(torch.tensor(run.final_loss))


def test_additional_target_is_trained_and_saved_whole(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2, additional_target="embed_tokens"
    )
    assert adapter_config(run)["modules_to_save"] == ["embed_tokens"]
    base = load_model(tiny_model_dir)
    reloaded = attach_adapters(base, [str(run.output_dir)], merge=True)
    before = load_model(tiny_model_dir).get_input_embeddings().weight
    assert not torch.equal(before, reloaded.get_input_embeddings().weight)


def test_loraplus_gives_b_matrices_a_higher_learning_rate(tmp_path, tiny_model_dir):
    run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2, loraplus_lr_ratio=16)
    groups = loraplus_param_groups(run.model, 1e-3, 16, 0.0)
    by_lr = {g["lr"]: len(g["params"]) for g in groups}
    assert set(by_lr) == {1e-3, 1.6e-2}
    assert by_lr[1e-3] == by_lr[1.6e-2]  # one A and one B per adapted layer


def test_loraplus_optimizer_groups_as_llamafactory(tmp_path):
    """optim's class (here SGD, to tell it from AdamW); an embedding adapter's B matrix at
    loraplus_lr_embedding, its A matrix at the learning rate; DoRA's magnitudes (1-D) with the
    B matrices; no weight decay on 1-D parameters. A Llama with an untied head."""
    from transformers import TrainingArguments

    from lmforge.config import load_config
    from lmforge.config.plan import Evaluation, Precision, Resume, RunPlan
    from lmforge.model.adapters import apply_finetuning
    from lmforge.train.stages.base import custom_optimizer

    path = write_config(
        tmp_path,
        tmp_path / "unused",
        SHORT_SFT,
        loraplus_lr_ratio=16,
        loraplus_lr_embedding=3e-5,
        lora_target="embed_tokens,q_proj",
        use_dora=True,
    )
    config = load_config(path)
    plan = RunPlan(lora_alpha=16, precision=Precision(), evaluation=Evaluation(), resume=Resume())
    model = apply_finetuning(build_tiny_decoder("llama", 40), config.method, plan, [], ())
    args = TrainingArguments(
        output_dir=str(tmp_path / "o"), learning_rate=1e-3, weight_decay=0.1, optim="sgd"
    )
    optimizer = custom_optimizer(config, model, args)
    assert isinstance(optimizer, torch.optim.SGD)
    names = {id(p): n.split("base_model.model.")[-1] for n, p in model.named_parameters()}
    where = {
        names[id(p)]: (g["lr"], g["weight_decay"])
        for g in optimizer.param_groups
        for p in g["params"]
    }
    embed, query = "model.embed_tokens", "model.layers.0.self_attn.q_proj"
    assert where[f"{embed}.lora_embedding_B.default"] == (3e-5, 0.1)
    assert where[f"{embed}.lora_embedding_A.default"] == (1e-3, 0.1)
    assert where[f"{query}.lora_B.default.weight"] == (1.6e-2, 0.1)
    assert where[f"{query}.lora_A.default.weight"] == (1e-3, 0.1)
    assert where[f"{query}.lora_magnitude_vector.default.weight"] == (1.6e-2, 0.0)
    assert len(where) == sum(p.requires_grad for p in model.parameters())


def test_lora_on_a_tied_embedding_is_refused(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path, tiny_model_dir, SHORT_SFT, lora_target="embed_tokens,q_proj")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lora_target names embed_tokens, which this model shares with its output head" in err
    assert "name it in additional_target" in err


def test_continue_and_create_new_adapter(tmp_path, tiny_model_dir):
    first = run_train(tmp_path / "a", tiny_model_dir, SHORT_SFT, max_steps=2, lora_rank=4)
    again = run_train(
        tmp_path / "b",
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        adapter_name_or_path=str(first.output_dir),
    )
    assert adapter_config(again)["r"] == 4  # the same adapter, trained further
    fresh = run_train(
        tmp_path / "c",
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        lora_rank=2,
        adapter_name_or_path=str(first.output_dir),
        create_new_adapter=True,
    )
    assert adapter_config(fresh)["r"] == 2  # a new adapter on top of the merged first one


def test_freeze_extra_modules_trains_the_embeddings(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        finetuning_type="freeze",
        freeze_trainable_layers=1,
        freeze_extra_modules="embed_tokens",
    )
    before = load_model(tiny_model_dir).get_input_embeddings().weight
    after = load_model(run.output_dir).get_input_embeddings().weight
    assert not torch.equal(before, after)


def test_freeze_extra_modules_unknown_name(tmp_path, tiny_model_dir):
    with pytest.raises(Exception, match="no module `embeddings` outside the layers"):
        run_train(
            tmp_path,
            tiny_model_dir,
            SHORT_SFT,
            finetuning_type="freeze",
            freeze_extra_modules="embeddings",
        )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["quantization_bit=4", "finetuning_type=full"], "needs finetuning_type: lora"),
        (["quantization_bit=4", "pissa_init=true"], "pissa_init cannot start from a quantized"),
        (["quantization_bit=3"], "quantization_bit: 3 is not supported"),
        (["loraplus_lr_ratio=16", "finetuning_type=full"], "works with finetuning_type: lora"),
    ],
)
def test_method_combinations_refused_before_loading(tmp_path, extra, message, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("model_name_or_path: /nowhere\ndataset: x\noutput_dir: out\n")
    assert main(["train", str(path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_pure_bf16_falls_back_without_native_bf16(tmp_path, tiny_model_dir, caplog):
    from lmforge import device

    if device.supports_bf16():
        pytest.skip("this device has native bf16")
    with caplog.at_level("INFO", logger="lmforge"):
        run_train(
            tmp_path, tiny_model_dir, SHORT_SFT, max_steps=1, finetuning_type="full", pure_bf16=True
        )
    assert "pure_bf16: this device has no native bfloat16" in caplog.text


def test_deepspeed_without_a_distributed_launch(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset: x\noutput_dir: {tmp_path / 'out'}\n"
        "deepspeed: examples/deepspeed/ds_z2_config.json\n"
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert "deepspeed needs a distributed launch" in err and "FORCE_TORCHRUN=1" in err
    else:  # said before anything else: ZeRO cannot run here at all
        assert "DeepSpeed ZeRO-2 needs a CUDA GPU here, and this machine has none" in err
        assert "remove `deepspeed` to train on the CPU" in err
    assert not (tmp_path / "out").exists()


def test_lora_alpha_defaults_to_twice_the_rank_and_dropout_is_saved(tmp_path, tiny_model_dir):
    run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=1, lora_rank=4, lora_dropout=0.1)
    saved = adapter_config(run)
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 8, 0.1)


def test_freeze_first_layers_and_only_named_modules(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        finetuning_type="freeze",
        freeze_trainable_layers=-1,  # the first layer
        freeze_trainable_modules="mlp",
    )
    base = load_model(tiny_model_dir).state_dict()
    after = load_model(run.output_dir).state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all(".layers.0.mlp." in k for k in changed), sorted(changed)
