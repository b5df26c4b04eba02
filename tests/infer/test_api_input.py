"""Client input that once gave a 500 (issue Step 6, B7): each is now a 400 with OpenAI's error
body, streamed or not; fields the server cannot honour are refused, not ignored."""

from __future__ import annotations

import json

import pytest

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f"}}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def app_client(shared_engine):
    from fastapi.testclient import TestClient

    from lmforge.infer.api import create_app

    with TestClient(create_app(shared_engine), raise_server_exceptions=False) as client:
        yield client


def post(client, path: str, body: dict | bytes):
    """`body` as JSON with ASCII escapes, so "\ud800" travels as the 6 characters \\ud800."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=raw, headers=JSON)


def error(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


TEMPERATURE = (
    "temperature: must be 0 (greedy) or at least 1e-05; smaller values overflow the logits"
)
SURROGATE = (
    "the text contains a lone UTF-16 surrogate ('\\ud800'), which is not valid Unicode; send "
    "whole characters (a surrogate pair, or the character itself)"
)
TOOL_CHOICE = (
    'tool_choice: must be "none", "auto", "required" or '
    '{"type": "function", "function": {"name": ...}}'
)


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": HI, "max_tokens": 3, **fields}


@pytest.mark.parametrize(
    "path, body, expected",
    [
        (CHAT, chat(temperature=1e-300), error(TEMPERATURE, "temperature")),
        (CHAT, chat(temperature=1e-40), error(TEMPERATURE, "temperature")),
        (CHAT, chat(temperature=1e-40, stream=True), error(TEMPERATURE, "temperature")),
        (
            TEXT,
            {"model": "tiny", "prompt": "Hi", "temperature": 1e-300},
            error(TEMPERATURE, "temperature"),
        ),
        (
            CHAT,
            chat(repetition_penalty=1e-300),
            error(
                "repetition_penalty: Input should be greater than or equal to 0.01",
                "repetition_penalty",
            ),
        ),
        (
            CHAT,
            chat(repetition_penalty=1e300),
            error(
                "repetition_penalty: Input should be less than or equal to 100",
                "repetition_penalty",
            ),
        ),
        (
            CHAT,
            chat(messages=[{"role": "user", "content": "\ud800"}]),
            error(f"messages.0.content: {SURROGATE}", "messages.0.content"),
        ),
        (
            CHAT,
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}]),
            error(
                f"messages.0.content.0.text: {SURROGATE.replace('ud800', 'udfff')}",
                "messages.0.content.0.text",
            ),
        ),
        (TEXT, {"model": "tiny", "prompt": "\ud800"}, error(f"prompt: {SURROGATE}", "prompt")),
        (
            TEXT,
            {"model": "tiny", "prompt": ["ok", "\ud800"]},
            error(f"prompt.1: {SURROGATE}", "prompt.1"),
        ),
        (
            CHAT,
            chat(
                tools=[
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"properties": "x"}},
                    }
                ]
            ),
            error(
                "tools.0.function.parameters: `properties` must be an object mapping names to "
                "schemas",
                "tools.0.function.parameters",
            ),
        ),
        (
            CHAT,
            chat(
                tools=[
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"properties": {"a": 1}}},
                    }
                ]
            ),
            error(
                "tools.0.function.parameters: properties.a must be an object (a JSON Schema)",
                "tools.0.function.parameters",
            ),
        ),
        (
            CHAT,
            chat(
                tools=[
                    {"type": "function", "function": {"name": "f", "parameters": {"required": 3}}}
                ]
            ),
            error(
                "tools.0.function.parameters: `required` must be an array of property names",
                "tools.0.function.parameters",
            ),
        ),
        (
            CHAT,
            chat(tools=[TOOL], tool_choice={"type": "function", "function": "f"}),
            error(TOOL_CHOICE, "tool_choice"),
        ),
        (
            CHAT,
            chat(tools=[TOOL], tool_choice={"type": "function", "function": ["f"]}),
            error(TOOL_CHOICE, "tool_choice"),
        ),
        (CHAT, chat(tools=[TOOL], tool_choice="sometimes"), error(TOOL_CHOICE, "tool_choice")),
        (
            CHAT,
            chat(chat_template_kwargs={"enable_thinking": "yes"}),
            error(
                "chat_template_kwargs.enable_thinking must be true, false or null",
                "chat_template_kwargs.enable_thinking",
            ),
        ),
        (
            CHAT,
            chat(stop="x" * 1025),
            error("stop: a stop sequence may have at most 1024 characters", "stop"),
        ),
    ],
    ids=lambda v: "" if isinstance(v, (dict, str)) and len(str(v)) > 40 else str(v)[:40],
)
def test_input_that_broke_the_server_is_a_400(app_client, path, body, expected):
    r = post(app_client, path, body)
    assert r.status_code == 400
    assert r.json() == expected


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            b'{"model":"tiny","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "the request body nests arrays/objects more than 64 deep",
        ),
        (
            b'{"model":"tiny","messages":' + b"[" * 70 + b"]" * 70 + b"}",
            "the request body nests arrays/objects more than 64 deep",
        ),
        (
            b'{"model":"tiny","messages":[],"temperature":NaN}',
            "the request body is not valid JSON: NaN is not a JSON number",
        ),
    ],
    ids=["100000-deep", "70-deep", "NaN"],
)
def test_malformed_bodies_are_a_400(app_client, raw, message):
    r = post(app_client, CHAT, raw)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == message
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_huge_number_is_a_400(app_client):
    r = post(app_client, TEXT, b'{"model":"tiny","prompt":"a","seed":' + b"9" * 5000 + b"}")
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("the request body is not valid JSON")


def test_a_surrogate_pair_is_a_whole_character(app_client):
    # "\ud83d\ude00" is one emoji: valid, so it gets an answer (the tiny tokenizer maps it to <unk>).
    r = post(app_client, CHAT, chat(messages=[{"role": "user", "content": "\ud83d\ude00"}]))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "path, field, value",
    [
        (CHAT, "logit_bias", {"5": 100}),
        (TEXT, "logit_bias", {"5": -100}),
        (TEXT, "best_of", 3),
        (CHAT, "best_of", 2),
        (CHAT, "top_logprobs", 2),
        (CHAT, "functions", [{"name": "f"}]),
        (CHAT, "modalities", ["text", "audio"]),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused(app_client, path, field, value):
    body = chat() if path == CHAT else {"model": "tiny", "prompt": "Hi", "max_tokens": 2}
    r = post(app_client, path, {**body, field: value})
    assert r.status_code == 400
    assert r.json() == error(
        f"`{field}` is not supported by this server (it would be ignored, changing the "
        "result); remove it",
        field,
        "unsupported_parameter",
    )


@pytest.mark.parametrize(
    "field, value", [("logit_bias", {}), ("logit_bias", None), ("best_of", 1), ("top_logprobs", 0)]
)
def test_their_harmless_values_pass(app_client, field, value):
    assert post(app_client, CHAT, chat(**{field: value})).status_code == 200


@pytest.mark.parametrize("temperature", [0, 1e-5, 0.5])
def test_small_and_zero_temperatures_still_work(app_client, temperature):
    r = post(app_client, CHAT, chat(temperature=temperature, stream=True))
    assert r.status_code == 200
    assert r.text.endswith("data: [DONE]\n\n")
    assert '"error"' not in r.text


def test_a_named_tool_choice_still_works(app_client):
    r = post(
        app_client,
        CHAT,
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}}),
    )
    assert r.status_code == 200
