"""A Jinja chat template written from a named template's formats.

Used for templates whose vendor ships no Jinja (alpaca, vicuna, default, baichuan2, ...), so the
template used in training can still be written into the saved tokenizer. It covers system,
user, assistant and tool turns; tool schemas and reasoning blocks are left to templates that
carry their vendor's Jinja. A test renders conversations both ways and requires the same text.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.data.templates.named import Template

_VARIABLES = {
    "content": "content",
    "system": "system_message",
    "bos": "bos_token",
    "eos": "eos_token",
}


def _expression(fmt: str) -> str:
    """ "[INST] {content}{eos}" -> '"[INST] " + content + eos_token' (empty: '""')."""
    parts = []
    for piece in re.split(r"(\{(?:bos|eos|content|system)\})", fmt):
        if not piece:
            continue
        name = piece[1:-1]
        if piece.startswith("{") and name in _VARIABLES:
            parts.append(_VARIABLES[name])
        else:
            parts.append(json.dumps(piece, ensure_ascii=False))
    return " + ".join(parts) or '""'


def _out(fmt: str) -> str:
    return "{{- " + _expression(fmt) + " }}" if fmt else ""


def _trimmed(template: Template, role: str) -> str:
    return "message['content'] | trim" if role in template.trim else "message['content']"


def simple_jinja(t: Template) -> str:
    default = json.dumps(t.default_system, ensure_ascii=False) if t.default_system else "none"
    lines = [
        _out(t.prefix),
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system_message = messages[0]['content'] -%}",
        "{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        "{%- set system_message = " + default + " -%}",
        "{%- set loop_messages = messages -%}",
        "{%- endif -%}",
        "{%- set ns = namespace(first=-1, last=-1) -%}",
        "{%- for message in loop_messages if message['role'] == 'user' -%}",
        "{%- if ns.first < 0 %}{% set ns.first = loop.index0 %}{% endif -%}",
        "{%- set ns.last = loop.index0 -%}",
        "{%- endfor -%}",
    ]
    if t.system is not None:
        lines.append("{%- if system_message -%}" + _out(t.system.replace("{content}", "{system}")))
        lines.append("{%- endif -%}")
    fold_at = "ns.first" if t.system_fold == "first_user" else "ns.last"
    fold = "{%- set content = " + _expression(t.system_fold_format) + " -%}"
    if t.fold_trim:
        fold += "{%- set content = content | trim -%}"
    lines += [
        "{%- set ns2 = namespace(n=-1) -%}",
        "{%- for message in loop_messages -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- set ns2.n = ns2.n + 1 -%}",
        "{%- set content = " + _trimmed(t, "user") + " -%}",
    ]
    if t.system is None:
        # ns.first / ns.last are ranks among user turns, as ns2.n counts them.
        lines.append("{%- if system_message and ns2.n == " + fold_at + " -%}")
        lines += [fold, "{%- endif -%}"]
    lines += [
        _out(t.user),
        "{%- elif message['role'] == 'assistant' -%}",
        "{%- set content = " + _trimmed(t, "assistant") + " -%}",
        _out(t.generation) + _out(t.assistant),
        "{%- elif message['role'] == 'tool' -%}",
        "{%- set content = message['content'] -%}",
        "{%- if loop.first or loop.previtem['role'] != 'tool' -%}"
        + _out(t.observation_group[0])
        + "{%- endif -%}",
        _out(t.observation),
        "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}"
        + _out(t.observation_group[1])
        + "{%- endif -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}" + _out(t.generation),
        "{%- elif loop_messages and loop_messages[-1]['role'] == 'assistant' -%}" + _out(t.suffix),
        "{%- endif -%}",
    ]
    return "\n".join(line for line in lines if line)
