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
LLAMA3 = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}'
MISTRAL = (
    'Let me check.[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
    '"c"}, "id": "abcDEF123"}, {"name": "get_time", "arguments": {"tz": "CET"}}]'
)
NEMO_STRIPPED = '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]'
DEEPSEEK = (
    "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
    '```json\n{"city": "Paris", "unit": "c"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function'
    '<｜tool▁sep｜>get_time\n```json\n{"tz": "CET"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)
WEATHER = ("get_weather", {"city": "Paris", "unit": "c"})


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
        ("llama3", LLAMA3, "", [WEATHER]),
        ("llama3", "<|python_tag|>" + LLAMA3 + "; " + LLAMA3, "", [WEATHER, WEATHER]),
        ("mistral", MISTRAL, "Let me check.", [WEATHER, ("get_time", {"tz": "CET"})]),
        ("mistral_nemo", NEMO_STRIPPED, "", [WEATHER]),  # [TOOL_CALLS] skipped when decoding
        ("mistral", " " + NEMO_STRIPPED, "", [WEATHER]),
        ("deepseek3", DEEPSEEK, "Let me check.", [WEATHER, ("get_time", {"tz": "CET"})]),
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
        ("llama3", "Sure: {not a call}"),
        ("llama3", '{"city": "Paris"}'),  # JSON, but not a call
        ("mistral", "[1, 2] are numbers"),
        ("mistral", "[TOOL_CALLS] [oops"),
        ("deepseek3", "<｜tool▁calls▁begin｜>no call here<｜tool▁calls▁end｜>"),
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


def test_mistral_keeps_the_call_id_the_model_wrote():
    _, calls = get_tool_parser("mistral").parse(MISTRAL)
    assert calls[0].id == "abcDEF123" and calls[1].id.startswith("call_")


def test_deepseek_reads_v31_calls_and_calls_cut_off_at_eos():
    v31 = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"tz": "CET"}<｜tool▁call▁end｜>'
    _, calls = get_tool_parser("deepseek3").parse(v31)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_time", {"tz": "CET"})]
    _, calls = get_tool_parser("deepseek3").parse(DEEPSEEK.split("<｜tool▁calls▁end｜>")[0])
    assert [c.name for c in calls] == ["get_weather", "get_time"]


@pytest.mark.parametrize(
    "fmt", ["qwen", "default", "glm4", "llama3", "mistral", "mistral_nemo", "deepseek3"]
)
def test_what_the_template_writes_the_parser_reads(fmt):
    """A call as data/templates/tools.py writes it into a training answer comes back as the
    same call, and the prefix that forces a call is the start of that text."""
    from lmforge.data.templates.tools import get_tool_format

    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
    text = get_tool_format(fmt).calls("", [call], ["abcDEF123"])
    content, calls = get_tool_parser(fmt).parse(text)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [WEATHER]
    prefix = get_tool_parser(fmt).forced_prefix("get_weather")
    if prefix and fmt != "default":
        assert text.startswith(prefix)
