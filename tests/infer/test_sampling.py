"""OpenAI's penalties as logits processors, and the per-request sampler."""

from __future__ import annotations

import torch

from lmforge.infer.sampling import PresenceFrequencyPenalty, SamplingParams, TokenSampler


def test_presence_and_frequency_follow_openai_formula():
    # prompt = [0, 0]; generated = [1, 1, 2]: token 1 twice, token 2 once, token 0 only in prompt.
    ids = torch.tensor([[0, 0, 1, 1, 2]])
    scores = torch.zeros(1, 4)
    out = PresenceFrequencyPenalty(presence=0.5, frequency=0.25, prompt_len=2)(ids, scores)
    assert out.tolist() == [[0.0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0.0]]


def test_negative_penalties_encourage_repeats():
    ids = torch.tensor([[3, 1]])
    out = PresenceFrequencyPenalty(presence=-1.0, frequency=0.0, prompt_len=1)(
        ids, torch.zeros(1, 4)
    )
    assert out[0, 1] == 1.0 and out[0, 3] == 0.0  # prompt tokens are not counted


def test_greedy_sampler_follows_penalties():
    logits = torch.tensor([0.0, 3.0, 2.0])
    plain = TokenSampler(SamplingParams(max_tokens=1, temperature=0), prompt_len=1)
    assert plain([0, 1], logits) == 1
    penalized = TokenSampler(
        SamplingParams(max_tokens=1, temperature=0, frequency_penalty=1.5), prompt_len=1
    )
    assert penalized([0, 1], logits) == 2  # 3.0 - 1.5 < 2.0


def test_seed_makes_sampling_reproducible():
    logits = torch.randn(50)
    params = SamplingParams(max_tokens=1, temperature=1.0, seed=11)
    a = [TokenSampler(params, 0)([], logits) for _ in range(3)]
    s = TokenSampler(params, 0)
    b = [s([], logits) for _ in range(20)]
    assert len(set(a)) == 1  # a fresh sampler with the same seed picks the same token
    assert b[0] == a[0] and len(set(b)) > 1


def test_top_p_and_top_k_restrict_choices():
    logits = torch.tensor([5.0, 4.9, -5.0, -5.0])
    for params in (
        SamplingParams(max_tokens=1, temperature=1.0, top_k=2, seed=0),
        SamplingParams(max_tokens=1, temperature=1.0, top_p=0.9, seed=0),
    ):
        s = TokenSampler(params, 0)
        assert {s([], logits) for _ in range(100)} <= {0, 1}
