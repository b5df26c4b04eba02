"""`lmforge synth augment`: each record -> the original and N rewrites; nothing dropped
silently; resumed from the store."""

from __future__ import annotations

import json

import yaml

from conftest import write_alpaca_dataset

RECORDS = [
    {"instruction": "How long does a panel last?", "input": "", "output": "About 25 years."},
    {
        "instruction": "And the inverter?",
        "input": "",
        "output": "About 10 years.",
        "history": [["Do panels age?", "Yes, slowly."]],
    },
    {"instruction": "What is net metering?", "input": "", "output": "A billing credit."},
    {"instruction": "Broken record without an answer", "input": ""},
]


def write_augment_config(tmp_path, url, **settings):
    data = write_alpaca_dataset(tmp_path / "data", RECORDS, name="chats")
    info = json.loads((data / "dataset_info.json").read_text())
    info["chats"]["columns"] = {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "history",
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    config = {
        "dataset": "chats",
        "dataset_dir": str(data),
        "llm": {"base_url": url, "model": "scripted", "retry_wait": 0.01},
        "augment_variants": 2,
        "output_dir": str(tmp_path / "out"),
        **settings,
    }
    path = tmp_path / "augment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_augment(tmp_path, scripted_llm, helpers):
    with scripted_llm() as server:
        path = write_augment_config(tmp_path, server.url, format="both", dedupe_threshold=1.0)
        assert helpers.run_cli("synth", "augment", str(path)) == 1  # the broken record
        assert server.stages() == {"augment": 3}
        out = tmp_path / "out"
        alpaca = helpers.read_json(out / "alpaca.json")
        sharegpt = helpers.read_json(out / "sharegpt.json")
        assert len(alpaca) == len(sharegpt) == 3 * 3  # original + 2 variants each
        first = [r for r in alpaca if r["record"] == 0]
        assert [r["variant"] for r in first] == [0, 1, 2]
        assert first[1]["instruction"] == "How long does a panel last? (v1)"
        assert first[1]["output"] == "About 25 years. (v1)"
        multi = [r for r in alpaca if r["record"] == 1 and r["variant"] == 2][0]
        assert multi["history"] == [["Do panels age? (v2)", "Yes, slowly. (v2)"]]
        assert len(sharegpt[3]["conversations"]) == 4
        info = helpers.read_json(out / "dataset_info.json")
        assert info["augment_alpaca"]["columns"]["history"] == "history"
        failed = [json.loads(line) for line in (out / "failed.jsonl").open()]
        assert len(failed) == 1 and failed[0]["stage"] == "read"
        report = helpers.read_json(out / "synth_report.json")
        assert report["counts"]["records"] == 4 and report["counts"]["failed"] == 1
        assert report["validation"]["problems"] == 0

        server.requests.clear()
        assert helpers.run_cli("synth", "augment", str(path)) == 1
        assert server.requests == []  # everything from the store
        assert helpers.read_json(out / "alpaca.json") == alpaca


def test_augment_wrong_turn_count_is_retried_then_recorded(tmp_path, scripted_llm, helpers):
    def respond(body):
        if helpers.stage_of(body) == "strict":
            return json.dumps([["only one turn"]])
        if "net metering" in helpers.prompt_of(body):
            return json.dumps([["one", "two", "three"]])  # wrong number of turns
        return helpers.smart(body)

    with scripted_llm(respond) as server:
        path = write_augment_config(tmp_path, server.url, eval_share=0.4)
        assert helpers.run_cli("synth", "augment", str(path)) == 1
        assert server.stages() == {"augment": 3, "strict": 1}
    out = tmp_path / "out"
    failed = [json.loads(line) for line in (out / "failed.jsonl").open()]
    assert sorted(f["stage"] for f in failed) == ["augment", "read"]
    assert [f["raw"] for f in failed if f["stage"] == "augment"] == ['[["only one turn"]]']
    # eval split by whole records: a record's variants are all in one file
    train = helpers.read_json(out / "alpaca.json")
    evals = helpers.read_json(out / "eval.json")
    assert evals and not {r["record"] for r in train} & {r["record"] for r in evals}
