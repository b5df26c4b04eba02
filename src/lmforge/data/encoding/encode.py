"""Samples -> token ids and labels: -100 on every token the model must not learn.

SFT: the template renders the conversation into segments (trained or not); the whole text is
tokenized at once (so the ids equal `apply_chat_template(tokenize=True)`) and each token is
trained when it covers a trained character. Other stages get their own encoders: pre-training
text, preference pairs (DPO/RM) and KTO completions.

Truncation keeps the beginning of a sample and never leaves a prompt without its answer: the
tokens beyond cutoff_len are cut, then any untrained tail. A sample whose answer is cut away
entirely has no trained token; callers count and drop such samples, and count truncated ones.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from lmforge.data.sample import Sample
from lmforge.data.templates.named import Segment

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool  # some tokens beyond cutoff_len were cut
    lost_tokens: int = 0  # how many

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def tokenize_segments(tokenizer, segments: list[Segment]) -> tuple[list[int], list[int]]:
    """(ids, turn per token): turn is the assistant message a trained token belongs to, -1 for
    an untrained token."""
    text = "".join(s.text for s in segments)
    if not getattr(tokenizer, "is_fast", False):
        return _tokenize_piecewise(tokenizer, segments)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts, ends, turns, position = [], [], [], 0
    for segment in segments:
        if segment.trained:
            starts.append(position)
            ends.append(position + len(segment.text))
            turns.append(segment.turn)
        position += len(segment.text)
    token_turns = []
    for start, end in encoding["offset_mapping"]:
        end = max(end, start + 1)  # a zero-width token counts the character it sits on
        # The trained span that could overlap [start, end): the last one starting before end.
        i = bisect_left(starts, end) - 1
        token_turns.append(turns[i] if i >= 0 and ends[i] > start else -1)
    return list(encoding["input_ids"]), token_turns


def _tokenize_piecewise(tokenizer, segments: list[Segment]) -> tuple[list[int], list[int]]:
    # Slow tokenizers give no offsets: encode segment by segment (boundaries may then differ
    # from tokenizing the whole text, which the pre-flight check reports).
    ids: list[int] = []
    turns: list[int] = []
    for segment in segments:
        piece = tokenizer.encode(segment.text, add_special_tokens=False)
        ids += piece
        turns += [segment.turn if segment.trained else -1] * len(piece)
    return ids, turns


def encode_sample(
    sample: Sample,
    template,
    tokenizer,
    cutoff_len: int,
    train_on_prompt: bool = False,
    *,
    mask_history: bool = False,
) -> Encoded:
    """A conversation for SFT. train_on_prompt: every token is trained; mask_history: of the
    answers, only the last one is (as LLaMA-Factory's keys)."""
    segments = template.render(tokenizer, sample.messages, sample.system, sample.tools)
    ids, turns = tokenize_segments(tokenizer, segments)
    last = max(turns, default=-1)
    labels = []
    for token, turn in zip(ids, turns):
        answer = turn >= 0
        trained = (answer or train_on_prompt) and not (mask_history and answer and turn != last)
        labels.append(token if trained else IGNORE_INDEX)
    return _truncate(ids, labels, cutoff_len)


def _truncate(ids: list[int], labels: list[int], cutoff_len: int) -> Encoded:
    if len(ids) <= cutoff_len:
        return Encoded(ids, labels, False)
    kept_ids, kept_labels = ids[:cutoff_len], labels[:cutoff_len]
    while kept_labels and kept_labels[-1] == IGNORE_INDEX:  # a prompt without its answer
        kept_labels.pop()
        kept_ids.pop()
    return Encoded(kept_ids, kept_labels, True, len(ids) - len(kept_ids))


def encode_pretrain(sample: Sample | str, tokenizer, cutoff_len: int) -> list[Encoded]:
    """Pre-training text: the tokenizer's own special tokens (BOS where it adds one), the text,
    EOS; a text longer than cutoff_len becomes several blocks, every token trained."""
    text = sample if isinstance(sample, str) else (sample.text or "")
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    blocks = [ids[i : i + cutoff_len] for i in range(0, len(ids), cutoff_len)]
    return [Encoded(block, list(block), False) for block in blocks]


@dataclass
class EncodedPair:
    """A prompt and two answers (chosen, rejected) for DPO and reward modelling."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False

    def chosen(self) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of prompt + chosen answer, the prompt masked."""
        return _joined(self.prompt_ids, self.chosen_ids)

    def rejected(self) -> tuple[list[int], list[int]]:
        return _joined(self.prompt_ids, self.rejected_ids)


@dataclass
class EncodedKTO:
    """A prompt, one answer and whether the answer is desirable (KTO)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    truncated: bool = False

    def joined(self) -> tuple[list[int], list[int]]:
        return _joined(self.prompt_ids, self.completion_ids)


def _joined(prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def prompt_and_answer(template, tokenizer, sample: Sample, answer: dict) -> tuple[list, list]:
    """Token ids of the prompt (everything before the final answer's trained tokens) and of
    the final answer (its trained tokens: content, end-of-turn marker)."""
    messages = list(sample.messages) + [answer]
    segments = template.render(tokenizer, messages, sample.system, sample.tools)
    ids, turns = tokenize_segments(tokenizer, segments)
    final = len(messages) - 1
    positions = [i for i, turn in enumerate(turns) if turn == final]
    if not positions:
        return ids, []
    return ids[: positions[0]], ids[positions[0] : positions[-1] + 1]


def _fit(prompt: list[int], answers: list[list[int]], cutoff_len: int):
    """Prompt and answers within cutoff_len: the prompt keeps its end (the latest turn and the
    generation prompt) and at least half of the budget when the answers are long; the answers
    keep their beginning."""
    longest = max((len(a) for a in answers), default=0)
    if len(prompt) + longest <= cutoff_len:
        return prompt, answers, False
    keep = min(len(prompt), max(cutoff_len - longest, cutoff_len // 2))
    prompt = prompt[len(prompt) - keep :]
    budget = cutoff_len - len(prompt)
    return prompt, [a[:budget] for a in answers], True


def encode_pairwise(sample: Sample, template, tokenizer, cutoff_len: int) -> EncodedPair:
    """Preference data: `sample.messages` is the prompt conversation (ending with the user
    turn), `sample.chosen` and `sample.rejected` the two final answers."""
    prompt, chosen = prompt_and_answer(template, tokenizer, sample, sample.chosen or {})
    prompt_r, rejected = prompt_and_answer(template, tokenizer, sample, sample.rejected or {})
    if prompt_r != prompt:  # templates render the prompt independently of the answer
        common = next((i for i, (a, b) in enumerate(zip(prompt, prompt_r)) if a != b), None)
        common = min(len(prompt), len(prompt_r)) if common is None else common
        chosen, rejected = prompt[common:] + chosen, prompt_r[common:] + rejected
        prompt = prompt[:common]
    prompt, (chosen, rejected), cut = _fit(prompt, [chosen, rejected], cutoff_len)
    return EncodedPair(prompt, chosen, rejected, cut)


def encode_pair_row(sample: Sample, template, tokenizer, cutoff_len: int) -> dict | None:
    """A preference pair as the row PairCollator reads (dpo and rm); None when either answer
    has no token left to train on."""
    pair = encode_pairwise(sample, template, tokenizer, cutoff_len)
    if not pair.chosen_ids or not pair.rejected_ids:
        return None
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = pair.chosen(), pair.rejected()
    return {
        "chosen_input_ids": chosen_ids,
        "chosen_labels": chosen_labels,
        "rejected_input_ids": rejected_ids,
        "rejected_labels": rejected_labels,
        "truncated": pair.truncated,
    }


def encode_kto(sample: Sample, template, tokenizer, cutoff_len: int) -> EncodedKTO:
    """KTO: the conversation's last message is the judged answer, `sample.kto_label` says
    whether it is desirable."""
    head = Sample(sample.messages[:-1], sample.system, sample.tools)
    prompt, completion = prompt_and_answer(template, tokenizer, head, sample.messages[-1])
    prompt, (completion,), cut = _fit(prompt, [completion], cutoff_len)
    return EncodedKTO(prompt, completion, bool(sample.kto_label), cut)


def kl_partner(index: int, count: int) -> int:
    """The record whose answer goes with record `index`'s prompt in KTO's KL rows: the one half
    the data further on (wrapping). A rotation: each answer is used once, and never with its own
    prompt when there are two records or more; rarely with a neighbour's (neighbours often
    answer the same prompt, e.g. a desirable and an undesirable answer to one question)."""
    return (index + max(1, count // 2)) % count


def add_kl_completions(rows: list[dict], cutoff_len: int) -> None:
    """KTO's KL reference term is the policy/reference log-ratio of mismatched prompt/answer
    pairs. Made here, at encoding time, from a different record of the same split (chosen by
    kl_partner), so that any batch size, 1 included, gives a real estimate; LLaMA-Factory pairs
    at preprocessing time too. Each row (with `prompt_ids` and `answer_ids`, which it loses)
    gains `kl_input_ids` and `kl_labels`: its prompt and the partner's answer, the prompt masked,
    fitted to cutoff_len as any KTO sample. The pairing depends on the rows' order alone, so a
    resumed run sees the same pairs. A single row has no partner: callers refuse that."""
    count = len(rows)
    if count == 1:
        raise ValueError("KTO's KL rows need two records or more")
    prompts = [row.pop("prompt_ids") for row in rows]
    answers = [row.pop("answer_ids") for row in rows]
    for index, row in enumerate(rows):
        prompt, (answer,), _ = _fit(prompts[index], [answers[kl_partner(index, count)]], cutoff_len)
        row["kl_input_ids"], row["kl_labels"] = _joined(prompt, answer)
