"""GGUF export for every family it supports, on tiny models: written with the tokenizer and
chat template inside, loaded back through transformers' GGUF loader, and compared."""

import json

import pytest
import torch

from conftest import INFERENCE, SHORT_SFT, run_train, write_config
from lmforge.cli import main

FAMILY_TEMPLATES = {
    "gemma3": "gemma",
    "llama": "chatml",
    "mistral": "chatml",
    "qwen2": "chatml",
    "qwen3": "chatml",
}


def export(tmp_path, model_dir, **settings):
    path = write_config(tmp_path, model_dir, INFERENCE, name="export", **settings)
    return main(["export", str(path)])


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATES))
def test_gguf_round_trip(tmp_path, family, family_model_dir, capsys):
    from lmforge.export.gguf_file import GGUF_FILE

    out = tmp_path / "exported"
    code = export(
        tmp_path,
        family_model_dir(family),
        template=FAMILY_TEMPLATES[family],
        finetuning_type="full",
        export_dir=str(out),
        export_gguf="f16",
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    report = json.loads((out / "export_report.json").read_text())
    gguf = report["parity"]["gguf"]
    assert gguf["passed"] and gguf["mean_kl"] < 1e-4, gguf
    assert gguf["tokenizer_identical"] == gguf["prompts"] and gguf["chat_template_identical"]
    assert "FROM ./model.gguf" in (out / "Modelfile").read_text()
    assert f"GGUF f16: mean KL {gguf['mean_kl']:.3g}" in stdout
    metadata = _metadata(out / GGUF_FILE)
    assert metadata["general.architecture"] == {"mistral": "llama"}.get(family, family)
    assert metadata["tokenizer.chat_template"]
    rows = json.loads((out / "config.json").read_text())["vocab_size"]
    assert metadata["tokens"] == rows  # Qwen2's padded rows get [PAD] tokens


def test_gguf_q8_0_of_a_trained_adapter_loads_and_answers(tmp_path, family_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = family_model_dir("gemma3")
    run = run_train(tmp_path / "run", base, SHORT_SFT, max_steps=6, val_size=4)
    out = tmp_path / "exported"
    code = export(
        tmp_path,
        base,
        adapter_name_or_path=str(run.output_dir),
        export_dir=str(out),
        export_gguf="q8_0",
    )
    report = json.loads((out / "export_report.json").read_text())
    assert code == 0, report["parity"]
    gguf = report["parity"]["gguf"]
    assert gguf["kind"] == "q8_0" and gguf["mean_kl"] <= gguf["thresholds"]["mean_kl"]
    assert "GGUF q8_0" in (out / "README.md").read_text()
    # The file alone: transformers reads tokenizer and model from it, and the model answers.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.gguf").symlink_to(out / "model.gguf")
    tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(alone, gguf_file="model.gguf", dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    answer = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert answer.shape[1] > prompt["input_ids"].shape[1]


def test_pre_tokenizer_names_are_the_ones_transformers_reads():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from lmforge.export.gguf_vocab import PRE_TOKENIZERS

    for name, regex in PRE_TOKENIZERS.items():
        assert GGUF_PRE_TOKENIZER_SPLITS[name] == regex, name


def _metadata(path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    wanted = ("general.architecture", "tokenizer.chat_template")
    found = {key: reader.fields[key].contents() for key in wanted if key in reader.fields}
    return {**found, "tokens": len(reader.fields["tokenizer.ggml.tokens"].data)}
