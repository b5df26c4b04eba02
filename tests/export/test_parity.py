"""The merged folder's parity rule: answers identical, or parting only at a near tie that the
stored dtype's rounding can flip; anything else fails."""

import pytest
import torch

from lmforge.export import parity


def reference(top: float, second: float) -> parity.Reference:
    """One prompt; the reference answered [5, 7, 1] (1: the stop id); at answer position 1 it
    preferred token 7 (logit `top`) over token 9 (logit `second`)."""
    logits = torch.zeros(3, 12)
    logits[0, 5] = 4.0
    logits[1, 7], logits[1, 9] = top, second
    logits[2, 1] = 3.0
    return parity.Reference([[2, 3]], [[5, 7, 1]], [logits], [1])


def folder_check(monkeypatch, ref, got, moved: float):
    """compare_folder with the model's answer `got` and its logits at the reference positions
    moved by `moved` at the parting position."""
    model_logits = ref.logits[0].clone()
    model_logits[1, 9] += moved

    def answers(model, reference, device, what):
        yield (None if got == reference.answers[0] else got), model_logits

    monkeypatch.setattr(parity, "_answers", answers)
    return parity.compare_folder(None, ref, "bfloat16", device="cpu", decode=str)


def test_a_near_tie_flipped_by_rounding_passes(monkeypatch):
    result = folder_check(monkeypatch, reference(2.0, 1.9), [5, 9, 1], moved=0.15)
    assert (result.identical, result.near_ties, result.passed) == (0, 1, True)
    assert "a near tie" in result.differences[0] and "0.1" in result.differences[0]


@pytest.mark.parametrize(
    "top, moved",
    [
        (3.5, 0.5),  # margin 1.6: more than bf16's tolerance of 1.0
        (2.0, 0.02),  # margin 0.1, but the logits moved by 0.02: rounding cannot explain it
    ],
)
def test_other_departures_fail(monkeypatch, top, moved):
    result = folder_check(monkeypatch, reference(top, 1.9), [5, 9, 1], moved=moved)
    assert (result.near_ties, result.passed) == (0, False)


def test_margin_where_one_answer_stops_early():
    ref = reference(2.0, 1.9)
    margin, position = parity._reference_margin(ref, 0, [5, 1])  # stopped at position 1
    assert position == 1
    assert margin == pytest.approx(2.0 - 0.0)  # stop id 1 has logit 0 there
