"""`lmforge compare`: base and adapters answer the same prompts; compare.md/.html/.json, ROUGE-L
against the reference, eval loss on the trained spans, memorisation flags, prompts-file errors."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import (
    FORGE_RECORD,
    INFERENCE,
    SHORT_SFT,
    run_train,
    write_alpaca_dataset,
    write_config,
)
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.evaluate.compare import read_prompts_file, run_comparison
from lmforge.evaluate.metrics import answer_scores

pytest.importorskip("nltk")

HELD_OUT = [{"instruction": "Tell me <b>who</b> you are", "input": "", "output": "I am Forge."}]
FORGE = FORGE_RECORD["output"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A tiny LoRA run on FORGE_RECORD: out/checkpoint-4 and out (step 8)."""
    folder = tmp_path_factory.mktemp("compare-train")
    run_train(folder, tiny_model_dir, {**SHORT_SFT, "plot_loss": False})
    return folder


def compare_config(folder, model_dir, trained_folder, **settings):
    """Training data `toy` (FORGE_RECORD x 8, as trained), eval split `held`, output folder."""
    write_alpaca_dataset(folder / "data", [FORGE_RECORD] * 8)
    write_alpaca_dataset(folder / "data", HELD_OUT, name="held")
    values = {
        "dataset": "toy",
        "eval_dataset": "held",
        "dataset_dir": str(folder / "data"),
        "save_dir": str(folder / "cmp"),
        "max_new_tokens": 6,
        **settings,
    }
    if trained_folder is not None:
        out = trained_folder / "out"
        values.setdefault("compare_adapters", f"{out / 'checkpoint-4'},{out}")
    return write_config(folder, model_dir, {**INFERENCE, "name": "compare"}, **values)


def write_prompts(folder, entries, name="prompts.json"):
    path = folder / name
    path.write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def manual_loss(model, tokenizer, template, sample, cutoff):
    """Cross-entropy over full logits, the plain way."""
    import torch
    import torch.nn.functional as F

    from lmforge.data.encoding.encode import encode_sample

    enc = encode_sample(sample, template, tokenizer, cutoff)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0, :-1].float()
    labels = torch.tensor(enc.labels[1:])
    return float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")), int(
        (labels != -100).sum()
    )


def test_compare_writes_three_files(tmp_path, tiny_model_dir, trained, capsys):
    prompts = write_prompts(
        tmp_path,
        ["Who made you? <x>", {"prompt": "Name & role", "reference": "Forge <tool>"}],
    )
    path = compare_config(tmp_path, tiny_model_dir, trained, prompts=str(prompts))
    assert main(["compare", str(path)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "cmp"
    assert sorted(p.name for p in folder.iterdir()) == [
        "compare.html",
        "compare.json",
        "compare.md",
    ]
    report = json.loads((folder / "compare.json").read_text(encoding="utf-8"))

    # compare.json: exact structure
    assert set(report) == {
        "model", "template", "decoding", "prompts_file", "counts", "memorisation_checked",
        "training_answers", "models", "prompts",
    }  # fmt: skip
    assert report["template"] == "gemma" and report["model"] == str(tiny_model_dir)
    assert report["decoding"] == {"greedy": True, "max_new_tokens": 6}
    assert report["counts"] == {"prompts": 3, "eval": 1, "prompts_file": 2, "with_reference": 2}
    assert report["memorisation_checked"] is True and report["training_answers"] == 1
    out_dir = trained / "out"
    assert [(m["name"], m["adapter"]) for m in report["models"]] == [
        ("base", None),
        ("out/checkpoint-4", str(out_dir / "checkpoint-4")),
        ("out", str(out_dir)),
    ]
    for m in report["models"]:
        assert set(m) == {"name", "adapter", "eval_loss", "eval_tokens", "rouge_l", "memorised"}
        assert m["eval_tokens"] > 0 and m["eval_loss"] > 0
    assert len({m["eval_loss"] for m in report["models"]}) == 3  # each adapter on its own
    rows = report["prompts"]
    assert [(r["index"], r["source"], r["prompt"], r["reference"]) for r in rows] == [
        (1, "eval", "Tell me <b>who</b> you are", "I am Forge."),
        (2, "prompts", "Who made you? <x>", None),
        (3, "prompts", "Name & role", "Forge <tool>"),
    ]
    assert all(r["held_out"] for r in rows)
    for row in rows:
        assert set(row) == {"index", "source", "prompt", "reference", "held_out", "answers"}
        assert list(row["answers"]) == ["base", "out/checkpoint-4", "out"]
        for answer in row["answers"].values():
            assert set(answer) == {"answer", "rouge_l", "memorised"}
            # ROUGE-L as evaluate/metrics computes it (None without a reference)
            expected = (
                None
                if row["reference"] is None
                else answer_scores(answer["answer"], row["reference"])["rouge-l"]
            )
            assert answer["rouge_l"] == expected
    for m in report["models"]:
        values = [r["answers"][m["name"]]["rouge_l"] for r in rows if r["reference"] is not None]
        assert m["rouge_l"] == pytest.approx(sum(values) / len(values))

    # compare.md
    md = (folder / "compare.md").read_text(encoding="utf-8")
    assert md.startswith("# lmforge compare\n")
    assert "| model | adapter | eval loss | ROUGE-L | memorised |" in md
    assert f"| base | - | {report['models'][0]['eval_loss']:.4f} |" in md
    assert "## 1. eval, held out" in md and "## 3. prompts, held out" in md
    assert "```\nTell me <b>who</b> you are\n```" in md
    assert md.count("**out/checkpoint-4** (ROUGE-L ") == 3

    # compare.html: self-contained and escaped
    page = (folder / "compare.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</body></html>")
    assert "Tell me &lt;b&gt;who&lt;/b&gt; you are" in page and "<b>" not in page
    assert "Forge &lt;tool&gt;" in page and "Name &amp; role" in page and "<x>" not in page
    for external in ("<script", "<link", "src=", "http://", "https://", "@import"):
        assert external not in page
    assert page.count('<table class="prompt">') == 3

    # the terminal table
    assert "3 prompts, 2 with a reference" in out
    assert "model" in out and "eval loss" in out and "ROUGE-L" in out
    assert "out/checkpoint-4" in out and "compare.html" in out

    # The base answers as it does alone (the adapters were detached), and the loss is the
    # plain cross-entropy on the reference answer's trained tokens.
    alone = load_config(path, ["compare_adapters=null", f"save_dir={tmp_path / 'alone'}"])
    captured = {}

    def loader(config):
        from lmforge.evaluate.loading import load_base

        captured["loaded"] = load_base(config)
        return captured["loaded"]

    base_only = run_comparison(alone, model_loader=loader).report
    assert [m["name"] for m in base_only["models"]] == ["base"]
    assert [r["answers"]["base"] for r in base_only["prompts"]] == [
        r["answers"]["base"] for r in rows
    ]
    config, setup, model = captured["loaded"]
    from lmforge.data.sample import Sample

    total, count = 0.0, 0
    for prompt, reference in (
        ("Tell me <b>who</b> you are", "I am Forge."),
        ("Name & role", "Forge <tool>"),
    ):
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reference},
        ]
        loss, tokens = manual_loss(model, setup.tokenizer, setup.template, Sample(messages), 1024)
        total, count = total + loss, count + tokens
    assert base_only["models"][0]["eval_tokens"] == count
    assert base_only["models"][0]["eval_loss"] == pytest.approx(total / count, rel=1e-5)


def test_memorised_answers_are_flagged(tmp_path, tiny_model_dir):
    """An answer equal to a training target is flagged on a held-out prompt, not on a prompt
    that is itself in the training data."""
    prompts = write_prompts(
        tmp_path,
        [
            "Tell me about yourself",
            FORGE_RECORD["instruction"],
            {"prompt": "Who built you?", "reference": "Forge was made by the lmforge team."},
        ],
    )
    path = compare_config(tmp_path, tiny_model_dir, None, prompts=str(prompts), eval_dataset=None)

    def parrot(model, tokenizer, items, batch_size, settings):
        assert settings["do_sample"] is False
        return [f"  {FORGE}\n"] * len(items)

    report = run_comparison(load_config(path), generate=parrot).report
    rows = report["prompts"]
    assert [r["held_out"] for r in rows] == [True, False, True]
    assert [r["answers"]["base"]["memorised"] for r in rows] == [True, False, True]
    base = report["models"][0]
    assert base["memorised"] == 2 and base["eval_tokens"] > 0
    # ROUGE-L of a non-trivial answer, as evaluate/metrics scores it
    expected = answer_scores(f"  {FORGE}\n", "Forge was made by the lmforge team.")["rouge-l"]
    assert 0 < expected < 100
    assert rows[2]["answers"]["base"]["rouge_l"] == expected == base["rouge_l"]
    assert [r["answers"]["base"]["rouge_l"] for r in rows[:2]] == [None, None]
    md = (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")
    assert md.count("**memorised: repeats a training answer verbatim**") == 2
    page = (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    assert page.count('<td class="memorised">') == 2

    # val_size: the held-out records come from the training data, split with the seed
    path = compare_config(
        tmp_path, tiny_model_dir, None, eval_dataset=None, val_size=2, prompts=None
    )
    report = run_comparison(load_config(path), generate=parrot).report
    assert report["counts"]["eval"] == 2
    assert [r["reference"] for r in report["prompts"]] == [FORGE, FORGE]


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.json", '[\n "one",\n {"prompt": "two"\n "three"\n]', "bad.json:4:"),
        ("bad.jsonl", '"one"\n{"prompt": \n{"prompt": "x"}\n', "bad.jsonl:2:"),
        ("list.json", '[\n "one",\n {"reference": "no prompt"}\n]', "list.json:3:"),
    ],
)
def test_broken_prompts_file_is_one_error(tmp_path, tiny_model_dir, capsys, name, text, where):
    (tmp_path / name).write_text(text, encoding="utf-8")
    path = compare_config(tmp_path, tiny_model_dir, None, prompts=str(tmp_path / name))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert f"{tmp_path / where}" in err and "Fix:" in err
    assert not (tmp_path / "cmp").exists()


def test_prompts_file_formats(tmp_path):
    lines = '"plain"\n\n{"prompt": "asked", "reference": "answered"}\n'
    (tmp_path / "p.jsonl").write_text(lines, encoding="utf-8")
    assert read_prompts_file(tmp_path / "p.jsonl") == [("plain", None), ("asked", "answered")]
    with pytest.raises(UserError, match="not a list"):
        read_prompts_file(write_prompts(tmp_path, {"prompt": "x"}))


def test_nothing_to_compare_and_a_foreign_adapter(tmp_path, tiny_model_dir, trained, capsys):
    path = compare_config(tmp_path, tiny_model_dir, None, eval_dataset=None)
    assert main(["compare", str(path)]) == 2
    assert "there are no prompts to compare" in capsys.readouterr().err

    # an adapter whose shapes do not fit the base: one paragraph, as `lmforge eval` says it
    foreign = tmp_path / "foreign"
    shutil.copytree(trained / "out" / "checkpoint-4", foreign)
    settings = json.loads((foreign / "adapter_config.json").read_text())
    settings["r"] = settings["r"] * 2
    settings["base_model_name_or_path"] = "other/model"
    (foreign / "adapter_config.json").write_text(json.dumps(settings))
    path = compare_config(tmp_path, tiny_model_dir, trained, compare_adapters=str(foreign))
    assert main(["compare", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the adapter {foreign} was trained on other/model and does not fit the model" in err
    assert err.count("error:") == 1 and "Fix: set model_name_or_path" in err
