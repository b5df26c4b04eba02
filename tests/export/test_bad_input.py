"""Bad export input: one paragraph each (exit 2), before anything is written."""

import json

import pytest

from conftest import INFERENCE, SHORT_SFT, build_tiny_tokenizer, run_train, write_config
from lmforge.cli import main


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    return run_train(
        tmp_path_factory.mktemp("lora-run"), tiny_model_dir, SHORT_SFT, max_steps=2
    ).output_dir


def refused(tmp_path, capsys, model_dir, **settings) -> str:
    """Run the export; it must exit 2 with one paragraph and leave nothing behind."""
    before = set(tmp_path.rglob("*"))
    path = write_config(tmp_path, model_dir, INFERENCE, name="export", **settings)
    capsys.readouterr()
    code = main(["export", str(path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, err
    assert err.startswith("error: ") and "Fix: " in err
    written = {p for p in set(tmp_path.rglob("*")) - before if p != path}
    assert not written, written
    return err


def test_export_into_the_models_own_folder(tmp_path, capsys, tiny_model_dir, lora_run):
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(lora_run),
    )
    assert "which the export reads" in err and "outside the model and adapter folders" in err
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(tiny_model_dir / "merged"),
    )
    assert f"is inside {tiny_model_dir.resolve()}" in err


def test_export_dir_is_a_file(tmp_path, capsys, tiny_model_dir, lora_run):
    target = tmp_path / "model.bin"
    target.write_text("not a folder")
    err = refused(
        tmp_path, capsys, tiny_model_dir, adapter_name_or_path=str(lora_run), export_dir=str(target)
    )
    assert "is a file" in err


def test_export_dir_holding_other_files(tmp_path, capsys, tiny_model_dir, lora_run):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(tmp_path / "busy"),
    )
    assert "not an lmforge export" in err


def test_missing_adapter(tmp_path, capsys, tiny_model_dir):
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(tmp_path / "nope"),
        export_dir=str(tmp_path / "out"),
    )
    assert "does not exist" in err and "nope" in err


def test_adapter_trained_on_another_base(tmp_path, capsys, tiny_model_dir, lora_run):
    from conftest import build_tiny_decoder

    other = tmp_path / "other-base"
    tokenizer = build_tiny_tokenizer()
    build_tiny_decoder(
        "llama", len(tokenizer), hidden_size=48, num_attention_heads=2
    ).save_pretrained(other)
    tokenizer.save_pretrained(other)
    err = refused(
        tmp_path,
        capsys,
        other,
        adapter_name_or_path=str(lora_run),
        export_dir=str(tmp_path / "out"),
    )
    assert "does not fit the base model" in err and "shape" in err
    assert (
        str(json.loads((lora_run / "adapter_config.json").read_text())["base_model_name_or_path"])
        in err
    )


def test_quantized_base_is_refused(tmp_path, capsys, tiny_model_dir, lora_run):
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(tmp_path / "out"),
        quantization_bit=4,
    )
    assert "cannot be merged exactly into 4-bit" in err and "remove quantization_bit" in err
    stored = tmp_path / "bnb-base"
    stored.mkdir()
    for item in tiny_model_dir.iterdir():
        (stored / item.name).write_bytes(item.read_bytes())
    config = json.loads((stored / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (stored / "config.json").write_text(json.dumps(config))
    err = refused(
        tmp_path,
        capsys,
        stored,
        adapter_name_or_path=str(lora_run),
        export_dir=str(tmp_path / "out"),
    )
    assert "stored quantized (bitsandbytes 4-bit)" in err and "full-precision" in err


def test_a_full_model_given_as_adapter(tmp_path, capsys, tiny_model_dir):
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(tiny_model_dir),
        export_dir=str(tmp_path / "out"),
    )
    assert "not a LoRA adapter" in err and f"model_name_or_path: {tiny_model_dir}" in err


def test_gguf_of_a_tokenizer_gguf_cannot_hold(tmp_path, capsys, family_model_dir):
    folder = tmp_path / "char-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((family_model_dir("gemma3") / name).read_bytes())
    build_tiny_tokenizer().save_pretrained(folder)  # WordLevel: one id per character
    err = refused(
        tmp_path,
        capsys,
        folder,
        finetuning_type="full",
        export_dir=str(tmp_path / "out"),
        export_gguf="q8_0",
    )
    assert "cannot write this tokenizer (a WordLevel tokenizer.json)" in err


def test_gguf_of_a_gemma3_llama_cpp_would_misread(tmp_path, capsys, tiny_model_dir, lora_run):
    err = refused(
        tmp_path,
        capsys,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(tmp_path / "out"),
        export_gguf="f16",
    )
    assert "this Gemma 3 model cannot be written as a GGUF" in err
    assert "global attention layers are not every 6th layer" in err


def test_gguf_of_an_architecture_we_cannot_convert(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    tokenizer = build_tiny_tokenizer()
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    err = refused(
        tmp_path,
        capsys,
        folder,
        finetuning_type="full",
        export_dir=str(tmp_path / "out"),
        export_gguf="f16",
    )
    assert "cannot convert a `gpt2` model" in err
    assert "Gemma 3 (text), Llama, Mistral, Qwen2/Qwen2.5 and Qwen3" in err


def test_no_export_dir(tmp_path, capsys, tiny_model_dir, lora_run):
    err = refused(tmp_path, capsys, tiny_model_dir, adapter_name_or_path=str(lora_run))
    assert "`export_dir` is not set" in err
