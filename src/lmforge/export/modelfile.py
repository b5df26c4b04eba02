"""The Ollama Modelfile of an export: FROM the weights, TEMPLATE in Ollama's Go template syntax
written from the training chat template (chat_format.turn_texts), SYSTEM (the default system
prompt), one `PARAMETER stop` per stop token, and `num_ctx`.

The Go template walks `.Messages` (user and assistant turns; Ollama also lists system messages
there, which it skips: the system prompt is `.System`) and writes the template's texts between
them, so `ollama run` sends the model the text it was trained on. The model's BOS token is not
written: Ollama adds it, as the tokenizer does. Tool calls and reasoning blocks of earlier
turns are not part of the Go template (docs/export.md).
"""

from __future__ import annotations

import json

from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError
from lmforge.export.chat_format import SYSTEM, TurnTexts, turn_texts

MODELFILE = "Modelfile"
MAX_NUM_CTX = 8192  # Ollama reserves the KV cache for num_ctx tokens: the model's, capped


def go_template(texts: TurnTexts, bos_token: str | None = None) -> str:
    """Ollama's TEMPLATE for these turn texts; `bos_token` (added by the tokenizer) is left
    out of the start. Actions never trim the texts around them (`{{-` only after a newline
    that is layout)."""

    def text(value: str) -> str:
        return _literal(value).replace(SYSTEM, "{{ $.System }}")

    def opening(value: str) -> str:  # the conversation's start: without the tokenizer's BOS
        if bos_token and value.startswith(bos_token):
            value = value[len(bos_token) :]
        return text(value)

    # The system prompt goes before the first user message, or (Mistral) into the last one.
    when = "and $last $.System" if texts.system_at_last_user else "$.System"
    start_branch = (
        f"{{{{ if {when} }}}}{opening(texts.start_system)}"
        f"{{{{ else }}}}{opening(texts.start)}{{{{ end }}}}"
    )
    next_branch = text(texts.after_answer)
    if texts.system_at_last_user:
        next_branch = (
            f"{{{{ if {when} }}}}{text(texts.after_answer_system)}"
            f"{{{{ else }}}}{next_branch}{{{{ end }}}}"
        )
    lines = ['{{- $prev := "" }}', "{{- range $i, $m := .Messages }}"]
    if texts.system_at_last_user:
        lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
    lines += [
        '{{- if eq .Role "user" }}',
        f'{{{{- if eq $prev "" }}}}{start_branch}',
        f"{{{{- else }}}}{next_branch}{{{{ end }}}}{{{{ .Content }}}}",
        '{{- $prev = "user" }}',
        f'{{{{- else if eq .Role "assistant" }}}}{text(texts.after_user)}{{{{ .Content }}}}',
        '{{- $prev = "assistant" }}',
        "{{- end }}",
        "{{- end }}",
        f'{{{{- if eq $prev "user" }}}}{text(texts.generation)}{{{{ end }}}}',
    ]
    return "\n".join(lines)


def _literal(value: str) -> str:
    """Text written as is by a Go template: `{{` becomes an action that prints it."""
    return value.replace("{{", '{{ "{{" }}')


def stop_words(template: ChatTemplate, tokenizer) -> list[str]:
    """Every text that ends an answer: the stop tokens (EOS and the template's end-of-turn
    tokens) as the tokenizer writes them, then stop texts of several tokens."""
    words = [tokenizer.convert_ids_to_tokens(i) for i in template.stop_token_ids(tokenizer)]
    words += template.stop_texts(tokenizer)
    return [w for w in dict.fromkeys(words) if w]


def modelfile_text(
    template: ChatTemplate,
    tokenizer,
    *,
    source: str,
    context_length: int | None,
    adds_bos: bool,
) -> str:
    """The Modelfile; `source` is what FROM names (`./model.gguf` or `.`, the folder)."""
    texts = turn_texts(template, tokenizer)
    body = go_template(texts, tokenizer.bos_token if adds_bos else None)
    lines = [
        "# Ollama Modelfile written by `lmforge export`: ollama create NAME -f Modelfile",
        f"FROM {source}",
        f'TEMPLATE """{_quoted(body, "TEMPLATE")}"""',
    ]
    system = template.system_prompt(None)
    if system:
        lines.append(f'SYSTEM """{_quoted(system, "SYSTEM")}"""')
    lines += [
        f"PARAMETER stop {json.dumps(w, ensure_ascii=False)}"
        for w in stop_words(template, tokenizer)
    ]
    if context_length:
        lines.append(f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise UserError(
            f'the {what} of the Modelfile would contain """, which ends an Ollama text block',
            fix='remove """ from the default system prompt or the template',
        )
    return value
