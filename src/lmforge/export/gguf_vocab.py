"""A Hugging Face tokenizer as GGUF tokenizer metadata, written the way llama.cpp writes it.

Two kinds of tokenizer.json can be written:
- SentencePiece-style BPE (byte fallback, `▁` for spaces: Gemma, Llama 2, Mistral 7B) as
  llama.cpp's `llama` tokenizer: every token with a score (the merge order: -rank) and a type
  (control for special added tokens, user-defined for other added tokens, byte for <0xNN>);
  Gemma's runs of spaces are stored as spaces, as in Gemma's own tokenizer.model;
- byte-level BPE (Llama 3, Qwen, Mistral Nemo's tekken) as llama.cpp's `gpt2` tokenizer: the
  tokens, the merges, and the pre-tokenizer named by the split regex it uses.
Any other kind (WordLevel, Unigram, WordPiece) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lmforge.errors import UserError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp's pre-tokenizer names for the split regexes of the families we write (llama.cpp
# and transformers' GGUF loader both know these names).
PRE_TOKENIZERS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "tekken": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    add_space_prefix: bool = False


def read_vocab(tokenizer, vocab_size: int, *, gemma: bool = False) -> Vocab:
    """The GGUF vocabulary of `tokenizer` (a fast tokenizer) for a model with `vocab_size`
    embedding rows, or a UserError saying why not. Rows the tokenizer has no token for (Qwen2.5
    pads its embeddings) become unused `[PAD<id>]` tokens, as llama.cpp writes them."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    tokens = _tokens_by_id(tokenizer)
    if len(tokens) > vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokens)} tokens but the model only {vocab_size} embeddings",
            fix="export with the tokenizer the model was trained with",
        )
    padding = [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    if model.get("type") == "BPE" and (model.get("byte_fallback") or "<0x00>" in model["vocab"]):
        return _padded(_sentencepiece(spec, tokens, added, gemma=gemma), padding)
    if model.get("type") == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        return _padded(_byte_level(spec, tokens, added), padding)
    raise UserError(
        f"export_gguf cannot write this tokenizer (a {model.get('type')} tokenizer.json): GGUF "
        "holds SentencePiece-style BPE (Gemma, Llama 2, Mistral) or byte-level BPE (Llama 3, "
        "Qwen) tokenizers",
        fix="remove export_gguf; the merged folder is still written",
    )


def _padded(vocab: Vocab, padding: list[str]) -> Vocab:
    vocab.tokens += padding
    vocab.types += [UNUSED] * len(padding)
    if vocab.scores is not None:
        vocab.scores += [-1000.0] * len(padding)
    return vocab


def _tokens_by_id(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for text, index in vocab.items():
        if index >= len(tokens) or tokens[index]:
            raise UserError(
                "export_gguf needs token ids 0..N-1, each used once; this tokenizer's are not",
                fix="remove export_gguf; the merged folder is still written",
            )
        tokens[index] = text
    return tokens


def _sentencepiece(spec: dict, tokens: list[str], added: dict, *, gemma: bool) -> Vocab:
    types, scores, rank = [], [], 0
    out = []
    for index, text in enumerate(tokens):
        if index in added:
            kind = CONTROL if added[index].get("special") else USER_DEFINED
            score = -1000.0
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kind, score = BYTE, 0.0
        elif gemma and len(text) > 1 and set(text) == {"\u2581"}:
            kind, score, text = USER_DEFINED, -1000.0, " " * len(text)
        else:
            kind, score = NORMAL, -float(rank)
            rank += 1
        out.append(text)
        types.append(kind)
        scores.append(score)
    prefix = "Prepend" in json.dumps(spec.get("normalizer")) or _metaspace_prefix(spec)
    return Vocab("llama", "default", out, types, scores, add_space_prefix=prefix)


def _metaspace_prefix(spec: dict) -> bool:
    text = json.dumps(spec.get("pre_tokenizer"))
    return '"Metaspace"' in text and '"prepend_scheme": "never"' not in text


def _byte_level(spec: dict, tokens: list[str], added: dict) -> Vocab:
    types = []
    for index in range(len(tokens)):
        if index in added:
            types.append(CONTROL if added[index].get("special") else USER_DEFINED)
        else:
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return Vocab("gpt2", _pre_name(spec), tokens, types, merges=merges)


def _pre_name(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer's split regex."""
    pattern = _split_regex(spec.get("pre_tokenizer") or {})
    names = [name for name, regex in PRE_TOKENIZERS.items() if regex == pattern]
    if not names:
        raise UserError(
            "export_gguf cannot name this tokenizer's pre-tokenizer for llama.cpp (its split "
            "regex is not one of Llama 3's, Qwen2's or Mistral tekken's)",
            fix="remove export_gguf; the merged folder is still written",
        )
    return names[0]


def _split_regex(node: dict) -> str | None:
    if node.get("type") == "Split":
        return (node.get("pattern") or {}).get("Regex")
    for child in node.get("pretokenizers") or []:
        found = _split_regex(child)
        if found:
            return found
    return None


def special_ids(tokenizer) -> dict[str, int]:
    """bos/eos/unk/pad ids that the tokenizer has."""
    ids = {}
    for name in ("bos", "eos", "unk", "pad"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is not None:
            ids[name] = int(value)
    return ids


def adds_special(tokenizer) -> tuple[bool, bool]:
    """(adds BOS, adds EOS) to plain text, as seen by encoding one character."""
    ids = tokenizer.encode("a")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return (bos is not None and ids[:1] == [bos], eos is not None and ids[-1:] == [eos])


def write_vocab(writer, vocab: Vocab, tokenizer, chat_template: str | None, eot_id: int | None):
    """Tokenizer metadata into a GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    ids = special_ids(tokenizer)
    for name, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if name in ids:
            add(ids[name])
    if eot_id is not None:
        writer.add_eot_token_id(eot_id)
    bos, eos = adds_special(tokenizer)
    writer.add_add_bos_token(bos)
    writer.add_add_eos_token(eos)
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if chat_template:
        writer.add_chat_template(chat_template)
