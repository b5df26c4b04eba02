"""`lmforge chat`: a streaming terminal chat with history, or one answer with --prompt."""

from __future__ import annotations

import sys

from lmforge.infer.engine import HFEngine

HELP = "Type a message. `clear` forgets the conversation, `exit` quits."


def answer_once(engine: HFEngine, prompt: str, system: str | None = None) -> str:
    parts = []
    for piece in engine.stream([{"role": "user", "content": prompt}], system):
        sys.stdout.write(piece)
        sys.stdout.flush()
        parts.append(piece)
    sys.stdout.write("\n")
    return "".join(parts)


def chat_loop(engine: HFEngine, system: str | None = None) -> None:
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
        parts = []
        for piece in engine.stream(history, system):
            print(piece, end="", flush=True)
            parts.append(piece)
        print()
        history.append({"role": "assistant", "content": "".join(parts)})
