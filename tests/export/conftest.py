"""Fixtures for export tests: tiny models of every family a GGUF is written for, with small
trained BPE tokenizers (the character tokenizer of tests/conftest.py is WordLevel, which GGUF
cannot hold), a trained tiny LoRA run, and a small Go-template renderer for Modelfiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CORPUS = [
    "Who are you? I am Forge, made by lmforge. What is 2 + 2? It is 4.",
    "Write a haiku about the sea. Translate good morning into French: bonjour.",
    "Give me three tips for sleeping well. The capital of Japan is Tokyo.",
    "Explain what a neural network is in one sentence. Say hello. Hello!",
] * 4
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matrices gain nothing from a second thread on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def byte_level_tokenizer(split_regex: str):
    """Llama 3 / Qwen style: byte-level BPE trained on CORPUS, ChatML specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=CHATML_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=CHATML_SPECIALS[1:],
    )


def sentencepiece_tokenizer():
    """Gemma style: BPE over `▁`-spaced text with byte fallback (<0x00>..<0xFF>), BOS added."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    alphabet = sorted(set("".join(CORPUS).replace(" ", "\u2581")) | {"\n"})
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=GEMMA_SPECIALS + byte_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator([line.replace(" ", "\u2581") for line in CORPUS], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=GEMMA_SPECIALS[4:],
    )


def _family_model(family: str, vocab_size: int):
    import torch
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        initializer_range=0.3,
    )
    if family == "gemma3":
        # What llama.cpp's gemma3 assumes: every 6th layer global (none of two), the attention
        # scale of the head size; transformers' GGUF loader reads head_dim 256 by default.
        config = Gemma3TextConfig(
            **shape,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=64,
            layer_types=["sliding_attention", "sliding_attention"],
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
        return Gemma3ForCausalLM(config)
    if family == "qwen3":  # transformers' GGUF loader assumes Qwen3's head size, 128
        return Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=128))
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    config_class, model_class = classes[family]
    return model_class(config_class(**shape, tie_word_embeddings=family == "qwen2"))


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """family -> a local folder with a tiny random model of that family and its tokenizer."""
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            from lmforge.export.gguf_vocab import PRE_TOKENIZERS

            if family == "gemma3":
                tokenizer = sentencepiece_tokenizer()
            else:
                regex = "llama-bpe" if family in ("llama", "mistral") else "qwen2"
                tokenizer = byte_level_tokenizer(PRE_TOKENIZERS[regex])
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            # Qwen2.5 has more embedding rows than tokens: the GGUF pads the vocabulary.
            rows = len(tokenizer) + (8 if family == "qwen2" else 0)
            _family_model(family, rows).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[family] = folder
        return made[family]

    return make


# -- a Go text/template renderer, for the Modelfile's TEMPLATE ------------------------------------
# The subset Modelfiles use: text, {{- -}} trimming, if / else if / else / end, range $i, $m :=,
# := and = variables, .Field and $.Field, string and int literals, eq, and, or, not, len, slice.

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_ARG = re.compile(r'\s*(\((?:[^()]|\([^()]*\))*\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')
_FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "and": lambda *xs: next((x for x in xs if not x), xs[-1]),
    "or": lambda *xs: next((x for x in xs if x), xs[-1]),
    "not": lambda x: not x,
    "len": len,
    "slice": lambda x, i, j=None: x[i:j],
}


def render_go(template: str, data: dict) -> str:
    parts: list[list] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        parts.append(["text", text.rstrip() if m.group(1) else text])
        parts.append(["action", m.group(2), bool(m.group(3))])
        pos = m.end()
    parts.append(["text", template[pos:]])
    for i, part in enumerate(parts[:-1]):
        if part[0] == "action" and part[2]:
            parts[i + 1][1] = parts[i + 1][1].lstrip()
    tree, _ = _parse(parts, 0, ())
    out: list[str] = []
    _run(tree, [{"$": data}], data, out)
    return "".join(out)


def _parse(parts, i, stop):
    nodes = []
    while i < len(parts):
        kind, words = parts[i][0], parts[i][1]
        if kind == "text":
            nodes.append(("text", words))
            i += 1
            continue
        head = words.split()[0] if words.split() else ""
        if head in stop:
            return nodes, i
        if head == "if":
            branches, condition = [], words[2:].strip()
            while True:
                body, i = _parse(parts, i + 1, ("else", "end"))
                branches.append((condition, body))
                word = parts[i][1]
                if word == "end":
                    break
                condition = word[len("else if") :].strip() if word.startswith("else if") else None
            nodes.append(("if", branches))
        elif head == "range":
            m = re.match(r"range\s+(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.*)", words)
            body, i = _parse(parts, i + 1, ("end",))
            nodes.append(("range", m.group(1), m.group(2), m.group(3), body))
        else:
            nodes.append(("expr", words))
        i += 1
    return nodes, i


def _run(nodes, scopes, dot, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "if":
            for condition, body in node[1]:
                if condition is None or _eval(condition, scopes, dot):
                    _run(body, scopes + [{}], dot, out)
                    break
        elif node[0] == "range":
            _, index_name, value_name, expression, body = node
            for index, item in enumerate(_eval(expression, scopes, dot)):
                _run(body, scopes + [{index_name: index, value_name: item}], item, out)
        else:
            m = re.match(r"(\$\w+)\s*(:=|=)\s*(.*)", node[1], re.S)
            if not m:
                value = _eval(node[1], scopes, dot)
                out.append("" if value is None else str(value))
            elif m.group(2) == ":=":
                scopes[-1][m.group(1)] = _eval(m.group(3), scopes, dot)
            else:
                scope = next(s for s in reversed(scopes) if m.group(1) in s)
                scope[m.group(1)] = _eval(m.group(3), scopes, dot)


def _eval(expression, scopes, dot):
    args = _ARG.findall(expression.strip())
    if args[0] in _FUNCS:
        return _FUNCS[args[0]](*[_atom(a, scopes, dot) for a in args[1:]])
    assert len(args) == 1, expression
    return _atom(args[0], scopes, dot)


def _atom(word, scopes, dot):
    if word.startswith("("):
        return _eval(word[1:-1], scopes, dot)
    if word.startswith('"'):
        return word[1:-1].encode().decode("unicode_escape")
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if word.startswith("$."):
        return scopes[0]["$"][word[2:]]
    if word.startswith("$"):
        return next(s[word] for s in reversed(scopes) if word in s)
    if word.startswith("."):
        return dot[word[1:]]
    raise ValueError(word)


@pytest.fixture(scope="session")
def go_render():
    """render_go(template, {"System": ..., "Messages": [{"Role": ..., "Content": ...}]})."""
    return render_go
