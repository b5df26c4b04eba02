"""Several LoRA adapters on one base, served as separate model names, switched per request."""

from __future__ import annotations

import pytest
import torch

from conftest import INFERENCE, OMIT, write_config
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.infer.engine import HFEngine


def make_adapter(base_dir, out_dir, seed: int):
    """A LoRA adapter with random (non-zero) weights: it visibly changes the model's output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_adapter(tiny_model_dir, root / name, seed)
        for seed, name in enumerate(["medical", "legal"], start=1)
    }


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapter_dirs, tmp_path_factory):
    path = write_config(
        tmp_path_factory.mktemp("multi"),
        tiny_model_dir,
        INFERENCE,
        served_model_name="base",
        adapters={k: str(v) for k, v in adapter_dirs.items()},
        do_sample=False,
        max_new_tokens=24,
        repetition_penalty=1.5,  # varied text from the random tiny model
    )
    engine = HFEngine.from_config(load_config(path))
    yield engine
    engine.close()


def answer_alone(tiny_model_dir, adapter_dir) -> str:
    """The same request on a separately loaded model with only that adapter (merged)."""
    path = write_config(
        adapter_dir.parent if adapter_dir else tiny_model_dir.parent,
        tiny_model_dir,
        INFERENCE,
        adapter_name_or_path=str(adapter_dir) if adapter_dir else None,
        do_sample=False,
        max_new_tokens=24,
        repetition_penalty=1.5,
    )
    engine = HFEngine.from_config(load_config(path))
    try:
        return engine.generate([{"role": "user", "content": "Hello there"}])
    finally:
        engine.close()


def test_each_model_name_answers_like_its_adapter_alone(engine, tiny_model_dir, adapter_dirs):
    assert engine.model_names == ["base", "medical", "legal"]
    messages = [{"role": "user", "content": "Hello there"}]
    # Submitted together, so the worker switches adapters between interleaved steps.
    streams = {m: engine.stream(messages, model=m) for m in engine.model_names * 2}
    got = {m: "".join(s) for m, s in streams.items()}
    expected = {
        "base": answer_alone(tiny_model_dir, None),
        "medical": answer_alone(tiny_model_dir, adapter_dirs["medical"]),
        "legal": answer_alone(tiny_model_dir, adapter_dirs["legal"]),
    }
    assert len(set(expected.values())) == 3  # the adapters really change the answer
    assert got == expected


def test_interleaved_requests_for_different_adapters_do_not_mix(engine):
    messages = [{"role": "user", "content": "Hello there"}]
    alone = {m: engine.generate(messages, model=m) for m in engine.model_names}
    prompt = engine.encode_chat(messages)
    params = engine.sampling_params()
    streams = [(m, engine.submit(prompt.ids, params, model=m)) for m in engine.model_names * 3]
    for model, stream in streams:
        assert "".join(c.text for c in stream) == alone[model]


def test_unknown_model_name_and_bad_adapter_folder(engine, tiny_model_dir, tmp_path):
    with pytest.raises(LookupError):
        engine.adapter_for("nope")
    path = write_config(tmp_path, tiny_model_dir, INFERENCE, adapters={"x": str(tmp_path)})
    with pytest.raises(UserError, match="adapter `x` folder .* has no adapter_config.json"):
        HFEngine.from_config(load_config(path))


def test_adapter_name_equal_to_base_name_is_refused(tiny_model_dir, adapter_dirs, tmp_path):
    path = write_config(
        tmp_path,
        tiny_model_dir,
        INFERENCE,
        served_model_name="same",
        adapters={"same": str(adapter_dirs["legal"])},
    )
    with pytest.raises(UserError, match="also the base model's name"):
        HFEngine.from_config(load_config(path))


def test_template_and_thinking_settings_come_from_training(
    tiny_model_dir, adapter_dirs, tmp_path, tiny_tokenizer
):
    """An adapter trained with qwen3, thinking off and a default system prompt is served with
    them when the inference YAML does not say otherwise; a key the YAML sets wins."""
    import shutil

    import yaml

    adapter = tmp_path / "saves" / "qwen3-nothink"
    shutil.copytree(adapter_dirs["legal"], adapter)
    trained = {"template": "qwen3", "enable_thinking": False, "default_system": "Be terse."}
    (adapter / "run_config.yaml").write_text(yaml.safe_dump(trained))
    path = write_config(
        tmp_path, tiny_model_dir, INFERENCE, template=OMIT, adapter_name_or_path="saves"
    )
    messages = [{"role": "user", "content": "Hi"}]

    def prompt(overrides: list[str]) -> tuple[HFEngine, str]:
        engine = HFEngine.from_config(load_config(path, overrides))
        engine.close()
        ids = engine.encode_chat(messages).ids
        thinking = engine.encode_chat(messages, enable_thinking=True).ids
        no_thinking = engine.encode_chat(messages, enable_thinking=False).ids
        assert thinking != no_thinking and ids in (thinking, no_thinking)
        return engine, tiny_tokenizer.decode(ids)

    # A checkpoint folder has no run_config.yaml of its own: its run folder's is used.
    checkpoint = adapter / "checkpoint-5"
    shutil.copytree(adapter_dirs["legal"], checkpoint)
    for folder in (adapter, checkpoint):
        engine, text = prompt([f"adapter_name_or_path={folder}"])
        assert engine.template.name == "qwen3"
        assert engine.enable_thinking is False and engine.default_system == "Be terse."
        assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
        assert text.endswith("<|im_start|>assistant\n<think><unk></think><unk>")  # "\n\n": <unk>

    engine, text = prompt([f"adapter_name_or_path={adapter}", "enable_thinking=true"])
    assert engine.template.name == "qwen3" and engine.enable_thinking is True
    assert text.endswith("<|im_start|>assistant\n")
