"""Incremental detokenization and stop strings."""

from __future__ import annotations

import pytest

from lmforge.infer.text_stream import IncrementalDecoder, StopStringFilter


def test_incremental_decoding_equals_whole_decoding(tiny_tokenizer):
    text = "Hello, 你是谁? <end_of_turn> done"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tiny_tokenizer)
    assert "".join(decoder.add(i) for i in ids) == tiny_tokenizer.decode(
        ids, skip_special_tokens=True
    )


def test_byte_level_tokens_never_emit_half_characters():
    class Bytes:  # a byte-level tokenizer: one id per UTF-8 byte
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    decoder = IncrementalDecoder(Bytes())
    pieces = [decoder.add(b) for b in "a你b".encode()]
    assert pieces == ["a", "", "", "你", "b"]


@pytest.mark.parametrize(
    "pieces, stop, out",
    [
        (["Hel", "lo ##", "# world"], ["###"], "Hello "),
        (["a", "b", "c"], ["bd"], "abc"),
        (["ab", "cd"], ["x", "bc"], "a"),
        (["no stop here"], [], "no stop here"),
    ],
)
def test_stop_strings(pieces, stop, out):
    f = StopStringFilter(stop)
    text = "".join(f.feed(p) for p in pieces) + f.flush()
    assert text == out


def test_text_that_may_start_a_stop_string_is_held_then_released():
    f = StopStringFilter(["END"])
    assert f.feed("abcE") == "abc"
    assert f.feed("N") == ""
    assert f.feed("x") == "ENx"
    assert not f.stopped


def test_special_tokens_show_when_skip_special_tokens_is_false(tiny_tokenizer):
    """LLaMA-Factory's skip_special_tokens: false (e.g. to see tokens added with
    add_special_tokens in the answers)."""
    ids = tiny_tokenizer.encode("a<start_of_turn>b", add_special_tokens=False)
    shown = IncrementalDecoder(tiny_tokenizer, skip_special_tokens=False)
    hidden = IncrementalDecoder(tiny_tokenizer)
    assert "".join(shown.add(i) for i in ids) == "a<start_of_turn>b"
    assert "".join(hidden.add(i) for i in ids) == "ab"
