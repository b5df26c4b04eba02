"""`lmforge webchat`: a browser chat (Gradio) over the shared engine.

Streaming answers, a system prompt, generation sliders, a thinking toggle (for templates with
reasoning), tools as JSON and an observation role for sending a tool's result back, and a model
picker when adapters are served. Several browser tabs chat at once: Gradio runs each answer in
its own thread and the engine's scheduler interleaves them.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from lmforge.errors import UserError
from lmforge.infer.engine import BaseEngine

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
ROLE_USER, ROLE_OBSERVATION = "user", "observation (tool result)"


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        raise UserError(
            "`lmforge webchat` needs Gradio", fix="pip install 'lmforge[webui]'"
        ) from None
    return gr


def parse_tools(text: str | None) -> list[dict] | None:
    if not text or not text.strip():
        return None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"the tools box is not valid JSON ({exc.msg})") from None
    tools = tools if isinstance(tools, list) else [tools]
    return [
        t if t.get("type") == "function" else {"type": "function", "function": t} for t in tools
    ]


def answer_messages(reasoning: str, content: str, calls: list) -> list[dict[str, Any]]:
    """What the chat window shows for one answer: reasoning folded apart, then the answer."""
    shown: list[dict[str, Any]] = []
    if reasoning:
        shown.append({"role": "assistant", "content": reasoning, "metadata": {"title": "Thinking"}})
    text = content
    for call in calls:
        text += f"\n\n`tool call` **{call.name}** `{call.arguments}`"
    if text or not reasoning:
        shown.append({"role": "assistant", "content": text})
    return shown


def respond(
    engine: BaseEngine,
    message: str,
    role: str,
    history: list[dict],
    display: list,
    system: str,
    model: str,
    tools_text: str,
    max_tokens: float,
    temperature: float,
    top_p: float,
    thinking: bool,
):
    """Generator for one turn: yields (chat display, history, cleared input box)."""
    gr = _import_gradio()
    if not message or not message.strip():
        yield display, history, message
        return
    # The history state changes only when the turn is answered: a refused message (bad order,
    # too long) is taken back, and the box gets it again to edit, instead of staying in the
    # history and spoiling every later turn.
    before, shown_before = list(history or []), list(display or [])
    history, display = list(before), list(shown_before)
    if role == ROLE_OBSERVATION:
        history.append({"role": "tool", "content": message})
        display.append({"role": "user", "content": f"Observation:\n{message}"})
    else:
        history.append({"role": "user", "content": message})
        display.append({"role": "user", "content": message})
    yield display, before, ""
    reasoning, content, calls = "", "", []
    try:
        events = engine.chat(
            history,
            system or None,
            model=model or None,
            tools=parse_tools(tools_text),
            enable_thinking=thinking,
            max_tokens=int(max_tokens),
            temperature=temperature,
            top_p=top_p,
        )
        for kind, value in events:
            if kind == "reasoning":
                reasoning += value
            elif kind == "content":
                content += value
            else:
                calls.append(value)
            yield display + answer_messages(reasoning, content, calls), before, ""
    except UserError as exc:
        yield shown_before, before, message
        raise gr.Error(exc.format()) from None
    answer: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        answer["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in calls]
    history.append(answer)
    yield display + answer_messages(reasoning, content, calls), history, ""


def build_demo(engine: BaseEngine):
    gr = _import_gradio()
    d = engine.defaults
    with gr.Blocks(title="lmforge chat") as demo:
        history = gr.State([])
        gr.Markdown(f"### lmforge chat — {engine.base_name}")
        chatbot = gr.Chatbot(label="Chat", height=480, elem_id="chat")
        with gr.Row():
            box = gr.Textbox(
                placeholder="Type a message and press Enter",
                show_label=False,
                scale=6,
                elem_id="message",
            )
            role = gr.Radio(
                [ROLE_USER, ROLE_OBSERVATION], value=ROLE_USER, label="Send as", scale=2
            )
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            clear = gr.Button("Clear", scale=1, elem_id="clear")
        with gr.Accordion("Settings", open=False):
            system = gr.Textbox(label="System prompt", value=engine.default_system or "", lines=2)
            model = gr.Dropdown(
                engine.model_names,
                value=engine.base_name,
                label="Model",
                visible=len(engine.model_names) > 1,
            )
            tools = gr.Code(
                label="Tools (JSON list of function schemas)", language="json", value=""
            )
            with gr.Row():
                max_tokens = gr.Slider(
                    1, 4096, value=d.max_new_tokens, step=1, label="Max new tokens"
                )
                temperature = gr.Slider(
                    0,
                    2,
                    value=d.temperature if d.do_sample else 0,
                    step=0.01,
                    label="Temperature (0 = greedy)",
                )
                top_p = gr.Slider(0.01, 1, value=d.top_p, step=0.01, label="Top-p")
            thinking = gr.Checkbox(
                value=engine.enable_thinking is not False,
                label="Thinking (for templates with reasoning)",
            )

        def turn(*args):
            yield from respond(engine, *args)

        inputs = [
            box,
            role,
            history,
            chatbot,
            system,
            model,
            tools,
            max_tokens,
            temperature,
            top_p,
            thinking,
        ]
        outputs = [chatbot, history, box]
        box.submit(turn, inputs, outputs)
        send.click(turn, inputs, outputs)
        clear.click(lambda: ([], [], ""), None, outputs)
    return demo


def webchat_address(host: str | None, port: int | None) -> tuple[str, int]:
    """Flag, else Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    raw = port if port is not None else os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    try:
        return host, int(raw)
    except ValueError:
        raise UserError(f"GRADIO_SERVER_PORT `{raw}` is not a port number") from None


def launch(engine: BaseEngine, host: str, port: int, *, block: bool = True):
    demo = build_demo(engine)
    # Gradio runs one event at a time by default; let the scheduler interleave several.
    demo.queue(default_concurrency_limit=max(1, engine.stats().get("max_active", 8)))
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return demo


def serve(config, host: str | None = None, port: int | None = None) -> None:
    from lmforge.infer.api import check_port_free
    from lmforge.infer.engine import create_engine

    _import_gradio()
    host, port = webchat_address(host, port)
    check_port_free(host, port)
    engine = create_engine(config)
    try:
        launch(engine, host, port)
    finally:
        engine.close()
