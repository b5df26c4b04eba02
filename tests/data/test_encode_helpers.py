"""Character-level tokenizers with any special tokens, so expected ids are written by hand.

`CharTokenizer(["<|im_start|>", "<|im_end|>"])` gives one id per special token and one per
character; `tok.ids("<|im_start|>", "user\\nHi", "<|im_end|>")` spells the expected ids (a
special token as one id, any other piece character by character).
"""

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BASE = ["<pad>", "<unk>", "<s>", "</s>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


class CharTokenizer:
    def __new__(cls, specials=(), chat_template=None):
        vocab = {t: i for i, t in enumerate(dict.fromkeys(BASE + list(specials) + CHARS))}
        model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        model.pre_tokenizer = pre_tokenizers.Split(
            Regex(r"[\s\S]"), behavior="isolated"
        )  # one piece per character, "\n" too
        model.decoder = decoders.Fuse()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=model,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            additional_special_tokens=list(specials),
        )
        if chat_template:
            tok.chat_template = chat_template
        tok.ids = lambda *pieces: spell(vocab, set(BASE) | set(specials), pieces)
        return tok


def spell(vocab, specials, pieces) -> list[int]:
    out = []
    for piece in pieces:
        out += [vocab[piece]] if piece in specials else [vocab[c] for c in piece]
    return out


def masked(ids: list[int]) -> list[int]:
    return [-100] * len(ids)


def test_spelling_matches_the_tokenizer():
    tok = CharTokenizer(["<|im_end|>"])
    assert tok.encode("Hi<|im_end|>\n", add_special_tokens=False) == tok.ids(
        "Hi", "<|im_end|>", "\n"
    )
