"""Models whose forward does not take transformers' newer inputs: remote code with its
arguments spelled out (no `logits_to_keep`, no padding-free `cu_seq_lens_q`), and how training
adapts to them (padded rows, the model's own loss) instead of stopping with a TypeError."""

import json

import pytest

from conftest import FORGE_RECORD, build_tiny_decoder, build_tiny_tokenizer, run_train
from lmforge.model.forward_inputs import forward_takes, is_transformers_model
from lmforge.train.losses.linear_ce import NO_POSITION, logits_to_keep_for

# A remote-code model as older Hub repositories ship them: the forward names its arguments and
# has no **kwargs.
SPELLED_OUT = """
from transformers import LlamaConfig, LlamaForCausalLM


class SpelledOutConfig(LlamaConfig):
    model_type = "spelled_out"


class SpelledOutForCausalLM(LlamaForCausalLM):
    config_class = SpelledOutConfig

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None{extra}):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=past_key_values,
                               inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache)
"""


def remote_code_model(folder, extra: str = ""):
    """A folder with config.json's auto_map pointing at SPELLED_OUT (`trust_remote_code`)."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_decoder("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "modeling_spelled_out.py").write_text(SPELLED_OUT.format(extra=extra))
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="spelled_out",
        architectures=["SpelledOutForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_spelled_out.SpelledOutConfig",
            "AutoModelForCausalLM": "modeling_spelled_out.SpelledOutForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def load_remote(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)


def test_what_a_transformers_model_takes_and_what_remote_code_does_not(tmp_path):
    from peft import LoraConfig, get_peft_model

    native = build_tiny_decoder("llama", 40)
    assert is_transformers_model(native)
    assert forward_takes(native, "logits_to_keep", through_kwargs=False)
    assert forward_takes(native, "cu_seq_lens_q")  # through **kwargs, to the attention
    assert logits_to_keep_for(native) is NO_POSITION
    wrapped = get_peft_model(native, LoraConfig(r=2, target_modules=["q_proj"]))
    assert logits_to_keep_for(wrapped) is NO_POSITION  # peft's own forward says nothing

    remote = load_remote(remote_code_model(tmp_path / "plain"))
    assert not is_transformers_model(remote)
    assert not forward_takes(remote, "cu_seq_lens_q")
    assert forward_takes(remote, "position_ids")
    assert logits_to_keep_for(remote) is None
    keeping = load_remote(remote_code_model(tmp_path / "keeping", ", logits_to_keep=0"))
    assert logits_to_keep_for(keeping) == 1  # remote code may not take a slice


def test_remote_code_trains_on_padded_rows_with_its_own_loss(tmp_path, caplog):
    """padding_free unset and chunked_loss on (the defaults): the model would raise a TypeError
    on cu_seq_lens_q and logits_to_keep; training says why it falls back and runs, with the
    same losses as padded rows and the plain loss asked for outright."""
    model = remote_code_model(tmp_path / "model")
    settings = {
        "trust_remote_code": True,
        "records": [FORGE_RECORD] * 4,
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "logging_steps": 1,
        "val_size": 0,
        "report_compare": False,
    }
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path / "auto", model, **settings)
    assert (
        "padded rows instead of padding-free batches: packing: this model's forward "
        "(SpelledOutForCausalLM) does not take cu_seq_lens_q, cu_seq_lens_k, max_length_q, "
        "max_length_k, which packed and padding-free rows pass" in caplog.text
    )
    assert "chunked_loss: this model's forward takes no logits_to_keep" in caplog.text
    plain = run_train(tmp_path / "plain", model, **settings, padding_free=False, chunked_loss=False)

    def losses(run):
        lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert len(losses(run)) == 2
    assert losses(run) == pytest.approx(losses(plain), rel=1e-6)


def test_packing_asked_for_on_remote_code_is_one_paragraph(tmp_path):
    from lmforge.errors import UserError

    model = remote_code_model(tmp_path / "model")
    with pytest.raises(UserError) as caught:
        run_train(
            tmp_path,
            model,
            trust_remote_code=True,
            records=[FORGE_RECORD] * 4,
            padding_free=True,
            max_steps=1,
            val_size=0,
        )
    assert "does not take cu_seq_lens_q" in caught.value.what
    assert caught.value.fix.startswith("set packing: false and padding_free: false")
