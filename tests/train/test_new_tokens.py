"""Tokens added to the vocabulary (LLaMA-Factory's add_tokens, add_special_tokens,
new_special_tokens_config, init_special_tokens, resize_vocab): one id each in training and
inference, their rows initialised as asked, trained with LoRA through the adapter, and the
trained model the same in chat and export."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    INFERENCE,
    SHORT_SFT,
    build_tiny_decoder,
    build_tiny_tokenizer,
    run_train,
    write_config,
)
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.model.new_tokens import (
    NewTokens,
    add_to_tokenizer,
    fit_vocabulary,
    initialise_rows,
    requested_tokens,
    trainable_token_indices,
)

TOOL_RECORDS = [
    {
        "instruction": f"Call the tool {i}",
        "input": "",
        "output": f"<tool_call>lookup {i}</tool_call>",
    }
    for i in range(8)
]


def test_tokens_are_added_plain_then_special_with_new_ids():
    tokenizer = build_tiny_tokenizer()
    size = len(tokenizer)
    ids = add_to_tokenizer(
        tokenizer, NewTokens(plain=("forge",), special=("<tool_call>", "</tool_call>", "<eos>"))
    )
    assert ids == [size, size + 1, size + 2, tokenizer.convert_tokens_to_ids("<eos>")]
    assert tokenizer.encode("a<tool_call>b forge", add_special_tokens=False) == [
        tokenizer.convert_tokens_to_ids("a"),
        size + 1,
        tokenizer.convert_tokens_to_ids("b"),
        tokenizer.convert_tokens_to_ids(" "),
        size,
    ]
    assert tokenizer.added_tokens_decoder[size + 1].special
    assert not tokenizer.added_tokens_decoder[size].special


def test_descriptions_file_adds_its_tokens_and_refuses_a_bad_one(tmp_path):
    from lmforge.config.schema import ModelConfig

    good = tmp_path / "tokens.yaml"
    good.write_text("<think>: the start of reasoning\n</think>: the end of reasoning\n")
    tokens = requested_tokens(
        ModelConfig(add_special_tokens="<x>", new_special_tokens_config=str(good))
    )
    assert tokens.special == ("<x>", "<think>", "</think>")
    assert dict(tokens.descriptions)["</think>"] == "the end of reasoning"
    bad = tmp_path / "bad.yaml"
    bad.write_text("<think>: [1, 2]\n")
    with pytest.raises(UserError, match="the entry for '<think>' is not token: text"):
        requested_tokens(ModelConfig(new_special_tokens_config=str(bad)))


@pytest.mark.parametrize("tied", [True, False])
def test_desc_init_starts_each_row_at_its_descriptions_rows(tied):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_decoder("llama", len(tokenizer), tie_word_embeddings=tied)
    tokens = NewTokens(special=("<a>", "<b>"), descriptions=(("<a>", "ab"),), init="desc_init")
    ids = add_to_tokenizer(tokenizer, tokens)
    before = [model.get_input_embeddings().weight.clone(), model.get_output_embeddings().weight]
    before[1] = before[1].clone()
    rows = fit_vocabulary(model, tokenizer)
    assert rows == ids and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    initialise_rows(model, tokenizer, tokens, rows)
    letters = tokenizer.convert_tokens_to_ids(["a", "b"])
    matrices = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    for weight, old in zip(matrices, before):
        assert torch.allclose(weight[ids[0]], old[letters].mean(0))  # from "ab"
        assert torch.allclose(weight[ids[1]], old.mean(0))  # no description: the mean
        assert torch.equal(weight[: old.shape[0]], old)  # the rows that were there stay
    assert trainable_token_indices(model, ids) == (
        {"embed_tokens": ids} if tied else {"embed_tokens": ids, "lm_head": ids}
    )


def test_noise_init_is_the_mean_plus_seeded_noise():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_decoder("llama", len(tokenizer), tie_word_embeddings=True)
    tokens = NewTokens(special=("<a>",))
    mean = model.get_input_embeddings().weight.mean(0)
    rows = fit_vocabulary(model, (add_to_tokenizer(tokenizer, tokens), tokenizer)[1])
    torch.manual_seed(7)
    initialise_rows(model, tokenizer, tokens, rows)
    torch.manual_seed(7)
    noise = torch.randn(mean.shape[0]) / mean.shape[0] ** 0.5
    assert torch.allclose(model.get_input_embeddings().weight[rows[0]], mean + noise, atol=1e-6)


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory, tiny_model_dir):
    """LoRA SFT whose answers use two added special tokens, in bf16 mixed precision (fp32 on
    a CPU without native bf16) as the quickstart trains."""
    folder = tmp_path_factory.mktemp("tool-run")
    return run_train(
        folder,
        tiny_model_dir,
        SHORT_SFT,
        records=TOOL_RECORDS,
        add_special_tokens="<tool_call>,</tool_call>",
        max_steps=4,
        bf16=True,
    )


def test_lora_trains_the_new_tokens_rows_in_the_adapter(tool_run, tiny_model_dir):
    out = tool_run.output_dir
    tokenizer_json = json.loads((out / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    assert added["<tool_call>"] == 107 and added["</tool_call>"] == 108
    weights = load_file(out / "adapter_model.safetensors")
    assert not [k for k in weights if "base_layer" in k]  # no copy of the whole embedding
    rows = [v for k, v in weights.items() if "embed_tokens.token_adapter.trainable_tokens" in k]
    assert len(rows) == 1 and rows[0].shape == (2, 32)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": [107, 108]}
    # trained: the rows moved away from where they started (the mean plus noise)
    start = tool_run.model.base_model.model.model.embed_tokens.token_adapter
    assert not torch.allclose(rows[0].float(), start.trainable_tokens_original["default"].float())


def test_chunked_loss_trains_the_new_rows_as_the_plain_loss_does(tmp_path, tiny_model_dir, caplog):
    caplog.set_level("INFO", logger="lmforge.train.run")

    def losses(**settings):
        run = run_train(
            tmp_path / str(len(list(tmp_path.iterdir()))),
            tiny_model_dir,
            SHORT_SFT,
            records=TOOL_RECORDS,
            add_special_tokens="<tool_call>,</tool_call>",
            max_steps=3,
            **settings,
        )
        lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert losses() == pytest.approx(losses(chunked_loss=False), rel=1e-4)
    lines = [r.message for r in caplog.records]
    assert "  loss: cross-entropy on trained tokens, chunked (no full logits)" in lines
    assert (
        "  vocabulary: added <tool_call> (id 107), </tool_call> (id 108); rows start at "
        "noise_init, trained in the adapter"
    ) in lines


def test_chat_loads_the_base_with_the_trained_rows(tool_run, tiny_model_dir, tmp_path):
    from lmforge.infer.engine import HFEngine

    path = write_config(
        tmp_path,
        tiny_model_dir,
        INFERENCE,
        adapter_name_or_path=str(tool_run.output_dir),
        skip_special_tokens=False,  # answers show the added tokens
    )
    engine = HFEngine.from_config(load_config(path))
    try:
        assert engine.sampling_params().skip_special_tokens is False
        tokenizer = engine.tokenizer
        probe = tokenizer.encode("Q<tool_call>x</tool_call>", add_special_tokens=False)
        assert probe[1] == 107 and probe[3] == 108
        ids = torch.tensor([probe])
        trained = tool_run.model
        trained.eval()
        with torch.no_grad():
            expected = trained(input_ids=ids).logits.float()
            served = engine.model(input_ids=ids.to(engine.model.device)).logits.float().cpu()
        assert (served - expected).abs().max() < 0.05  # bf16 inference against fp32 training
    finally:
        engine.close()


def test_export_merges_the_trained_rows(tool_run, tiny_model_dir, tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.model.load import load_model

    out = tmp_path / "exported"
    path = write_config(
        tmp_path,
        tiny_model_dir,
        INFERENCE,
        name="export",
        adapter_name_or_path=str(tool_run.output_dir),
        export_dir=str(out),
    )
    assert main(["export", str(path)]) == 0, capsys.readouterr().out
    exported = load_model(out)
    assert exported.config.vocab_size == 109
    trained_rows = load_file(tool_run.output_dir / "adapter_model.safetensors")
    rows = next(v for k, v in trained_rows.items() if "trainable_tokens_delta" in k)
    merged = exported.get_input_embeddings().weight[107:109]
    assert torch.allclose(merged.float(), rows.float(), atol=1e-2)  # bf16 export


def test_full_fine_tuning_saves_the_grown_model(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        records=TOOL_RECORDS,
        finetuning_type="full",
        add_tokens="lookup",
        max_steps=2,
    )
    saved = json.loads((run.output_dir / "config.json").read_text())
    assert saved["vocab_size"] == 108
    weights = load_file(run.output_dir / "model.safetensors")
    embedding = next(v for k, v in weights.items() if k.endswith("embed_tokens.weight"))
    assert embedding.shape[0] == 108


def test_added_tokens_on_a_quantized_base_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="a quantized base"):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, add_special_tokens="<x>", quantization_bit=4)
