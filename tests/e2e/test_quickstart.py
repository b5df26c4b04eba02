"""The quickstart with the real embedded model (Gemma-3-270M), for a few steps.

Marked e2e: it converts the model once per machine (about 80 s) into the default lmforge home,
which later runs and the quickstart itself reuse.
"""

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data.encoding.encode import IGNORE_INDEX, encode_sample
from lmforge.data.sample import Sample
from lmforge.data.templates.named import get_template
from lmforge.model.load import load_tokenizer
from lmforge.model.pull import pull_model

pytestmark = pytest.mark.e2e
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    return pull_model("gemma-3-270m")


def test_gemma_template_exact_ids_with_the_real_tokenizer(gemma_dir):
    tokenizer = load_tokenizer(gemma_dir)
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    template = get_template("gemma")
    encoded = encode_sample(Sample(conversation), template, tokenizer, cutoff_len=1024)
    # <bos> <start_of_turn> user \n Hi <end_of_turn> \n <start_of_turn> model \n
    prompt_first = [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107]
    prompt_next = prompt_first[1:]  # no second <bos>
    answer = [9259, 236888, 106, 107]  # Hello! <end_of_turn> \n
    assert encoded.input_ids == prompt_first + answer + prompt_next + answer
    masked_first = [IGNORE_INDEX] * len(prompt_first)
    masked_next = [IGNORE_INDEX] * len(prompt_next)
    assert encoded.labels == masked_first + answer + masked_next + answer
    # Encoding turn by turn gives the same ids as the vendor's Jinja template in one piece.
    tokenizer.chat_template = template.jinja
    vendor = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
    assert encoded.input_ids == list(vendor)


def test_quickstart_trains_and_chats(gemma_dir, tmp_path, capsys):
    output_dir = tmp_path / "quickstart"
    code = main(
        [
            "train",
            str(QUICKSTART / "train.yaml"),
            f"output_dir={output_dir}",
            "max_steps=4",
            "logging_steps=1",
            "save_steps=2",
        ]
    )
    assert code == 0
    records = [
        json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()
    ]
    steps = [r for r in records if "loss" in r]
    assert [r["current_steps"] for r in steps] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in steps)
    # val_size: auto held out 8 of the quickstart's 105 records; they are evaluated at the end.
    assert [r["current_steps"] for r in records if "eval_loss" in r] == [4]
    for name in (
        "adapter_model.safetensors",
        "run_config.yaml",
        "run_plan.yaml",
        "report.md",
        "training_loss.png",
        "all_results.json",
        "chat_template.jinja",
        "checkpoint-2",
        "checkpoint-4",
    ):
        assert (output_dir / name).exists(), name
    capsys.readouterr()
    code = main(
        [
            "chat",
            str(QUICKSTART / "infer.yaml"),
            f"adapter_name_or_path={output_dir}",
            "max_new_tokens=8",
            "--prompt",
            "Who are you?",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip()
