"""The built-in byte-level tokenizer of `builtin:tiny-mistral`, made with `tokenizers` (no download).

Ids 0-255 are the raw bytes (id == byte value), then <s>=256, </s>=257, <unk>=258, <pad>=259. Any text
round-trips exactly. Wrapped as a fast tokenizer so `save_pretrained` / `AutoTokenizer` work.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (what ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A fresh byte-level tokenizer; token id i < 256 is byte i."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
    )
    return wrapped
