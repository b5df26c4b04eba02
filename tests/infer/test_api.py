"""The official openai client against a running `lmforge api` server (tiny random model)."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_list_and_get_models(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_completion_has_text_usage_and_finish_reason(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=7, seed=1)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == 18  # <bos> + the Gemma turn markers + "Hi", one id each
    assert 1 <= r.usage.completion_tokens <= 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_seed_reproduces_and_n_gives_n_choices(client):
    def ask():
        return client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=8, n=3, seed=7, temperature=1.0
        )

    first, second = ask(), ask()
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]


def test_seed_takes_the_whole_signed_64_bit_range(client):
    for seed in (2**63 - 1, -(2**63)):  # OpenAI's bounds; choice 1 uses seed + 1
        r = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=2, n=2, seed=seed, temperature=1.0
        )
        assert [c.finish_reason for c in r.choices] == ["length", "length"]


def test_streaming_chunks_add_up_to_the_answer(client):
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=9, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["length"]
    assert chunks[-1].usage.completion_tokens == 9


def test_stream_ends_with_done(api_url, api_key):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    headers = {"Authorization": f"Bearer {api_key}"}
    r = httpx.post(f"{api_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_text_completion(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == 5  # the tokenizer's own encoding: one id per character
    echoed = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Hello" + r.choices[0].text
    pieces = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=4, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in pieces if c.choices) == r.choices[0].text


def test_stop_sequence_cuts_the_answer(client):
    free = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=12, temperature=0
    )
    text = free.choices[0].message.content
    assert len(text) >= 2
    stop = text[1]
    cut = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_frequency_penalty_changes_a_repetitive_answer(client):
    # Greedy, the tiny model repeats one character; a large frequency penalty forbids that.
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    penalized = client.chat.completions.create(
        **kwargs, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert len(set(plain)) <= 2
    assert len(set(penalized.choices[0].message.content)) > len(set(plain))


def test_health_needs_no_key(api_url):
    r = httpx.get(f"{api_url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_missing_or_wrong_key_is_401(api_url):
    wrong = openai.OpenAI(base_url=f"{api_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model="tiny", messages=MESSAGES)
    assert info.value.status_code == 401
    assert "API key" in info.value.body["message"]
    # The openai client refuses to send no key at all, so the header-less request is raw.
    assert httpx.get(f"{api_url}/v1/models").status_code == 401
    r = httpx.post(f"{api_url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        (dict(model="nope", messages=MESSAGES), 404, "does not exist"),
        (dict(model="tiny", messages=[]), 400, "messages"),
        (dict(model="tiny", messages=[{"role": "assistant", "content": "x"}]), 400, "user"),
        (
            dict(
                model="tiny",
                messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
            ),
            400,
            "role `tool`",
        ),
        (dict(model="tiny", messages=MESSAGES, temperature=5), 400, "temperature"),
        (dict(model="tiny", messages=MESSAGES, max_tokens=5000), 413, "context"),
        (dict(model="tiny", messages=[{"role": "user", "content": "x" * 600}]), 413, "context"),
        (dict(model="tiny", messages=MESSAGES, logprobs=True), 400, "logprobs"),
        (dict(model="tiny", messages=MESSAGES, seed=2**70), 400, "seed"),
    ],
)
def test_bad_requests_get_openai_errors(client, kwargs, status, words):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.status_code == status
    assert words in info.value.body["message"]


def test_malformed_json_is_400_not_500(api_url, api_key):
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    r = httpx.post(f"{api_url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{api_url}/v1/chat/completions", content=b"[1, 2]", headers=headers)
    assert r.status_code == 400
    assert "Traceback" not in r.text


def test_eight_parallel_streams_overlap(client):
    """All 8 are answered, and all 8 have started streaming before any has finished: the
    server interleaves them instead of running one after another (no wall-clock assumptions:
    only the order of events, taken from one monotonic clock)."""
    barrier = threading.Barrier(8)
    events: list[tuple[float, str, int]] = []
    lock = threading.Lock()
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            stream = client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": f"Hi {i}"}],
                max_tokens=120,
                temperature=0,
                stream=True,
            )
            text, first = "", True
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    if first:
                        with lock:
                            events.append((time.monotonic(), "start", i))
                        first = False
                    text += piece
            with lock:
                events.append((time.monotonic(), "end", i))
            answers[i] = text
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(answers) == list(range(8)) and all(answers.values())
    order = [kind for _, kind, _ in sorted(events)]
    assert order[:8] == ["start"] * 8, order


def test_n_choices_stream_with_their_indices(client):
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, n=2, seed=3, stream=True
    )
    finished = {}
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"}


def test_several_prompts_in_one_completion_request(client):
    r = client.completions.create(model="tiny", prompt=["Hi", "Yo"], max_tokens=3, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 12
    ids = client.completions.create(model="tiny", prompt=[41, 42], max_tokens=2)
    assert ids.usage.prompt_tokens == 2
    with pytest.raises(openai.BadRequestError, match="token ids must be in"):
        client.completions.create(model="tiny", prompt=[10**6], max_tokens=2)


def test_a_client_that_goes_away_frees_its_slot(api_url, api_key, shared_engine, monkeypatch):
    reasons = []
    finish = shared_engine.scheduler._finish

    def recording_finish(seq, text, reason):
        reasons.append(reason)
        return finish(seq, text, reason)

    monkeypatch.setattr(shared_engine.scheduler, "_finish", recording_finish)
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 480, "stream": True}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream(
        "POST", f"{api_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        next(r.iter_lines())  # generation has started; now hang up
    for _ in range(1000):  # bounded: at most ~10 s
        if reasons:
            break
        time.sleep(0.01)
    # Dropped when the server noticed, not run to its 480 tokens.
    assert reasons == ["cancelled"]
