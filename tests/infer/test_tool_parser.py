"""Reading tool calls and reasoning back out of answers: whole, and streamed in any cuts."""

from __future__ import annotations

import json
import random

import pytest

from lmforge.infer.answer import Answer, AnswerParser
from lmforge.infer.markers import MarkerSplitter
from lmforge.infer.tool_parser import get_tool_parser

QWEN = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
)
REACT = 'Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Paris"}'
GLM4 = 'get_weather\n{"city": "Paris"}'


def random_cuts(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        pieces.append(text[i : i + n])
        i += n
    return pieces


def streamed(parser: AnswerParser, pieces: list[str]) -> Answer:
    answer = Answer()
    for piece in pieces:
        answer.add(parser.feed(piece))
    return answer.add(parser.finish())


@pytest.mark.parametrize(
    "fmt, text, content, calls",
    [
        (
            "qwen",
            QWEN,
            "Let me check.\n\n",
            [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"tz": "CET"})],
        ),
        ("default", REACT, "Thought: I need the weather.\n", [("get_weather", {"city": "Paris"})]),
        ("glm4", GLM4, "", [("get_weather", {"city": "Paris"})]),
    ],
)
def test_each_format_parses_whole_and_streamed(fmt, text, content, calls):
    parser = get_tool_parser(fmt)
    got_content, got_calls = parser.parse(text)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    assert len({c.id for c in got_calls}) == len(calls)  # each call has its own id
    for seed in range(20):
        answer = streamed(AnswerParser(tools=parser), random_cuts(text, seed))
        assert answer.content == content.strip()  # whitespace around calls is dropped
        assert [(c.name, json.loads(c.arguments)) for c in answer.tool_calls] == calls


@pytest.mark.parametrize(
    "fmt, text",
    [
        ("qwen", "Hi <tool_call>\nnot json\n</tool_call> there"),
        ("qwen", '<tool_call>\n{"name": "f", "arguments": {"a": '),  # cut off
        ("default", "Action: f\nAction Input: {oops"),
        ("glm4", "Just an answer, no call."),
    ],
)
def test_text_that_is_not_a_valid_call_stays_content(fmt, text):
    content, calls = get_tool_parser(fmt).parse(text)
    assert calls == []
    assert content == text


def test_plain_answers_stream_without_delay():
    parser = AnswerParser(tools=get_tool_parser("qwen"))
    assert parser.feed("Hello") == [("content", "Hello")]
    assert parser.feed(" <tool") == []  # might be a tag: held
    assert parser.feed("box>") == [("content", " <toolbox>")]
    assert parser.feed("\n") == []  # trailing whitespace waits for what follows
    assert parser.finish() == [("content", "\n")]  # no call came: it is kept


def test_unclosed_call_that_is_complete_json_is_kept():
    content, calls = get_tool_parser("qwen").parse('<tool_call>\n{"name": "f", "arguments": {}}')
    assert content == "" and [c.name for c in calls] == ["f"]


def test_forced_prefix_plus_generated_rest_parses():
    parser = get_tool_parser("qwen")
    prefix = parser.forced_prefix("get_weather")
    _, calls = parser.parse(prefix + '{"city": "Oslo"}}\n</tool_call>')
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    react = get_tool_parser("default")
    _, calls = react.parse(react.forced_prefix("lookup") + '{"q": "x"}')
    assert calls[0].name == "lookup"


def test_reasoning_is_split_from_the_answer_in_any_cuts():
    text = "<think>\nFirst, 2+3.\n</think>\n\nIt is 5."
    for seed in range(20):
        answer = streamed(AnswerParser(("<think>", "</think>")), random_cuts(text, seed))
        assert answer.reasoning == "First, 2+3."
        assert answer.content == "It is 5."


def test_reasoning_opened_by_the_prompt_and_then_a_tool_call():
    parser = AnswerParser(("<think>", "</think>"), get_tool_parser("qwen"), reasoning_open=True)
    text = 'plan <tool_call> here</think><tool_call>{"name": "f", "arguments": {}}</tool_call>'
    answer = parser.parse(text)
    assert answer.reasoning == "plan <tool_call> here"  # calls inside reasoning are not calls
    assert [c.name for c in answer.tool_calls] == ["f"] and answer.content == ""


def test_marker_splitter_holds_partial_markers():
    s = MarkerSplitter("<a>", "</a>")
    assert s.feed("x<") == [(False, "x")]
    assert s.feed("a>y</") == [(False, ""), (True, "y")]
    assert s.feed("a>z") == [(True, ""), (False, "z")]
    assert s.flush() == []
