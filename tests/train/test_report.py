"""`val_size: auto` (the default held-out split) and report.md at the end of `lmforge train`."""

import pytest
import yaml

from conftest import SHORT_SFT, run_train, write_config
from lmforge.config import load_config
from lmforge.data.encoding.loader import DataReport
from lmforge.data.sources.load import load_splits
from lmforge.data.sources.mixing import auto_val_count
from lmforge.errors import UserError


def _records(n: int) -> list[dict]:
    return [{"instruction": f"Q{i}?", "input": "", "output": f"A{i}."} for i in range(n)]


@pytest.mark.parametrize("total,held", [(49, 0), (50, 8), (1000, 50), (20000, 500)])
def test_auto_split_sizes(total, held):
    assert auto_val_count(total) == held


@pytest.mark.parametrize("total,held", [(49, 0), (50, 8), (1000, 50)])
def test_auto_split_is_the_default_and_noted(tmp_path, total, held):
    config = load_config(write_config(tmp_path, "m", records=_records(total)))
    assert config.data.val_size == "auto"
    report = DataReport()
    train, evaluation = load_splits(config.data, report, seed=42)
    assert (len(train), len(evaluation)) == (total - held, held)
    if held:
        assert (
            f"val_size: auto held out {held} of {total} records for evaluation" in report.notes[0]
        )
    else:
        assert "val_size: auto: fewer than 50 records (49), no split" in report.notes[0]


def test_auto_counts_records_after_max_samples(tmp_path):
    config = load_config(write_config(tmp_path, "m", records=_records(1000), max_samples=60))
    train, evaluation = load_splits(config.data, DataReport(), seed=42)
    assert (len(train), len(evaluation)) == (52, 8)


def test_val_size_zero_turns_it_off_and_explicit_sizes_keep_their_meaning(tmp_path):
    for value, held in ((0, 0), (0.1, 100), (30, 30)):
        config = load_config(write_config(tmp_path, "m", records=_records(1000), val_size=value))
        _, evaluation = load_splits(config.data, DataReport(), seed=42)
        assert len(evaluation) == held


def test_auto_makes_no_split_for_rl_stages_and_streams(tmp_path):
    config = load_config(write_config(tmp_path, "m", records=_records(100)))
    _, evaluation = load_splits(config.data, DataReport(), seed=42, stage="grpo")
    assert evaluation == []
    config = load_config(write_config(tmp_path, "m", records=_records(100), streaming=True))
    report = DataReport()
    _, evaluation = load_splits(config.data, report, seed=42, max_steps=5)
    assert evaluation == [] and any("streaming" in n for n in report.notes)


def test_val_size_refuses_other_words(tmp_path):
    with pytest.raises(UserError, match="or `auto`"):
        load_config(write_config(tmp_path, "m", val_size="sometimes"))


REPORT_RUN = {**SHORT_SFT, "records": _records(60), "finetuning_type": "lora", "lora_rank": 4}


def test_report_of_a_lora_run_with_the_automatic_split(tmp_path, tiny_model_dir):
    run = run_train(tmp_path, tiny_model_dir, REPORT_RUN, eval_steps=4, save_steps=4)
    text = (run.output_dir / "report.md").read_text()
    for section in (
        "## Plan",
        "val_size: auto held out 8 of 60 records for evaluation",
        "## Losses",
        "| eval loss |",
        "## Loss plot",
        "![training loss](training_loss.png)",
        "## Over-fitting",
        "## Best checkpoint",
        "## Before and after",
        "| # | prompt | reference | base | trained |",
    ):
        assert section in text, section
    table = [line for line in text.splitlines() if line.startswith("| ") and "?" in line]
    assert len(table) == 5
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["eval_strategy"] == "steps"
    assert (run.output_dir / "eval_results.json").is_file()


def test_report_compare_false_omits_the_table(tmp_path, tiny_model_dir):
    run = _run_without_table(tmp_path, tiny_model_dir)
    text = (run.output_dir / "report.md").read_text()
    assert "## Over-fitting" in text and "Before and after" not in text


def _run_without_table(tmp_path, tiny_model_dir):
    """A 2-step LoRA run on REPORT_RUN with report_compare off, over 60 prompts of different
    lengths (so that a batch of them is padded)."""
    records = [
        {"instruction": f"Q{i}" + " and more" * (i % 7) + "?", "input": "", "output": f"A{i}."}
        for i in range(60)
    ]
    return run_train(
        tmp_path, tiny_model_dir, REPORT_RUN, records=records, report_compare=False, max_steps=2
    )


def _trained_lora(tmp_path, tiny_model_dir):
    """_run_without_table: (config, ModelSetup, the trained PeftModel)."""
    from lmforge.model.setup import prepare_model_setup

    run = _run_without_table(tmp_path, tiny_model_dir)
    config = load_config(tmp_path / "train.yaml")
    return config, prepare_model_setup(config), run.model


def _one_at_a_time(model, ids: list[int], stops: list[int], new_tokens: int) -> list[int]:
    """Greedy answer tokens for one prompt, no padding, cut before the first stop id."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
    return next((out[:k] for k, t in enumerate(out) if t in stops), out)


def test_report_answers_in_one_batch_as_one_prompt_at_a_time(tmp_path, tiny_model_dir):
    """The before/after table: all prompts in one left-padded batch, greedy, stopped at the
    template's stop ids, by the trained model and by the same model with its adapters disabled;
    the answers are the one-prompt-at-a-time greedy answers token for token."""
    from lmforge.evaluate.predict import generate_answers, generate_token_ids
    from lmforge.train.report import COMPARE_TOKENS, compare_rows

    config, setup, model = _trained_lora(tmp_path, tiny_model_dir)
    stops = setup.template.stop_token_ids(setup.tokenizer)
    calls, tokens = [], []

    def recording(m, tokenizer, items, batch_size, settings):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [layer for layer in m.modules() if isinstance(layer, BaseTunerLayer)]
        disabled = bool(layers) and all(layer.disable_adapters for layer in layers)
        calls.append((m, len(items), batch_size, dict(settings), disabled))
        tokens.append(generate_token_ids(m, tokenizer, items, batch_size, settings))
        return generate_answers(m, tokenizer, items, batch_size, settings)

    model.train()
    rows, why = compare_rows(config, setup, model, generate=recording)
    assert why is None and len(rows) == 5
    assert [c[1:3] for c in calls] == [(5, 5), (5, 5)]  # one batch each
    assert all(c[0] is model for c in calls)  # no second model for the base
    assert [c[4] for c in calls] == [False, True]  # trained, then adapters disabled
    settings = calls[0][3]
    assert settings["do_sample"] is False and settings["max_new_tokens"] == COMPARE_TOKENS
    assert settings["eos_token_id"] == stops
    assert model.training  # left as it was found (training mode here)
    assert not any(
        layer.disable_adapters for layer in model.modules() if hasattr(layer, "_disable_adapters")
    )

    from lmforge.evaluate.compare import read_entries
    from lmforge.evaluate.predict import encode_samples

    entries = [e for e in read_entries(config)[0] if e.source == "eval"][:5]
    items, _ = encode_samples([e.sample for e in entries], setup.tokenizer, setup.template, 1024)
    assert len({len(item.ids) for item in items}) > 1  # the batch really is padded
    model.eval()
    trained = [_one_at_a_time(model, item.ids, stops, COMPARE_TOKENS) for item in items]
    with model.disable_adapter():
        base = [_one_at_a_time(model, item.ids, stops, COMPARE_TOKENS) for item in items]
    assert tokens == [trained, base]
    decode = setup.tokenizer.decode
    assert [r["trained"] for r in rows] == [decode(t, skip_special_tokens=True) for t in trained]
    assert [r["base"] for r in rows] == [decode(t, skip_special_tokens=True) for t in base]


def test_batched_generation_stops_each_row_at_its_stop_id(tmp_path, tiny_model_dir):
    """A row ends before its first stop id (the stop token and the padding after it are not
    part of the answer) while the other rows of the batch go on."""
    from lmforge.evaluate.predict import PromptItem, generate_token_ids

    config, setup, model = _trained_lora(tmp_path, tiny_model_dir)
    model.eval()
    tokenizer = setup.tokenizer
    prompts = [[{"role": "user", "content": text}] for text in ("Q1?", "Who are you, then?")]
    items = [PromptItem(setup.template.encode_prompt(tokenizer, p), "") for p in prompts]
    settings = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    free = generate_token_ids(model, tokenizer, items, 2, {**settings, "eos_token_id": [1]})
    assert [len(row) for row in free] == [12, 12] and free[0][0] != free[1][0]
    for row, stop in enumerate((free[0][0], free[1][0])):
        stopped = generate_token_ids(
            model, tokenizer, items, 2, {**settings, "eos_token_id": [stop]}
        )
        assert stopped[row] == []  # its first token is the stop id
        assert stopped[1 - row] == free[1 - row]  # the other row is not cut short


def test_an_answer_ends_before_its_first_stop_id():
    """What generate() returns after a row's stop id (the stop, then padding) is not answer."""
    import torch

    from lmforge.evaluate.predict import PromptItem, generate_answers, generate_token_ids

    class Generator(torch.nn.Module):  # returns fixed continuations of a left-padded batch
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, **settings):
            assert attention_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
            tails = torch.tensor([[5, 6, 9, 0, 0], [7, 8, 7, 2, 9]])
            return torch.cat([input_ids, tails], dim=1)

    class Tokenizer:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    items = [PromptItem([3, 3, 3], ""), PromptItem([4, 4], "")]
    settings = {"eos_token_id": [9, 2]}
    model, tokenizer = Generator(), Tokenizer()
    assert generate_token_ids(model, tokenizer, items, 2, settings) == [[5, 6], [7, 8, 7]]
    assert generate_answers(model, tokenizer, items, 2, settings) == ["5 6", "7 8 7"]
