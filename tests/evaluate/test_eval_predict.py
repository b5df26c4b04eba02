"""`lmforge predict`: answers generated for a dataset (greedy, batched with left padding), the
two files LLaMA-Factory's do_predict writes, and the settings checked for do_predict."""

from __future__ import annotations

import json

import pytest

from conftest import INFERENCE, OMIT, TOY_RECORDS, write_alpaca_dataset, write_config
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.evaluate.metrics import similarity
from lmforge.evaluate.predict import check_predict_settings

pytest.importorskip("nltk")


def predict_config(tmp_path, tiny_model_dir, **settings):
    values = {
        "records": TOY_RECORDS,
        "dataset": "toy",
        "dataset_dir": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "predict"),
        "max_samples": 4,
        "max_new_tokens": 5,
        **settings,
    }
    return write_config(tmp_path, tiny_model_dir, {**INFERENCE, "name": "predict"}, **values)


def read_outputs(folder):
    lines = (folder / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    results = json.loads((folder / "predict_results.json").read_text())
    return [json.loads(line) for line in lines], results


def test_predict_writes_predictions_and_scores(tmp_path, tiny_model_dir, capsys):
    path = predict_config(tmp_path, tiny_model_dir, per_device_eval_batch_size=3)
    assert main(["predict", str(path)]) == 0
    out = capsys.readouterr().out
    rows, results = read_outputs(tmp_path / "predict")
    assert len(rows) == 4
    assert [row["label"] for row in rows] == [r["output"] for r in TOY_RECORDS[:4]]
    assert rows[0]["prompt"] == (
        "<bos><start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert all(set(row) == {"prompt", "predict", "label"} for row in rows)
    scores = similarity([row["predict"] for row in rows], [row["label"] for row in rows])
    for key, value in scores.items():
        assert results[f"predict_{key}"] == pytest.approx(value)
    assert results["predict_samples"] == 4 and results["predict_runtime"] > 0
    assert "4 answers generated" in out and "generated_predictions.jsonl" in out

    # Greedy and left-padded: answering one prompt at a time gives the same answers.
    path = predict_config(tmp_path, tiny_model_dir, per_device_eval_batch_size=1)
    load = load_config(path, [f"output_dir={tmp_path / 'one'}"])
    from lmforge.evaluate.predict import run_prediction

    run_prediction(load)
    single, _ = read_outputs(tmp_path / "one")
    assert [row["predict"] for row in single] == [row["predict"] for row in rows]


def test_predict_uses_eval_dataset_and_needs_an_output_folder(tmp_path, tiny_model_dir, capsys):
    held_out = [{"instruction": "Say hi", "input": "", "output": "hi"}] * 2
    path = predict_config(tmp_path, tiny_model_dir, eval_dataset="held_out")
    write_alpaca_dataset(tmp_path / "data", held_out, name="held_out")
    assert main(["predict", str(path)]) == 0
    rows, results = read_outputs(tmp_path / "predict")
    assert [row["label"] for row in rows] == ["hi", "hi"] and results["predict_samples"] == 2

    path = predict_config(tmp_path, tiny_model_dir, output_dir=OMIT)
    assert main(["predict", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "`output_dir` is not set" in err and "Fix: add `output_dir: saves/predict`" in err


def test_do_predict_needs_predict_with_generate_and_sft(tmp_path):
    config = load_config(None, ["--do_predict", "true"])
    with pytest.raises(UserError, match="predict_with_generate: true"):
        check_predict_settings(config)
    config = load_config(None, ["--do_predict", "--predict_with_generate", "--stage", "dpo"])
    with pytest.raises(UserError, match="stage dpo"):
        check_predict_settings(config)
    check_predict_settings(load_config(None, ["--do_predict", "--predict_with_generate"]))
    assert load_config(None, ["--do_predict", "--predict_with_generate"]).not_used == ()


def test_predict_after_training_with_the_trained_model(tmp_path, tiny_model_dir):
    """What do_predict does at the end of `lmforge train` (the hook in train/run.py): the
    trained PeftModel, still in memory, answers the eval dataset into output_dir."""
    from conftest import SHORT_SFT, run_train
    from lmforge.evaluate.predict import run_prediction
    from lmforge.model.setup import prepare_model_setup

    settings = {**SHORT_SFT, "max_steps": 2, "plot_loss": False}
    run = run_train(
        tmp_path,
        tiny_model_dir,
        settings,
        do_predict=True,
        predict_with_generate=True,
        max_new_tokens=4,
    )
    config = load_config(tmp_path / "train.yaml")
    check_predict_settings(config)
    outcome = run_prediction(
        config, model=run.model, setup=prepare_model_setup(config), folder=run.output_dir
    )
    rows, results = read_outputs(run.output_dir)
    assert outcome.count == len(rows) == 8 and results["predict_samples"] == 8
    assert rows[0]["label"] == "I am Forge, made by lmforge."
    assert run.model.training  # left as it was found


def test_predict_with_num_beams_answers_as_transformers_beam_search(tmp_path, tiny_model_dir):
    """LLaMA-Factory's num_beams and length_penalty: predict's answers are generate()'s beam
    search results, and chat refuses beam search in one paragraph."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.evaluate.predict import run_prediction
    from lmforge.infer.engine import HFEngine

    settings = dict(max_new_tokens=8, repetition_penalty=1.5, per_device_eval_batch_size=1)
    path = predict_config(tmp_path, tiny_model_dir, num_beams=3, length_penalty=0.5, **settings)
    run_prediction(load_config(path))
    rows, _ = read_outputs(tmp_path / "predict")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stops = [1, tokenizer.convert_tokens_to_ids("<end_of_turn>")]

    def answer(prompt: str, beams: int) -> str:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=8,
                num_beams=beams,
                length_penalty=0.5,
                repetition_penalty=1.5,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=0,
            )
        tokens = out[0, len(ids) :].tolist()
        tokens = tokens[: next((k for k, t in enumerate(tokens) if t in stops), len(tokens))]
        return tokenizer.decode(tokens, skip_special_tokens=True)

    for row in rows[:3]:
        assert row["predict"] == answer(row["prompt"], 3)
    assert rows[0]["predict"] != answer(rows[0]["prompt"], 1)  # not what greedy answers
    with pytest.raises(UserError, match="asks for beam search"):
        HFEngine.from_config(load_config(path))
