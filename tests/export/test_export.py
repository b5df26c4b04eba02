"""`lmforge export` on the tiny model: the merged folder equals base + adapter, the tokenizer
renders what was trained, the files are all there, and what is not proven never becomes
export_dir (a failed parity check, Ctrl-C, SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import INFERENCE, SHORT_SFT, run_train, write_config
from lmforge.cli import main
from lmforge.data.templates.named import get_template
from lmforge.model.load import attach_adapters, load_model, load_tokenizer

PROBE = torch.tensor([[2, 4, 93, 91, 77, 90, 103, 5, 6]])
SYSTEM = "You are Forge."


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """A LoRA SFT run with an eval split and a default system prompt."""
    folder = tmp_path_factory.mktemp("lora-run")
    return run_train(
        folder, tiny_model_dir, SHORT_SFT, val_size=4, default_system=SYSTEM
    ).output_dir


def export(tmp_path, model_dir, name="export", **settings):
    path = write_config(tmp_path, model_dir, INFERENCE, name=name, **settings)
    return main(["export", str(path)])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def test_lora_export(tmp_path, tiny_model_dir, lora_run, capsys):
    out = tmp_path / "exported"
    code = export(
        tmp_path,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(out),
        export_size=0.00003,  # GB: several shards of the tiny model
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert f"Exported to {out}" in stdout and "-> passed" in stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "Modelfile",
        "README.md",
        "export_report.json",
    } <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    assert not list(tmp_path.glob(".exported.partial-*"))

    # Merged weights: the logits of base + adapter (peft, not merged), within float rounding.
    reference = attach_adapters(load_model(tiny_model_dir), [str(lora_run)], merge=False)
    exported = load_model(out)
    assert (logits(exported) - logits(reference)).abs().max() < 1e-4

    # Generation stops at every stop token of the template.
    tokenizer = load_tokenizer(out)
    generation = json.loads((out / "generation_config.json").read_text())
    gemma = get_template("gemma").with_options(default_system=SYSTEM)
    assert generation["eos_token_id"] == gemma.stop_token_ids(tokenizer)

    # apply_chat_template renders what was trained, default system prompt included.
    messages = [{"role": "user", "content": "Who are you?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    trained = gemma.render(tokenizer, messages, add_generation_prompt=True)
    assert rendered == "".join(s.text for s in trained) and SYSTEM in rendered

    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and report["parity"]["folder"]["identical"] == 4
    assert "eval split" in report["parity"]["source"]
    assert report["parity"]["folder"]["max_abs_logit_diff"] < 1e-3
    card = (out / "README.md").read_text()
    assert "base_model:" in card and str(lora_run) in card and "toy" in card
    assert "greedy answers identical" in card and "lora_rank" in card
    modelfile = (out / "Modelfile").read_text()
    assert "FROM .\n" in modelfile and f'SYSTEM """{SYSTEM}"""' in modelfile


def test_failed_parity_is_set_aside_and_export_dir_kept(
    tmp_path, tiny_model_dir, lora_run, monkeypatch, capsys
):
    from lmforge.export import parity

    out = tmp_path / "exported"
    settings = dict(adapter_name_or_path=str(lora_run), export_dir=str(out))
    assert export(tmp_path, tiny_model_dir, **settings) == 0
    first = (out / "export_report.json").read_text()
    monkeypatch.setitem(parity.FOLDER_LOGIT_TOLERANCE, "float32", -1.0)
    capsys.readouterr()
    assert export(tmp_path, tiny_model_dir, **settings) == 1
    stdout = capsys.readouterr().out
    assert "Parity check FAILED" in stdout and "FAILED" in stdout.splitlines()[1]
    assert (out / "export_report.json").read_text() == first  # the good export stays
    failed = tmp_path / "exported.parity-failed"
    assert not json.loads((failed / "export_report.json").read_text())["passed"]
    monkeypatch.undo()
    (out / "marker").write_text("from the earlier export")
    assert export(tmp_path, tiny_model_dir, **settings) == 0  # an export replaces an export
    assert not (out / "marker").exists() and (out / "export_report.json").is_file()


def test_ctrl_c_leaves_nothing(tmp_path, tiny_model_dir, lora_run, monkeypatch):
    from lmforge.export import folder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folder, "write_generation_config", interrupted)
    out = tmp_path / "exported"
    code = export(tmp_path, tiny_model_dir, adapter_name_or_path=str(lora_run), export_dir=str(out))
    assert code == 130
    assert not out.exists() and not list(tmp_path.glob(".exported*"))


def test_sigkill_leaves_no_folder_that_looks_complete(tmp_path, family_model_dir):
    model_dir = family_model_dir("gemma3")
    out = tmp_path / "exported"
    path = write_config(
        tmp_path,
        model_dir,
        INFERENCE,
        name="export",
        finetuning_type="full",
        export_dir=str(out),
        export_gguf="f16",
    )
    command = [sys.executable, "-m", "lmforge", "export", str(path)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".exported.partial-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # the only folder is the hidden staging one
    assert [
        p.name.startswith(".exported.partial-") for p in tmp_path.iterdir() if "exported" in p.name
    ] == [True]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "export_report.json").is_file()
    assert not list(tmp_path.glob(".exported.partial-*"))  # the dead one was removed


def test_two_adapters_merged_in_order_as_chat_loads_them(tmp_path, tiny_model_dir, lora_run):
    second = run_train(
        tmp_path / "second",
        tiny_model_dir,
        SHORT_SFT,
        adapter_name_or_path=str(lora_run),
        create_new_adapter=True,
        max_steps=4,
    ).output_dir
    out = tmp_path / "exported"
    code = export(
        tmp_path, tiny_model_dir, adapter_name_or_path=f"{lora_run},{second}", export_dir=str(out)
    )
    assert code == 0
    chat_model = attach_adapters(
        load_model(tiny_model_dir), [str(lora_run), str(second)], merge=True
    )
    assert (logits(load_model(out)) - logits(chat_model)).abs().max() < 1e-4
    assert json.loads((out / "export_report.json").read_text())["adapters"] == [
        str(lora_run),
        str(second),
    ]


def test_full_run_resaved_in_bf16_and_legacy_format(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path / "full", tiny_model_dir, SHORT_SFT, finetuning_type="full", max_steps=2
    )
    out = tmp_path / "exported"
    code = export(
        tmp_path,
        run.output_dir,
        finetuning_type="full",
        export_dir=str(out),
        export_dtype="bf16",
        export_legacy_format=True,
    )
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert "pytorch_model.bin" in names and not any(n.endswith(".safetensors") for n in names)
    loaded = load_model(out, dtype=torch.float32)
    reference = load_model(run.output_dir)
    assert (logits(loaded) - logits(reference)).abs().max() < 1.0  # bf16 rounding
    report = json.loads((out / "export_report.json").read_text())
    assert report["dtype"] == "bfloat16" and report["training"]["finetuning_type"] == "full"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_reward_model_keeps_its_value_head(tmp_path, tiny_model_dir):
    from conftest import write_rl_datasets

    data = write_rl_datasets(tmp_path / "data")
    run = run_train(
        tmp_path / "rm",
        tiny_model_dir,
        {"records": None},
        stage="rm",
        dataset="pairs",
        dataset_dir=str(data),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
    )
    out = tmp_path / "exported"
    assert (
        export(
            tmp_path, tiny_model_dir, adapter_name_or_path=str(run.output_dir), export_dir=str(out)
        )
        == 0
    )
    head = "value_head.safetensors"
    assert (out / head).read_bytes() == (run.output_dir / head).read_bytes()
    folder = json.loads((out / "export_report.json").read_text())["parity"]["folder"]
    assert folder["value_head_max_diff"] is not None and folder["value_head_max_diff"] < 1e-3


def test_hub_push_fails_in_one_line_without_network(
    tmp_path, tiny_model_dir, lora_run, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "exported"
    code = export(
        tmp_path,
        tiny_model_dir,
        adapter_name_or_path=str(lora_run),
        export_dir=str(out),
        export_hub_model_id="someone/forge",
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert code == 2
    assert err.startswith("error: pushing") and "someone/forge" in err and "hf upload" in err
    assert (out / "export_report.json").is_file()  # the export itself is complete


def test_llamafactory_export_keys(tmp_path, tiny_model_dir, lora_run):
    from lmforge.config import load_config

    path = tmp_path / "lf.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_model_dir),
                "adapter_name_or_path": str(lora_run),
                "template": "gemma",
                "finetuning_type": "lora",
                "export_dir": "out",
                "export_size": 2,
                "export_device": "cpu",
                "export_legacy_format": False,
                "infer_dtype": "bfloat16",
                "export_hub_model_id": None,
                "export_quantization_bit": 4,
            }
        )
    )
    config = load_config(path)
    assert config.export.export_size == 2 and config.export.export_device == "cpu"
    assert config.export.export_dir == os.path.abspath("out")  # an output: working directory
    assert [key for key, _ in config.not_used] == ["export_quantization_bit"]
