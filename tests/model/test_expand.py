"""LLaMA Pro: `lmforge models expand` adds layers that change nothing until trained, and
use_llama_pro trains exactly those layers (freeze and LoRA)."""

import json

import pytest
import torch

from conftest import SHORT_SFT, run_train
from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.model.expand import expand_model, expanded_layer_ids


def test_new_layer_positions_follow_llamafactory():
    assert expanded_layer_ids(24, 8) == [2, 5, 8, 11, 14, 17, 20, 23]  # 16 layers + 8
    assert expanded_layer_ids(4, 2) == [1, 3]


@pytest.fixture(scope="module")
def expanded(tiny_model_dir, tmp_path_factory):
    """The tiny Gemma 3 (2 layers: sliding, full) with a layer after each."""
    out = tmp_path_factory.mktemp("expand") / "pro"
    assert (
        main(["models", "expand", str(tiny_model_dir), "--num-expand", "2", "--output", str(out)])
        == 0
    )
    return out


def test_expanded_model_computes_what_the_original_does(tiny_model_dir, expanded):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    grown = AutoModelForCausalLM.from_pretrained(expanded).eval()
    config = json.loads((expanded / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert config["layer_types"] == [
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "full_attention",
    ]
    ids = torch.tensor([[2, 4, 93, 91, 77, 90, 103, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, grown(ids).logits, atol=1e-5)
    new = grown.model.layers[1]
    assert torch.count_nonzero(new.self_attn.o_proj.weight) == 0
    assert torch.count_nonzero(new.mlp.down_proj.weight) == 0
    assert torch.equal(
        new.self_attn.q_proj.weight, original.model.layers[0].self_attn.q_proj.weight
    )
    assert json.loads((expanded / "llama_pro.json").read_text())["new_layers"] == [1, 3]


@pytest.mark.parametrize("method", ["freeze", "lora"])
def test_use_llama_pro_trains_only_the_added_layers(tmp_path, expanded, method):
    run = run_train(
        tmp_path,
        expanded,
        SHORT_SFT,
        finetuning_type=method,
        use_llama_pro=True,
        freeze_trainable_layers=2,
        max_steps=2,
    )
    trained = {n for n, p in run.model.named_parameters() if p.requires_grad}
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in trained}
    assert layers == {1, 3}, sorted(trained)
    if method == "lora":
        assert all("lora_" in n for n in trained)


def test_expansion_that_does_not_divide_the_layers_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="does not divide the model's 2 layers"):
        expand_model(tiny_model_dir, tmp_path / "x", 3)


def test_llama_pro_with_full_fine_tuning_is_refused(tmp_path, expanded):
    with pytest.raises(UserError, match="finetuning_type full trains every layer"):
        run_train(tmp_path, expanded, SHORT_SFT, finetuning_type="full", use_llama_pro=True)
