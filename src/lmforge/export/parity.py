"""Parity: what was written, loaded back, against the model exported (base + adapters).

The prompts are the training run's eval split (its first PROMPTS samples, each up to its last
user turn), else BUILT_IN, rendered with the training template. The reference model (float32,
the adapter attached, not merged) answers each greedily (NEW_TOKENS tokens at most, stopping
at a stop token); its logits at every answer position are kept.

- The merged folder, loaded in float32: its greedy answers must be identical and its logits
  within FOLDER_LOGIT_TOLERANCE[dtype] of the reference (max absolute difference); a reward
  model's value head scores too.
- The GGUF, loaded through transformers' GGUF loader: the mean KL divergence per token of its
  next-token distribution from the reference's (on the reference's answers), the share of
  identical greedy answers, and its tokenizer's ids for the prompts, against GGUF_THRESHOLDS.
docs/export.md explains the thresholds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import torch

logger = logging.getLogger(__name__)

PROMPTS = 8
NEW_TOKENS = 16
MAX_PROMPT_TOKENS = 512
BUILT_IN = (
    "Who are you?",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "Translate 'good morning' into French.",
    "Give me three tips for sleeping well.",
    "What is the capital of Japan?",
    "Explain what a neural network is in one sentence.",
    "Say hello.",
)
# The merged folder: every greedy answer identical, and the largest logit difference within
# the rounding of the stored dtype (float32 merges differ only in summation order).
FOLDER_LOGIT_TOLERANCE = {"float32": 1e-3, "bfloat16": 1.0, "float16": 0.25}
# GGUF: (largest mean KL per token, smallest share of identical greedy answers).
GGUF_THRESHOLDS = {"f16": (1e-3, 0.75), "q8_0": (1e-2, 0.5)}


@dataclass
class Reference:
    prompts: list[list[int]]
    answers: list[list[int]]
    logits: list[torch.Tensor]  # [answer length + 1, vocab] per prompt, float32, on the CPU
    stop_ids: list[int]
    values: list[float] | None = None  # value head at the last token (reward models)
    source: str = "built-in"


@dataclass
class FolderParity:
    prompts: int
    identical: int
    max_abs_logit_diff: float
    tolerance: float
    value_head_max_diff: float | None = None
    differences: list[str] = field(default_factory=list)
    # Answers that part from the reference where its two best tokens were closer than the
    # tolerance: the stored dtype's rounding may flip such a tie (bf16: a logit moves by ~0.25).
    near_ties: int = 0

    @property
    def passed(self) -> bool:
        values_ok = self.value_head_max_diff is None or self.value_head_max_diff <= self.tolerance
        return (
            self.identical + self.near_ties == self.prompts
            and self.max_abs_logit_diff <= self.tolerance
            and values_ok
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class GgufParity:
    kind: str
    prompts: int
    identical: int
    mean_kl: float
    max_kl: float
    tokenizer_identical: int
    chat_template_identical: bool
    thresholds: dict
    differences: list[str] = field(default_factory=list)
    error: str | None = None  # the GGUF could not be loaded back

    @property
    def identical_share(self) -> float:
        return self.identical / self.prompts if self.prompts else 1.0

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.mean_kl <= self.thresholds["mean_kl"]
            and self.identical_share >= self.thresholds["identical_share"]
            and self.tokenizer_identical == self.prompts
            and self.chat_template_identical
        )

    def to_dict(self) -> dict:
        data = {**asdict(self), "identical_share": self.identical_share, "passed": self.passed}
        for key in ("mean_kl", "max_kl"):  # JSON has no infinity
            data[key] = data[key] if math.isfinite(data[key]) else None
        return data


def prompt_messages(samples) -> list[tuple[list[dict], str | None]]:
    """(messages up to the last user turn, system) of each sample that has a user turn."""
    out = []
    for sample in samples:
        messages = list(getattr(sample, "messages", None) or [])
        while messages and messages[-1].get("role") != "user":
            messages.pop()
        if messages:
            out.append((messages, sample.system))
    return out


def build_prompts(template, tokenizer, conversations) -> list[tuple[str, list[int]]]:
    """(text, ids) of the first PROMPTS generation prompts that fit MAX_PROMPT_TOKENS."""
    prompts = []
    for messages, system in conversations:
        segments = template.render(tokenizer, messages, system, add_generation_prompt=True)
        text = "".join(s.text for s in segments)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= MAX_PROMPT_TOKENS:
            prompts.append((text, ids))
        if len(prompts) == PROMPTS:
            break
    return prompts


def built_in_conversations() -> list[tuple[list[dict], None]]:
    return [([{"role": "user", "content": text}], None) for text in BUILT_IN]


@torch.no_grad()
def make_reference(model, prompts, stop_ids, *, device: str, head=None, source="built-in"):
    """The reference model's greedy answers and their logits (and value head scores)."""
    answers, logits, values = [], [], []
    for prompt in _progress(prompts, "Reference answers"):
        answer, answer_logits = greedy(model, prompt, stop_ids, device)
        answers.append(answer)
        logits.append(answer_logits)
        if head is not None:
            values.append(_value(model, head, prompt + answer, device))
    return Reference(
        prompts, answers, logits, list(stop_ids), values if head is not None else None, source
    )


@torch.no_grad()
def compare_folder(model, reference: Reference, dtype_name: str, *, device: str, decode, head=None):
    tolerance = FOLDER_LOGIT_TOLERANCE[dtype_name]
    identical, near_ties, worst, value_diff, differences = 0, 0, 0.0, None, []
    for i, (same, logits) in enumerate(_answers(model, reference, device, "Folder answers")):
        worst = max(worst, (logits - reference.logits[i]).abs().max().item())
        if head is not None:
            sequence = reference.prompts[i] + reference.answers[i]
            gap = abs(_value(model, head, sequence, device) - reference.values[i])
            value_diff = gap if value_diff is None else max(value_diff, gap)
        identical += same is None
        if same is not None:
            margin, row = _reference_margin(reference, i, same)
            # Rounding can flip the reference's choice only if the logits there moved by at
            # least half the margin; within the tolerance that is a near tie, not a defect.
            moved = (logits[row] - reference.logits[i][row]).abs().max().item()
            tie = margin <= min(tolerance, 2 * moved)
            near_ties += tie
            differences.append(
                _difference(i, reference.answers[i], same, decode)
                + (
                    f" (a near tie: the reference's two tokens there differ by {margin:.3g})"
                    if tie
                    else ""
                )
            )
    return FolderParity(
        len(reference.prompts), identical, worst, tolerance, value_diff, differences, near_ties
    )


def _reference_margin(reference: Reference, index: int, got: list[int]) -> tuple[float, int]:
    """How much the reference preferred its own token over the one `got` chose where the two
    answers part (a stop id where one answer ends; 0 is an exact tie), and that position."""
    expected, row_logits = reference.answers[index], reference.logits[index]
    first = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    if first is None:
        first = min(len(expected), len(got))
    if first >= len(row_logits):  # the reference ran out of tokens there: nothing to compare
        return float("inf"), 0
    row = row_logits[first]
    stops = torch.tensor(reference.stop_ids, dtype=torch.long)

    def score(answer: list[int]) -> float:
        if first < len(answer):
            return row[answer[first]].item()
        return row[stops].max().item()  # this answer stopped here

    return score(expected) - score(got), first


@torch.no_grad()
def compare_gguf(
    model, reference: Reference, kind: str, *, device: str, decode, tokenizer_ids, template_ok
):
    """`tokenizer_ids`: how many prompts the GGUF's tokenizer encodes to the same ids."""
    max_kl_allowed, share = GGUF_THRESHOLDS[kind]
    identical, kls, differences = 0, [], []
    for i, (same, logits) in enumerate(_answers(model, reference, device, "GGUF answers")):
        p = reference.logits[i].log_softmax(-1)
        q = logits.log_softmax(-1)
        kls.append((p.exp() * (p - q)).sum(-1))
        identical += same is None
        if same is not None:
            differences.append(_difference(i, reference.answers[i], same, decode))
    per_token = torch.cat(kls) if kls else torch.zeros(1)
    return GgufParity(
        kind=kind,
        prompts=len(reference.prompts),
        identical=identical,
        mean_kl=per_token.mean().item(),
        max_kl=per_token.max().item(),
        tokenizer_identical=tokenizer_ids,
        chat_template_identical=template_ok,
        thresholds={"mean_kl": max_kl_allowed, "identical_share": share},
        differences=differences,
    )


def _progress(items, what: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=what, unit="prompt", leave=False)


def _answers(model, reference: Reference, device: str, what: str):
    """Per prompt: (None if the model's greedy answer is the reference's, else its answer; the
    model's logits at the reference answer's positions). When the answers agree, generation's
    own logits are those; otherwise one forward pass over the reference answer gives them."""
    pairs = list(zip(reference.prompts, reference.answers))
    for prompt, expected in _progress(pairs, what):
        answer, logits = greedy(model, prompt, reference.stop_ids, device)
        if answer == expected:
            yield None, logits
            continue
        out = model(input_ids=torch.tensor([prompt + expected], device=device))
        start = len(prompt) - 1
        yield answer, out.logits[0, start : start + len(expected)].float().cpu()


def failed_gguf(kind: str, reference: Reference, error: str) -> GgufParity:
    """The result for a GGUF that could not be loaded back."""
    max_kl_allowed, share = GGUF_THRESHOLDS[kind]
    return GgufParity(
        kind=kind,
        prompts=len(reference.prompts),
        identical=0,
        mean_kl=float("inf"),
        max_kl=float("inf"),
        tokenizer_identical=0,
        chat_template_identical=False,
        thresholds={"mean_kl": max_kl_allowed, "identical_share": share},
        error=error,
    )


def greedy(model, prompt: list[int], stop_ids: list[int], device: str):
    """(greedy answer ids, the stop token included when one ends it; the logits that chose
    each of them, [len(answer), vocab], float32 on the CPU)."""
    from transformers import GenerationConfig

    ids = torch.tensor([prompt], device=device)
    settings = GenerationConfig(
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        eos_token_id=list(stop_ids),
        pad_token_id=stop_ids[0] if stop_ids else 0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings
    )
    answer = out.sequences[0, len(prompt) :].tolist()
    logits = torch.cat([step[:1].float().cpu() for step in out.logits])
    return answer, logits


def _value(model, head, ids: list[int], device: str) -> float:
    """The value head's score at the last token (a reward model's reward)."""
    out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    hidden = out.hidden_states[-1][0, -1]
    return head(hidden.to(head.summary.weight.dtype)).item()


def _difference(index: int, expected: list[int], got: list[int], decode) -> str:
    """Where two answers part: the token index, and both answers from there, as text."""
    first = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    if first is None:
        first = min(len(expected), len(got))
    return (
        f"prompt {index + 1}, answer token {first}: expected {decode(expected[first:])!r}, "
        f"got {decode(got[first:])!r}"
    )
