"""Per-request sampling: the settings, OpenAI's penalties as logits processors, the next token.

OpenAI's presence and frequency penalties are additive and count only generated tokens:
    logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)
They are not transformers' multiplicative `repetition_penalty` (which also covers the prompt);
that one stays available from the config as a separate knob.

The API bounds temperature and repetition_penalty so float32 logits cannot overflow, but a
config can still set extreme values, so the sampler never raises on them: a temperature below
GREEDY_BELOW is greedy (as in vLLM; dividing by it would overflow), scores that still overflow
to +inf are tied (sampled among uniformly), NaN scores are ruled out, and if every token is
ruled out the raw logits' argmax is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

GREEDY_BELOW = 1e-5  # temperatures under this are greedy: logits / temperature would overflow


@dataclass(frozen=True)
class SamplingParams:
    """Everything that decides which tokens one answer gets. temperature 0 means greedy (and
    so does any temperature below GREEDY_BELOW)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    skip_special_tokens: bool = True  # in the answer's text

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's presence/frequency penalties over the tokens generated after `prompt_len`."""

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence = presence
        self.frequency = frequency
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class TokenSampler:
    """Picks each next token of one sequence; owns its random generator (for `seed`)."""

    def __init__(self, params: SamplingParams, prompt_len: int, device: torch.device | str = "cpu"):
        self.params = params
        processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.presence_penalty or params.frequency_penalty:
            processors.append(
                PresenceFrequencyPenalty(
                    params.presence_penalty, params.frequency_penalty, prompt_len
                )
            )
        if not params.greedy:
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
        self.processors = processors
        self.generator = torch.Generator(device=device)
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def __call__(self, token_ids: list[int], logits: torch.Tensor) -> int:
        """Next token after `token_ids` (prompt + generated so far), from last-position logits."""
        raw = logits.float().view(1, -1)
        scores = raw
        if self.processors:
            input_ids = torch.tensor([token_ids], device=scores.device)
            scores = self.processors(input_ids, scores)
        scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"))
        top = torch.isposinf(scores)
        if top.any():  # overflowed: the limit of these scores is uniform over the +inf tokens
            scores = torch.where(top, 0.0, float("-inf"))
        if torch.isneginf(scores).all():  # everything ruled out: fall back to the model's pick
            scores = torch.nan_to_num(raw, nan=float("-inf"))
            return int(scores.argmax(dim=-1))
        if self.params.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
