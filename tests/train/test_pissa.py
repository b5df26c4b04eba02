"""PiSSA: fast or full SVD (pissa_iter), and the final adapter converted to plain LoRA
(pissa_convert, always after a fast SVD) so that it loads exactly on the original base."""

import json

import pytest
import torch

from conftest import INFERENCE, SHORT_SFT, run_train, write_config
from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.model import pissa

IDS = torch.tensor([[2, 4, 93, 91, 77, 90, 103, 5, 6]])


def logits_of(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


def reloaded(model_dir, adapter):
    """The original base + the saved adapter, as chat and export load it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return PeftModel.from_pretrained(base, str(adapter))


def adapter_config(folder) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize(
    "settings",
    [
        {},  # LLaMA-Factory's default: fast SVD, 16 iterations -> converted
        {"pissa_iter": -1, "pissa_convert": True},
        {"use_dora": True},  # DoRA's magnitudes survive the conversion (peft's drops them)
        {"use_rslora": True},
    ],
    ids=["fast-svd", "full-svd-convert", "dora", "rslora"],
)
def test_converted_adapter_reloads_as_the_trained_model(tmp_path, tiny_model_dir, settings):
    run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=3, pissa_init=True, **settings)
    trained = logits_of(run.model)
    config = adapter_config(run.output_dir)
    assert config["init_lora_weights"] is True
    assert config["r"] == 16
    alpha = config["lora_alpha"]
    assert alpha == pytest.approx(16 * 2**0.5 if settings.get("use_rslora") else 32)
    assert (run.output_dir / "pissa_init" / "adapter_model.safetensors").is_file()
    assert torch.allclose(logits_of(reloaded(tiny_model_dir, run.output_dir)), trained, atol=1e-5)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(logits_of(base), trained, atol=1e-3)  # it did train


def test_full_svd_adapter_is_kept_as_trained(tmp_path, tiny_model_dir):
    """The full SVD is re-created exactly at load: the adapter stays PiSSA-form, rank 8."""
    run = run_train(
        tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2, pissa_init=True, pissa_iter=-1
    )
    config = adapter_config(run.output_dir)
    assert (config["init_lora_weights"], config["r"]) == ("pissa", 8)
    assert not (run.output_dir / "pissa_init").exists()
    assert torch.allclose(
        logits_of(reloaded(tiny_model_dir, run.output_dir)), logits_of(run.model), atol=1e-5
    )


def test_fast_svd_checkpoint_is_refused_by_loaders(tmp_path, tiny_model_dir, caplog, capsys):
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=4, pissa_init=True)
    assert (
        "PiSSA init (fast SVD, 16 iterations); saved converted to plain LoRA (rank 16), since a "
        "fast-SVD PiSSA adapter cannot be re-created exactly at load" in caplog.text
    )
    checkpoint = run.output_dir / "checkpoint-4"
    assert adapter_config(checkpoint)["init_lora_weights"] == "pissa_niter_16"
    with pytest.raises(UserError, match="use the run's output_dir"):
        pissa.check_reloadable(checkpoint)
    pissa.check_reloadable(run.output_dir)  # converted: loads anywhere
    chat = write_config(
        tmp_path / "chat", tiny_model_dir, INFERENCE, adapter_name_or_path=str(checkpoint)
    )
    capsys.readouterr()
    assert main(["chat", str(chat), "--prompt", "hi"]) == 2
    assert "is a PiSSA adapter initialised by fast SVD" in capsys.readouterr().err


def test_a_resumed_fast_svd_run_ends_with_the_same_adapter(tmp_path, tiny_model_dir):
    """Stopped after checkpoint 2 and continued to 4: the residual base is drawn again from
    the run's seed, the conversion uses the first start's pissa_init, the adapter is the
    uninterrupted run's."""
    from safetensors.torch import load_file

    settings = dict(max_steps=4, save_steps=2, pissa_init=True)
    whole = run_train(tmp_path / "whole", tiny_model_dir, SHORT_SFT, **settings)
    part = tmp_path / "part"
    run_train(part, tiny_model_dir, SHORT_SFT, **{**settings, "max_steps": 2})
    initial = (part / "out" / "pissa_init" / "adapter_model.safetensors").read_bytes()
    resumed = run_train(part, tiny_model_dir, SHORT_SFT, **settings, resume_from_checkpoint="auto")
    assert (part / "out" / "pissa_init" / "adapter_model.safetensors").read_bytes() == initial
    a = load_file(whole.output_dir / "adapter_model.safetensors")
    b = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name


def test_a_fresh_start_in_a_used_folder_replaces_the_initial_adapter(tmp_path, tiny_model_dir):
    """overwrite_output_dir with another seed: the conversion must subtract this run's A0/B0."""
    first = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2, pissa_init=True)
    initial = (first.output_dir / "pissa_init" / "adapter_model.safetensors").read_bytes()
    again = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        pissa_init=True,
        pissa_iter=2,
        overwrite_output_dir=True,
    )
    assert (again.output_dir / "pissa_init" / "adapter_model.safetensors").read_bytes() != initial
    assert torch.allclose(
        logits_of(reloaded(tiny_model_dir, again.output_dir)), logits_of(again.model), atol=1e-5
    )
