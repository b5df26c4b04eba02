"""Scoring multiple-choice questions by the next-token logits of the answer letters.

Each question's prompt is the chat template's generation prompt for the conversation built in
prompts.py; the model's logits at its last position are compared on the tokens of A, B, C and
D (the last token of each letter, as LLaMA-Factory takes it), and the largest is the answer.
Prompts are batched longest first with left padding (position ids counted from each prompt's
first real token), and only the last position's logits are computed where the model allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.errors import UserError
from lmforge.evaluate.benchmark import Benchmark
from lmforge.evaluate.prompts import CHOICES, question_messages
from lmforge.model.forward_inputs import forward_takes

# The order LLaMA-Factory reports categories in.
CATEGORIES = ("STEM", "Social Sciences", "Humanities", "Other")


def choice_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in CHOICES]
    if len(set(ids)) != len(ids):
        raise UserError(
            "the tokenizer gives the answer letters A, B, C and D the same token, so answers "
            "cannot be told apart by their logits",
            fix="evaluate a model whose tokenizer has the capital letters as tokens",
        )
    return ids


def encode_benchmark(benchmark: Benchmark, tokenizer, template, lang: str) -> list[list[int]]:
    """Every question's prompt ids, subject by subject in file order."""
    prompts = []
    for subject in benchmark.subjects:
        for question in subject.questions:
            messages = question_messages(question, subject.shots, subject.name, lang)
            prompts.append(template.encode_prompt(tokenizer, messages))
    return prompts


def predict_letters(
    model,
    prompts: list[list[int]],
    choice_ids: list[int],
    pad_id: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The letter each prompt's next-token logits favour among `choice_ids`."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    letters: list[str] = [""] * len(prompts)
    device = _device(model)
    takes_keep = forward_takes(model, "logits_to_keep", through_kwargs=False)
    extra = {"logits_to_keep": 1} if takes_keep else {}
    choice = torch.tensor(choice_ids, device=device)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [prompts[i] for i in order[start : start + batch_size]]
            longest = max(len(p) for p in batch)
            ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in batch], device=device)
            mask = torch.tensor(
                [[0] * (longest - len(p)) + [1] * len(p) for p in batch], device=device
            )
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, **extra
            ).logits[:, -1, :]
            picks = logits.float().index_select(-1, choice).argmax(-1).tolist()
            for i, pick in zip(order[start : start + batch_size], picks):
                letters[i] = CHOICES[pick]
            if progress is not None:
                progress(len(batch))
    return letters


def _device(model):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    import torch

    params = list(getattr(model, "parameters", lambda: [])())
    return params[0].device if params else torch.device("cpu")


@dataclass
class Tally:
    correct: int = 0
    total: int = 0

    def add(self, correct: int, total: int) -> None:
        self.correct += correct
        self.total += total

    def as_dict(self) -> dict:
        accuracy = 100.0 * self.correct / self.total if self.total else None
        return {"accuracy": accuracy, "correct": self.correct, "total": self.total}


def summarize(benchmark: Benchmark, letters: list[str]) -> dict:
    """Accuracy (in percent) per subject, per category and over all questions (each category
    and the average count questions, not subjects, as LLaMA-Factory does)."""
    subjects: dict[str, dict] = {}
    categories: dict[str, Tally] = {}
    average = Tally()
    predictions: dict[str, list[str]] = {}
    position = 0
    for subject in benchmark.subjects:
        picked = letters[position : position + len(subject.questions)]
        position += len(subject.questions)
        correct = sum(p == q.answer for p, q in zip(picked, subject.questions))
        tally = Tally(correct, len(picked))
        subjects[subject.key] = {
            "name": subject.name,
            "category": subject.category,
            **tally.as_dict(),
        }
        if subject.category:
            categories.setdefault(subject.category, Tally()).add(correct, len(picked))
        average.add(correct, len(picked))
        predictions[subject.key] = picked
    ordered = [c for c in CATEGORIES if c in categories] + sorted(
        c for c in categories if c not in CATEGORIES
    )
    return {
        "average": average.as_dict(),
        "categories": {c: categories[c].as_dict() for c in ordered},
        "subjects": subjects,
        "predictions": predictions,
    }
