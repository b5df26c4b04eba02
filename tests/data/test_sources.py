import json

import pytest

from lmforge.config.schema import DataConfig
from lmforge.data.sources import load as sources
from lmforge.data.sources.load import SampleStream, load_samples, load_splits
from lmforge.data.sources.mixing import interleave, shuffle_buffer
from lmforge.errors import UserError


class Report:
    def __init__(self):
        self.records = {}


def qa(prefix: str, count: int) -> list[dict]:
    return [{"instruction": f"{prefix}{i}", "output": "A"} for i in range(count)]


def make(tmp_path, **datasets_records) -> str:
    info = {}
    for name, records in datasets_records.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
        info[name] = {"file_name": f"{name}.json"}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return str(tmp_path)


def prompts(samples) -> list[str]:
    return [s.messages[0]["content"] for s in samples]


def test_concat_and_max_samples_per_dataset(tmp_path):
    folder = make(tmp_path, a=qa("a", 3), b=qa("b", 2))
    report = Report()
    samples = load_samples(DataConfig(dataset="a,b", dataset_dir=folder, max_samples=2), report)
    assert prompts(samples) == ["a0", "a1", "b0", "b1"]
    assert report.records == {"a": 2, "b": 2}


def test_interleave_under_and_over(tmp_path):
    folder = make(tmp_path, a=qa("a", 3), b=qa("b", 1))
    under = DataConfig(dataset="a,b", dataset_dir=folder, mix_strategy="interleave_under")
    assert prompts(load_samples(under, Report())) == ["a0", "b0", "a1"]
    over = DataConfig(dataset="a,b", dataset_dir=folder, mix_strategy="interleave_over")
    assert prompts(load_samples(over, Report())) == ["a0", "b0", "a1", "b0", "a2", "b0"]


def test_interleave_probs_are_seeded(tmp_path):
    folder = make(tmp_path, a=qa("a", 50), b=qa("b", 50))
    data = DataConfig(
        dataset="a,b",
        dataset_dir=folder,
        mix_strategy="interleave_under",
        interleave_probs="0.9,0.1",
    )
    first = prompts(load_samples(data, Report(), seed=1))
    assert first == prompts(load_samples(data, Report(), seed=1))
    assert first != prompts(load_samples(data, Report(), seed=2))
    assert sum(p.startswith("a") for p in first) > 3 * sum(p.startswith("b") for p in first)


@pytest.mark.parametrize(
    ("strategy", "probs", "expected"),
    [
        ("interleave_under", "0.5", r"one non-negative number per dataset \(2\)"),
        ("interleave_under", "a,b", "not a comma-separated list of numbers"),
        ("concat", "0.5,0.5", "mix_strategy is concat, which ignores it"),
    ],
)
def test_bad_interleave_settings(tmp_path, strategy, probs, expected):
    folder = make(tmp_path, a=qa("a", 2), b=qa("b", 2))
    data = DataConfig(
        dataset="a,b", dataset_dir=folder, mix_strategy=strategy, interleave_probs=probs
    )
    with pytest.raises(UserError, match=expected):
        load_samples(data, Report())


def test_val_size_fraction_count_and_eval_dataset(tmp_path):
    folder = make(tmp_path, a=qa("a", 10), e=qa("e", 3))
    train, evaluation = load_splits(
        DataConfig(dataset="a", dataset_dir=folder, val_size=0.2), Report()
    )
    assert (len(train), len(evaluation)) == (8, 2)
    assert set(prompts(train)).isdisjoint(prompts(evaluation))
    again, _ = load_splits(DataConfig(dataset="a", dataset_dir=folder, val_size=0.2), Report())
    assert prompts(again) == prompts(train)  # seeded
    train, evaluation = load_splits(
        DataConfig(dataset="a", dataset_dir=folder, val_size=3), Report()
    )
    assert (len(train), len(evaluation)) == (7, 3)
    report = Report()
    data = DataConfig(dataset="a", eval_dataset="e", dataset_dir=folder)
    train, evaluation = load_splits(data, report)
    assert (len(train), prompts(evaluation)) == (10, ["e0", "e1", "e2"])
    assert report.records == {"a": 10, "e (eval)": 3}
    data.val_size = 0.1
    with pytest.raises(UserError, match="both val_size and eval_dataset are set"):
        load_splits(data, Report())


def test_num_samples_is_a_seeded_subset_or_repeats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(qa("a", 5)))
    info = {
        "few": {"file_name": "a.json", "num_samples": 3},
        "many": {"file_name": "a.json", "num_samples": 7},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    few = prompts(load_samples(DataConfig(dataset="few", dataset_dir=str(tmp_path)), Report()))
    many = prompts(load_samples(DataConfig(dataset="many", dataset_dir=str(tmp_path)), Report()))
    assert len(few) == len(set(few)) == 3
    assert len(many) == 7 and set(many) == {f"a{i}" for i in range(5)}


def test_default_system_fills_samples_without_one(tmp_path):
    records = [
        {"instruction": "Q", "output": "A", "system": "own"},
        {"instruction": "Q", "output": "A"},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    entry = {
        "file_name": "d.json",
        "columns": {"prompt": "instruction", "response": "output", "system": "system"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    data = DataConfig(dataset="d", dataset_dir=str(tmp_path), default_system="default")
    assert [s.system for s in load_samples(data, Report())] == ["own", "default"]


def test_unmapped_columns_are_noted(tmp_path, caplog):
    (tmp_path / "d.json").write_text(json.dumps([{"q": "Q", "a": "A", "system": "S"}]))
    entry = {"file_name": "d.json", "columns": {"prompt": "q", "response": "a"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    report = Report()
    load_samples(DataConfig(dataset="d", dataset_dir=str(tmp_path)), report)
    assert "column(s) system are in the data but not mapped" in report.notes[0]


def test_invalid_records_stop_training_with_first_problem_and_count(tmp_path):
    records = qa("a", 3) + [{"instruction": "x"}, {"output": "y"}, "text"]
    folder = make(tmp_path, a=records)
    with pytest.raises(UserError) as info:
        load_splits(DataConfig(dataset="a", dataset_dir=folder), Report())
    message = str(info.value)
    assert "a.json:record 3:output: missing or empty" in message
    assert "(3 problems in 3 of 6 records)" in message
    assert "lmforge data validate" in message and "skip_invalid: true" in message


def test_skip_invalid_skips_counts_and_says_why(tmp_path):
    records = qa("a", 3) + [{"instruction": "x"}, {"output": "y"}, "text"]
    folder = make(tmp_path, a=records)
    report = Report()
    train, _ = load_splits(DataConfig(dataset="a", dataset_dir=folder, skip_invalid=True), report)
    assert prompts(train) == ["a0", "a1", "a2"]
    assert report.skipped == 3
    assert report.skip_reasons == {"missing column": 2, "not an object": 1}
    assert report.skip_examples[0].endswith(
        "a.json:record 3:output: missing or empty (columns present: instruction)"
    )
    assert report.records == {"a": 6}


def test_stage_must_fit_the_datasets(tmp_path):
    folder = make(tmp_path, a=qa("a", 2))
    data = DataConfig(dataset="a", dataset_dir=folder)
    with pytest.raises(UserError, match="stage dpo trains on preference pairs"):
        load_splits(data, Report(), stage="dpo")
    with pytest.raises(UserError, match="stage kto needs a `kto_tag` column"):
        load_splits(data, Report(), stage="kto")


def test_inline_datasets_from_the_config(tmp_path):
    (tmp_path / "chat.jsonl").write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
        )
    )
    data = DataConfig(dataset_dir=str(tmp_path / "no-registry"))
    data.datasets = {"chat": {"path": str(tmp_path / "chat.jsonl"), "formatting": "openai"}}
    report = Report()
    train, _ = load_splits(data, report)
    assert train[0].messages[1]["content"] == "A" and report.records == {"chat": 1}


# ---- streaming ------------------------------------------------------------------------------


def test_streaming_needs_max_steps(tmp_path):
    folder = make(tmp_path, a=qa("a", 2))
    with pytest.raises(UserError, match="streaming: true needs max_steps"):
        load_splits(DataConfig(dataset="a", dataset_dir=folder, streaming=True), Report())


def test_streaming_is_lazy_and_re_iterable(tmp_path, monkeypatch):
    folder = make(tmp_path, a=qa("a", 5), b=qa("b", 5))
    reads = []
    original = sources.spec_records

    def counting(spec, streaming=False):
        for raw in original(spec, streaming):
            reads.append(raw[2]["instruction"])
            yield raw

    monkeypatch.setattr(sources, "spec_records", counting)
    data = DataConfig(
        dataset="a,b",
        dataset_dir=folder,
        streaming=True,
        buffer_size=1,
        mix_strategy="interleave_under",
    )
    train, evaluation = load_splits(data, Report(), max_steps=3)
    assert isinstance(train, SampleStream) and evaluation == [] and reads == []
    iterator = iter(train)
    assert prompts([next(iterator), next(iterator)]) == ["a0", "b0"]
    assert len(reads) <= 3  # read as consumed, not up front
    assert prompts(train) == prompts(train)  # each pass reads the data again, same order


def test_streaming_val_size_is_a_count_and_skips_are_reported(tmp_path):
    folder = make(tmp_path, a=qa("a", 6) + [{"instruction": "bad"}])
    report = Report()
    data = DataConfig(
        dataset="a", dataset_dir=folder, streaming=True, val_size=2, skip_invalid=True
    )
    train, evaluation = load_splits(data, report, max_steps=5)
    assert len(evaluation) == 2 and len(list(train)) == 4
    assert set(prompts(evaluation)).isdisjoint(prompts(train))
    list(train)  # a second pass reads the data again; nothing is counted twice
    assert report.skipped == 1 and report.skip_reasons == {"missing column": 1}
    assert report.records == {"a": 7}
    data.val_size = 0.5
    with pytest.raises(UserError, match="a stream has no known length"):
        load_splits(data, Report(), max_steps=5)


def test_streaming_refuses_an_invalid_record_when_reached(tmp_path):
    folder = make(tmp_path, a=qa("a", 2) + [{"instruction": "bad"}])
    data = DataConfig(dataset="a", dataset_dir=folder, streaming=True)
    train, _ = load_splits(data, Report(), max_steps=5)
    with pytest.raises(UserError, match="a.json:record 2:output: missing or empty"):
        list(train)


def test_interleave_and_shuffle_buffer_helpers():
    assert list(interleave([[1, 2, 3], [10]], None, 0, until_all=False)) == [1, 10, 2]
    assert list(interleave([[1], []], None, 0, until_all=True)) == [1]
    shuffled = list(shuffle_buffer(range(100), 10, seed=3))
    assert sorted(shuffled) == list(range(100)) and shuffled != list(range(100))
    assert shuffled == list(shuffle_buffer(range(100), 10, seed=3))


def test_check_datasets_fails_fast_without_reading_records(tmp_path):
    folder = make(tmp_path, a=qa("a", 2), e=[{"broken": True}])
    data = DataConfig(dataset="a", eval_dataset="e", dataset_dir=folder)
    assert [s.name for s in sources.check_datasets(data, "sft")] == ["a", "e"]
    data.eval_dataset = "nope"
    with pytest.raises(UserError, match="dataset `nope` is not in"):
        sources.check_datasets(data, "sft")
