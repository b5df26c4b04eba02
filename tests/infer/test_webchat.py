"""The browser chat: its turn logic directly, and the real page in headless Chromium."""

from __future__ import annotations

import pytest

from conftest import INFERENCE, headless_chromium, needs_chromium, write_config
from lmforge.config import load_config
from lmforge.infer.engine import HFEngine
from lmforge.infer.tool_parser import ToolCall
from lmforge.infer.webchat import ROLE_OBSERVATION, ROLE_USER, respond


class ScriptedEngine:
    """Stands in for the engine: records the request, answers with fixed events."""

    def __init__(self, events):
        self.events = events
        self.calls = []

    def chat(self, messages, system=None, **kwargs):
        self.calls.append((list(messages), system, kwargs))
        yield from self.events


def run_turn(engine, message, role=ROLE_USER, history=None, thinking=True):
    settings = ("Be brief.", "tiny", "", 32, 0.5, 0.9, thinking)
    return list(respond(engine, message, role, history or [], [], *settings))


def test_a_turn_streams_reasoning_apart_and_keeps_history():
    engine = ScriptedEngine([("reasoning", "hmm"), ("content", "Hel"), ("content", "lo")])
    steps = run_turn(engine, "Hi")
    displays = [d for d, _, _ in steps]
    assert displays[0] == [{"role": "user", "content": "Hi"}]
    assert len(steps) == 5  # the user's message, then one update per event, then the end
    final, history, box = steps[-1]
    assert final[1] == {"role": "assistant", "content": "hmm", "metadata": {"title": "Thinking"}}
    assert final[2] == {"role": "assistant", "content": "Hello"}
    assert history == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert box == ""
    messages, system, kwargs = engine.calls[0]
    assert system == "Be brief." and kwargs["model"] == "tiny"
    assert kwargs["max_tokens"] == 32 and kwargs["temperature"] == 0.5
    assert kwargs["enable_thinking"] is True


def test_observation_role_sends_a_tool_result():
    call = ToolCall("get_weather", '{"city": "Paris"}', "call_1")
    engine = ScriptedEngine([("tool_call", call)])
    _, history, _ = run_turn(engine, "Weather?")[-1]
    assert history[-1]["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    engine.events = [("content", "Sunny.")]
    _, history, _ = run_turn(engine, '{"temp": 21}', ROLE_OBSERVATION, history)[-1]
    assert engine.calls[-1][0][-1] == {"role": "tool", "content": '{"temp": 21}'}
    assert history[-1] == {"role": "assistant", "content": "Sunny."}


def turn_until_error(engine, message, role=ROLE_USER, history=None):
    """The steps of a refused turn, and the gr.Error that ended it."""
    import gradio as gr

    steps = []
    settings = ("", "tiny", "", 8, 0.0, 1.0, True)
    with pytest.raises(gr.Error) as info:
        for step in respond(engine, message, role, history or [], [], *settings):
            steps.append(step)
    return steps, str(info.value)


@pytest.mark.parametrize(
    "message, role, words",
    [
        ("result", ROLE_OBSERVATION, "role `tool`"),  # a tool result with no call before it
        ("x" * 600, ROLE_USER, "this model's context is 512"),
    ],
)
def test_a_refused_message_is_taken_back_and_the_chat_goes_on(shared_engine, message, role, words):
    steps, error = turn_until_error(shared_engine, message, role)
    assert words in error
    # Every step left the history state as it was; the last one puts the message back in the
    # box and takes it off the screen, so the next turn starts from a clean conversation.
    assert all(history == [] for _, history, _ in steps)
    assert steps[-1] == ([], [], message)
    *_, (display, history, box) = run_turn(shared_engine, "Hi")
    assert history[0] == {"role": "user", "content": "Hi"}
    assert history[1]["role"] == "assistant" and len(history) == 2
    assert display[0] == {"role": "user", "content": "Hi"} and box == ""


@pytest.fixture(scope="module")
def webchat(tiny_model_dir, tmp_path_factory, local_port):
    """The real `lmforge webchat` app on a free local port; greedy with a repetition penalty
    so the random tiny model gives a fixed, visible answer."""
    from lmforge.infer.webchat import launch

    folder = tmp_path_factory.mktemp("webchat")
    path = write_config(
        folder,
        tiny_model_dir,
        INFERENCE,
        served_model_name="tiny",
        do_sample=False,
        repetition_penalty=1.5,
        max_new_tokens=12,
    )
    engine = HFEngine.from_config(load_config(path))
    port = local_port()
    demo = launch(engine, "127.0.0.1", port, block=False)
    try:
        yield engine, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        engine.close()


@needs_chromium
def test_page_loads_and_answers_in_headless_chromium(webchat, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    engine, url = webchat
    expected = engine.generate([{"role": "user", "content": "Hi"}])
    assert expected.strip()
    driver = headless_chromium(tmp_path)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
        assert "lmforge chat" in driver.title
        box.send_keys("Hi")
        box.send_keys(Keys.ENTER)
        user = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="user"]')))
        assert user.text.strip() == "Hi"

        def answered(d):
            bots = d.find_elements(By.CSS_SELECTOR, '[data-testid="bot"]')
            return bots and bots[-1].text.strip() == expected.strip() and bots[-1]

        assert wait.until(answered)
    finally:
        driver.quit()
