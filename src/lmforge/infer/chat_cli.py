"""`lmforge chat`: a streaming terminal chat with history, or one answer with --prompt.

Reasoning (for templates with thinking markers) is printed apart from the answer, dimmed on a
terminal, and is not kept in the history: vendors drop earlier turns' reasoning too.
"""

from __future__ import annotations

import sys
from typing import TextIO

from lmforge.errors import UserError
from lmforge.infer.engine import BaseEngine

HELP = "Type a message. `clear` forgets the conversation, `exit` quits."
_DIM, _RESET = "\033[2m", "\033[0m"


def show_answer(events, out: TextIO | None = None) -> str:
    """Print an answer's events as they come; returns the answer text for the history."""
    out = out or sys.stdout
    color = out.isatty()
    content: list[str] = []
    in_reasoning = False
    for kind, value in events:
        if kind == "reasoning":
            if not in_reasoning:
                out.write((_DIM if color else "") + "[thinking] ")
                in_reasoning = True
            out.write(value)
        else:
            if in_reasoning:
                out.write((_RESET if color else "") + "\n[answer] ")
                in_reasoning = False
            if kind == "tool_call":
                text = f"\n[tool call] {value.name}({value.arguments})"
                content.append(text.strip())
                out.write(text)
            else:
                content.append(value)
                out.write(value)
        out.flush()
    if in_reasoning and color:
        out.write(_RESET)
    out.write("\n")
    out.flush()
    return "".join(content)


def answer_once(engine: BaseEngine, prompt: str, system: str | None = None) -> str:
    return show_answer(engine.chat([{"role": "user", "content": prompt}], system))


def chat_loop(engine: BaseEngine, system: str | None = None) -> None:
    print(HELP)
    history: list[dict[str, str]] = []
    while True:
        try:
            text = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        command = text.strip().lower()
        if command == "exit":
            return
        if command == "clear":
            history = []
            print("History cleared.")
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        print("Assistant: ", end="", flush=True)
        try:
            answer = show_answer(engine.chat(history, system))
        except KeyboardInterrupt:  # stop this answer, keep the session
            print("\n(interrupted)")
            history.pop()
            continue
        except UserError as exc:  # e.g. the conversation outgrew the context: keep the session
            print(flush=True)  # end the "Assistant: " line
            print(f"error: {exc.format()}", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})
