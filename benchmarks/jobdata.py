"""The benchmark's training data: alpaca records of a chosen token length, from a seed.

Each record's instruction + output take a length drawn uniformly from [min_tokens, max_tokens]
Gemma tokens (counted without the chat template, which adds 9 more). The text is sentences of
common English words picked by `random.Random(seed)`; the instruction takes 20-50 % of the
tokens. Same seed and tokenizer -> the same file, byte for byte.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

WORDS = """
the model learns from data and each example shows a question with its answer while training
adjusts small matrices added to every layer so the base weights stay frozen a good dataset is
clean varied and long enough to teach the format but short enough to read in one sitting
people ask about weather travel cooking history science music sport health money work school
river mountain city village garden kitchen window table chair book letter story song picture
quickly slowly carefully often rarely always never today tomorrow yesterday morning evening
bright dark warm cold quiet loud simple complex early late small large new old green blue red
explain describe compare list summarise translate write plan measure count check improve
because although while after before until since when where which whose whom why how what
teacher student doctor farmer driver painter writer builder sailor baker engineer nurse
""".split()

OPENERS = [
    "Explain in plain words",
    "Describe step by step",
    "Write a short note about",
    "Summarise for a beginner",
    "Compare two views on",
    "List the main points of",
]

DATASET_NAME = "bench_alpaca"


def _sentences(rng: random.Random, words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        n = rng.randint(6, 14)
        sentence = [rng.choice(WORDS) for _ in range(n)]
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += "."
        out.extend(sentence)
    return " ".join(out)


def _fit(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest prefix of `text`, cut between words, with at most `budget` tokens."""
    words = text.split(" ")
    low, high = 1, len(words)
    while low < high:  # binary search on the number of words
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid])) <= budget:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low])


def make_records(
    count_tokens: Callable[[str], int],
    *,
    n: int = 256,
    min_tokens: int = 50,
    max_tokens: int = 400,
    seed: int = 0,
) -> list[dict]:
    """`n` alpaca records whose instruction + output have min..max tokens (by count_tokens)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        total = rng.randint(min_tokens, max_tokens)
        prompt_budget = max(8, round(total * rng.uniform(0.2, 0.5)))
        opener = rng.choice(OPENERS)
        # Words are ~1-2 tokens each: draw twice the budget, then cut to fit exactly.
        instruction = _fit(
            f"{opener}: {_sentences(rng, prompt_budget)}", prompt_budget, count_tokens
        )
        left = total - count_tokens(instruction)
        output = _fit(_sentences(rng, 2 * left), left, count_tokens)
        records.append({"instruction": instruction, "input": "", "output": output})
    return records


def record_tokens(record: dict, count_tokens: Callable[[str], int]) -> int:
    return count_tokens(record["instruction"]) + count_tokens(record["output"])


def gemma_counter(model_dir: Path) -> Callable[[str], int]:
    """Token counts from the model's own tokenizer.json (no special tokens)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def write_dataset(records: list[dict], folder: Path) -> Path:
    """data.json and a LLaMA-Factory dataset_info.json (read as is by lmforge and LF)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    info = {DATASET_NAME: {"file_name": "data.json"}}  # alpaca columns are the default
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder / "data.json"
