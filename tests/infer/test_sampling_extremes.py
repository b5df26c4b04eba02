"""The sampler never raises on overflowing scores: the API bounds temperature and
repetition_penalty, but a config (generation defaults) can still set extreme ones."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.sampling import SamplingParams, TokenSampler

LOGITS = torch.tensor([0.0, 3.0, 2.0, -1.0])


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, 1e-30])
def test_a_vanishing_temperature_acts_as_greedy(temperature):
    sampler = TokenSampler(SamplingParams(max_tokens=1, temperature=temperature, seed=0), 1)
    assert {sampler([0], LOGITS) for _ in range(20)} == {1}


def test_scores_that_overflow_are_tied():
    # A repetition penalty of 1e-300 is 0 in float32: the seen positive logits become +inf.
    params = SamplingParams(max_tokens=1, temperature=1.0, repetition_penalty=1e-300, seed=0)
    sampler = TokenSampler(params, 1)
    logits = torch.tensor([3.0, 2.0, 1.0, 5.0])
    assert {sampler([0, 1], logits) for _ in range(50)} == {0, 1}  # not the unseen 5.0


@pytest.mark.parametrize("penalty", [1e-300, 1e300])
def test_extreme_repetition_penalties_do_not_raise(penalty):
    for greedy in (True, False):
        params = SamplingParams(
            max_tokens=1, temperature=0 if greedy else 1.0, repetition_penalty=penalty, seed=0
        )
        token = TokenSampler(params, 1)([0, 1, 2], LOGITS)
        assert 0 <= token < 4


def test_nan_scores_are_ruled_out_and_all_nan_falls_back_to_argmax():
    sampler = TokenSampler(SamplingParams(max_tokens=1, temperature=1.0, seed=0), 1)
    nan = float("nan")
    assert {sampler([0], torch.tensor([nan, 1.0, nan])) for _ in range(10)} == {1}
    assert sampler([0], torch.tensor([nan, nan, nan])) in (0, 1, 2)


def test_ordinary_sampling_is_unchanged():
    a = TokenSampler(SamplingParams(max_tokens=1, temperature=0.7, seed=3), 1)
    b = TokenSampler(SamplingParams(max_tokens=1, temperature=0.7, seed=3), 1)
    torch.manual_seed(0)
    draws = [torch.randn(50) for _ in range(20)]
    assert [a([0], d) for d in draws] == [b([0], d) for d in draws]
    greedy = TokenSampler(SamplingParams(max_tokens=1, temperature=0), 1)
    assert all(greedy([0], d) == int(d.argmax()) for d in draws)
