"""The quickstart's export with the real embedded model (Gemma-3-270M): a briefly trained
adapter merged into bf16 shards and a q8_0 GGUF, each loaded back and compared (about 4 minutes
on 2 CPU cores, half of it training)."""

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data.templates.named import get_template
from lmforge.model.load import load_tokenizer
from lmforge.model.pull import pull_model

pytestmark = pytest.mark.e2e
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    return pull_model("gemma-3-270m")


def test_quickstart_export(gemma_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(QUICKSTART / "train.yaml"),
            f"output_dir={run}",
            "dataset=identity",
            "val_size=8",  # the parity prompts come from this eval split
            "max_steps=4",
            "learning_rate=1e-3",
            "cutoff_len=128",
            "save_steps=100",
            "plot_loss=false",
        ]
    )
    assert code == 0
    out = tmp_path / "exported"
    capsys.readouterr()
    code = main(
        [
            "export",
            str(QUICKSTART / "export.yaml"),
            f"adapter_name_or_path={run}",
            f"export_dir={out}",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    print(stdout)  # the measured parity, for the log

    report = json.loads((out / "export_report.json").read_text())
    folder, gguf = report["parity"]["folder"], report["parity"]["gguf"]
    assert report["dtype"] == "bfloat16" and "eval split" in report["parity"]["source"]
    # bf16 rounding may flip a near tie (docs/export.md); any other departure fails the export
    assert folder["passed"] and folder["identical"] + folder["near_ties"] == folder["prompts"] == 8
    # Which prompts sit at a near tie depends on the adapter trained: most answers match exactly
    assert folder["identical"] >= 6
    assert gguf["kind"] == "q8_0" and gguf["passed"] and gguf["identical"] >= 1
    assert gguf["tokenizer_identical"] == 8 and gguf["chat_template_identical"]

    # The exported tokenizer renders what was trained (the real tokenizer adds <bos> itself).
    tokenizer = load_tokenizer(out)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?"},
    ]
    trained = get_template("gemma").render(tokenizer, messages, add_generation_prompt=True)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "".join(s.text for s in trained)
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<end_of_turn>"' in modelfile
    assert "<bos>" not in modelfile.split('TEMPLATE """')[1].split('"""')[0]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 106]  # <eos>, <end_of_turn>
