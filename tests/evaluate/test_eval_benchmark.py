"""`lmforge eval`: a hand-made benchmark in the MMLU layout scored by a model whose answers are
known, the en/zh prompt wording, and the errors for folders and rows that do not fit."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import build_tiny_tokenizer
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.schema import DataConfig
from lmforge.data.templates.auto import load_template
from lmforge.evaluate.benchmark import load_benchmark, parse_task
from lmforge.evaluate.prompts import Question, question_messages

# subject -> (dev rows, test rows); a row's question says which letter the stub model picks.
ALGEBRA_DEV = [
    ["Dev 1+1? says A", "2", "3", "4", "5", "A"],
    ["Dev 2+1? says B", "4", "3", "5", "6", "B"],
]
ALGEBRA_TEST = [
    ["Q1 says B", "1", "2", "3", "4", "B"],  # right
    ["Q2 says B", "1", "2", "3", "4", "A"],  # wrong
    ["Q3, with a comma, says C", "1", "2", "3", "4", "C"],  # right
    ["Q4 says D", "1", "2", "3", "4", "A"],  # wrong
]
PHILOSOPHY_DEV = [["Dev: who? says C", "x", "y", "z", "w", "C"]]
PHILOSOPHY_TEST = [
    ["P1 says A", "a", "b", "c", "d", "A"],  # right
    ["P2 says D", "a", "b", "c", "d", "D"],  # right
    ["P3 is a long question, longer than the others, says B", "a", "b", "c", "d", "C"],  # wrong
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def write_mmlu(task_dir: Path, *, test_rows=None) -> Path:
    root = task_dir / "mmlu" / "data"
    write_csv(root / "dev" / "abstract_algebra_dev.csv", ALGEBRA_DEV)
    write_csv(root / "test" / "abstract_algebra_test.csv", test_rows or ALGEBRA_TEST)
    write_csv(root / "dev" / "philosophy_dev.csv", PHILOSOPHY_DEV)
    write_csv(root / "test" / "philosophy_test.csv", PHILOSOPHY_TEST)
    return task_dir


class LetterModel:
    """A stand-in causal LM: at the last position it favours the letter the last `says X` of
    the prompt names (padding must be on the left, where the attention mask is 0)."""

    def __init__(self, tokenizer, fixed: str | None = None):
        self.tokenizer, self.fixed, self.calls = tokenizer, fixed, []
        self.training = False

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        import torch

        logits = torch.zeros(input_ids.shape[0], 1, len(self.tokenizer))
        for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            real = mask.index(1)
            assert all(mask[real:]) and not any(mask[:real]), "padding must be on the left"
            assert position_ids[row, real:].tolist() == list(range(len(ids) - real))
            text = self.tokenizer.decode(ids[real:])
            letter = self.fixed or text.rsplit("says ", 1)[1][0]
            logits[row, -1, self.tokenizer.convert_tokens_to_ids(letter)] = 5.0
        self.calls.append(input_ids.shape)
        return SimpleNamespace(logits=logits)

    __call__ = forward

    def eval(self):
        return self


def stub_loader(model_factory):
    def load(config):
        tokenizer = build_tiny_tokenizer()
        template = load_template("gemma", tokenizer, config.data)
        return (
            config,
            SimpleNamespace(tokenizer=tokenizer, template=template),
            model_factory(tokenizer),
        )

    return load


def eval_config(tmp_path: Path, **settings) -> Path:
    values = {
        "model_name_or_path": str(tmp_path / "no-model"),
        "template": "gemma",
        "task": "mmlu_test",
        "task_dir": str(tmp_path / "evaluation"),
        "n_shot": 2,
        "batch_size": 2,
        "save_dir": str(tmp_path / "results"),
        **settings,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_exact_accuracy_per_subject_category_and_average(tmp_path):
    from lmforge.commands.evaluate import run_benchmark

    write_mmlu(tmp_path / "evaluation")
    config = load_config(eval_config(tmp_path))
    text = run_benchmark(config, model_loader=stub_loader(LetterModel))
    results = json.loads((tmp_path / "results" / "eval_results.json").read_text())
    base = results["results"]["base"]
    assert base["subjects"]["abstract_algebra"] == {
        "name": "abstract algebra",
        "category": "STEM",
        "accuracy": 50.0,
        "correct": 2,
        "total": 4,
    }
    assert base["subjects"]["philosophy"]["accuracy"] == pytest.approx(200 / 3)
    assert base["categories"] == {
        "STEM": {"accuracy": 50.0, "correct": 2, "total": 4},
        "Humanities": {"accuracy": pytest.approx(200 / 3), "correct": 2, "total": 3},
    }
    assert base["average"] == {"accuracy": pytest.approx(400 / 7), "correct": 4, "total": 7}
    assert base["predictions"] == {
        "abstract_algebra": ["B", "B", "C", "D"],
        "philosophy": ["A", "D", "B"],
    }
    assert (results["task"], results["split"], results["lang"], results["n_shot"]) == (
        "mmlu",
        "test",
        "en",
        2,
    )
    lines = text.splitlines()
    assert lines[0] == "mmlu (test, 2-shot, en): 7 questions in 2 subjects, accuracy (%)"
    assert "        Average     57.14" in text
    assert "           STEM     50.00" in text
    assert "     Humanities     66.67" in text
    assert "abstract algebra     50.00" in text
    assert not list((tmp_path / "results").glob("*.tmp"))


def test_base_and_adapter_side_by_side(tmp_path, monkeypatch):
    from lmforge.commands.evaluate import run_benchmark
    from lmforge.evaluate import loading

    write_mmlu(tmp_path / "evaluation")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = load_config(
        eval_config(tmp_path, adapter_name_or_path=str(adapter), compare_base=True)
    )
    attached = []

    def attach(model, adapters, base_name):
        attached.append(adapters)
        return LetterModel(model.tokenizer, fixed="A")  # the "adapter" always answers A

    monkeypatch.setattr(loading, "attach_checked", attach)
    text = run_benchmark(config, model_loader=stub_loader(LetterModel))
    results = json.loads((tmp_path / "results" / "eval_results.json").read_text())["results"]
    assert attached == [[str(adapter)]]
    assert results["base"]["average"]["correct"] == 4
    assert results["adapter"]["subjects"]["abstract_algebra"]["correct"] == 2  # A twice
    assert results["adapter"]["subjects"]["philosophy"]["correct"] == 1
    assert results["adapter"]["predictions"]["philosophy"] == ["A", "A", "A"]
    assert "      base   adapter" in text.splitlines()[1]
    assert "        Average     57.14     42.86" in text


def test_batches_are_left_padded_longest_first(tmp_path):
    from lmforge.commands.evaluate import run_benchmark

    write_mmlu(tmp_path / "evaluation")
    models = []

    def factory(tokenizer):
        models.append(LetterModel(tokenizer))
        return models[-1]

    config = load_config(eval_config(tmp_path, batch_size=3, n_shot=0))
    run_benchmark(config, model_loader=stub_loader(factory))
    shapes = models[0].calls
    assert [s[0] for s in shapes] == [3, 3, 1]
    assert shapes[0][1] >= shapes[1][1] >= shapes[2][1]


EN_EXPECTED = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Dev 1+1? says A\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
)


def test_english_prompt_text_through_the_chat_template(tmp_path):
    write_mmlu(tmp_path / "evaluation")
    benchmark = load_benchmark("mmlu_test", str(tmp_path / "evaluation"), 1)
    subject = benchmark.subjects[0]
    messages = question_messages(subject.questions[0], subject.shots, subject.name, "en")
    assert messages == [
        {"role": "user", "content": EN_EXPECTED},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q1 says B\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"},
    ]
    tokenizer = build_tiny_tokenizer()
    template = load_template("gemma", tokenizer, DataConfig())
    segments = template.render(tokenizer, messages, add_generation_prompt=True)
    text = "".join(segment.text for segment in segments)  # what encode_prompt encodes
    assert text == (
        f"<bos><start_of_turn>user\n{EN_EXPECTED}<end_of_turn>\n"
        "<start_of_turn>model\nA<end_of_turn>\n"
        "<start_of_turn>user\nQ1 says B\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_chinese_prompt_text():
    shot = Question("示例问题", ("示例答案1", "示例答案2", "示例答案3", "示例答案4"), "B")
    target = Question("目标问题", ("目标答案1", "目标答案2", "目标答案3", "目标答案4"), "C")
    assert question_messages(target, [shot], "主题", "zh") == [
        {
            "role": "user",
            "content": "以下是中国关于主题考试的单项选择题，请选出其中的正确答案。\n\n"
            "示例问题\nA. 示例答案1\nB. 示例答案2\nC. 示例答案3\nD. 示例答案4\n答案：",
        },
        {"role": "assistant", "content": "B"},
        {
            "role": "user",
            "content": "目标问题\nA. 目标答案1\nB. 目标答案2\nC. 目标答案3\nD. 目标答案4\n答案：",
        },
    ]


def test_ceval_and_cmmlu_layouts_and_chinese_subject_names(tmp_path):
    ceval = tmp_path / "evaluation" / "ceval"
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    write_csv(
        ceval / "dev" / "law_dev.csv", [["0", "问?", "a", "b", "c", "d", "A", "因为"]], header
    )
    write_csv(ceval / "val" / "law_val.csv", [["0", "问2?", "a", "b", "c", "d", "D", ""]], header)
    write_csv(ceval / "test" / "law_test.csv", [["0", "问3?", "a", "b", "c", "d"]], header[:6])
    benchmark = load_benchmark("ceval", str(tmp_path / "evaluation"), 5)
    assert (benchmark.split, benchmark.layout) == ("val", "C-Eval")
    law = benchmark.subjects[0]
    assert (law.key, law.name, law.category) == ("law", "法学", "Humanities")
    assert law.questions[0].answer == "D" and law.shots[0].question == "问?"
    messages = question_messages(law.questions[0], law.shots, law.name, "zh")
    assert messages[0]["content"].startswith("以下是中国关于法学考试的单项选择题")

    cmmlu = tmp_path / "evaluation" / "cmmlu"
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    write_csv(cmmlu / "dev" / "arts.csv", [["0", "艺?", "a", "b", "c", "d", "B"]], header)
    write_csv(cmmlu / "test" / "arts.csv", [["0", "艺2?", "a", "b", "c", "d", "C"]], header)
    benchmark = load_benchmark("cmmlu_test", str(tmp_path / "evaluation"), 5)
    assert benchmark.layout == "CMMLU"
    arts = benchmark.subjects[0]
    assert (arts.name, arts.category, arts.questions[0].answer) == ("艺术学", "Humanities", "C")


def test_task_names_and_splits():
    assert parse_task("mmlu_test") == ("mmlu", "test")
    assert parse_task("ceval") == ("ceval", "val")
    assert parse_task("ceval_validation") == ("ceval", "val")
    assert parse_task("my_bench") == ("my_bench", "test")
    assert parse_task("my_bench_dev") == ("my_bench", "dev")


# ---- bad input: one paragraph, exit code 2 ----------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["eval", *args])
    err = " ".join(capsys.readouterr().err.split())
    return code, err[err.find("error: ") :]  # after any progress bar


def test_wrong_layout_names_the_folder_and_the_layout(tmp_path, capsys):
    flat = tmp_path / "evaluation" / "mmlu"
    write_csv(flat / "abstract_algebra_test.csv", ALGEBRA_TEST)  # no test/ folder
    code, err = run_cli(capsys, str(eval_config(tmp_path)))
    assert code == 2
    assert err == (
        f"error: {eval_config(tmp_path)}: {flat} is not a benchmark folder in the MMLU layout: "
        "no `test` folder (nor data/test) (it holds: abstract_algebra_test.csv). Fix: point "
        "task_dir at the folder holding mmlu/ as the benchmark's release lays it out: "
        "<task_dir>/mmlu/data/dev/<subject>_dev.csv and <task_dir>/mmlu/data/test/"
        "<subject>_test.csv, without a header row, columns question,A,B,C,D,answer."
    )


def test_missing_task_dir(tmp_path, capsys):
    code, err = run_cli(capsys, str(eval_config(tmp_path, task_dir=str(tmp_path / "nowhere"))))
    assert code == 2
    assert f"task_dir `{tmp_path / 'nowhere'}` is not a folder" in err
    assert "Fix: set task_dir to the folder that holds mmlu/" in err


def test_answer_outside_a_to_d_names_file_row_and_column(tmp_path, capsys):
    rows = [*ALGEBRA_TEST[:2], ["Q3 says C", "1", "2", "3", "4", "E"]]
    write_mmlu(tmp_path / "evaluation", test_rows=rows)
    code, err = run_cli(capsys, str(eval_config(tmp_path)))
    path = tmp_path / "evaluation" / "mmlu" / "data" / "test" / "abstract_algebra_test.csv"
    assert code == 2
    assert err == (
        f"error: {path}: row 3, column `answer (6th)`: 'E' is not one of A, B, C, D. Fix: write "
        "the letter of the correct choice (A, B, C or D, in capitals) in the answer column; "
        "benchmarks here have exactly four choices."
    )


def test_short_row_and_ceval_test_split_without_answers(tmp_path, capsys):
    rows = [*ALGEBRA_TEST[:1], ["Q2", "1", "2", "3", "4", "A"], ["Q3", "1", "2"]]
    write_mmlu(tmp_path / "evaluation", test_rows=rows)
    code, err = run_cli(capsys, str(eval_config(tmp_path)))
    assert code == 2 and "abstract_algebra_test.csv: row 3 has 3 columns, 6 are needed" in err

    ceval = tmp_path / "evaluation" / "ceval"
    write_csv(
        ceval / "test" / "law_test.csv",
        [["0", "q", "a", "b", "c", "d"]],
        ["id", "question", "A", "B", "C", "D"],
    )
    code, err = run_cli(capsys, str(eval_config(tmp_path, task="ceval_test", n_shot=0)))
    assert code == 2
    assert "law_test.csv has no answer column" in err
    assert "Fix: C-Eval publishes no answers for its test split: use task: ceval_validation" in err


def test_missing_dev_file_for_few_shot(tmp_path, capsys):
    write_mmlu(tmp_path / "evaluation")
    (tmp_path / "evaluation" / "mmlu" / "data" / "dev" / "philosophy_dev.csv").unlink()
    code, err = run_cli(capsys, str(eval_config(tmp_path)))
    assert code == 2
    assert "subject `philosophy` has no dev file" in err and "or set n_shot: 0" in err


def test_offline_hub_id_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, str(eval_config(tmp_path, task_dir="nobody/no-such-benchmark")))
    assert code == 2
    assert err.startswith(
        f"error: {eval_config(tmp_path)}: cannot download the benchmark "
        "`nobody/no-such-benchmark` from the Hugging Face hub ("
    )
    assert "Fix: check the network and the dataset id" in err


def test_adapter_for_another_base(tmp_path, tiny_model_dir, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    other = Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=120,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        )
    )
    adapter = tmp_path / "other-adapter"
    peft_model = get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = "someone/other-model"
    peft_model.save_pretrained(adapter, save_embedding_layers=False)
    write_mmlu(tmp_path / "evaluation")
    path = eval_config(
        tmp_path, model_name_or_path=str(tiny_model_dir), adapter_name_or_path=str(adapter)
    )
    code, err = run_cli(capsys, str(path))
    assert code == 2
    assert err.startswith(
        f"error: {adapter / 'adapter_config.json'}: the adapter {adapter} was trained on "
        f"someone/other-model and does not fit the model {tiny_model_dir} (RuntimeError: "
    )
    assert err.endswith(
        "Fix: set model_name_or_path to the model the adapter was trained on "
        "(someone/other-model), or adapter_name_or_path to an adapter trained on this model."
    )


def test_a_real_model_scores_the_same_in_any_batch_size(tmp_path, tiny_model_dir, capsys):
    """The tiny Gemma-3 through `lmforge eval`: left padding with position ids from each
    prompt's first token gives the same letters one question at a time and four at once."""
    write_mmlu(tmp_path / "evaluation")
    predictions = []
    for batch_size in (1, 4):
        save_dir = tmp_path / f"results-{batch_size}"
        path = eval_config(
            tmp_path,
            model_name_or_path=str(tiny_model_dir),
            batch_size=batch_size,
            n_shot=1,
            save_dir=str(save_dir),
        )
        assert main(["eval", str(path)]) == 0
        results = json.loads((save_dir / "eval_results.json").read_text())
        assert results["results"]["base"]["average"]["total"] == 7
        predictions.append(results["results"]["base"]["predictions"])
    assert predictions[0] == predictions[1]
    assert "mmlu (test, 1-shot, en): 7 questions in 2 subjects" in capsys.readouterr().out
