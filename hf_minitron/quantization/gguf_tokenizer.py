"""Tokenizer metadata for GGUF: what llama.cpp needs to produce the same ids as the Hugging Face tokenizer.

The vocabulary and merges alone are not enough: llama.cpp also needs the pre-tokenizer name (its own
splitting rules, see pretokenizers.py), whether to add BOS/EOS when encoding (it has defaults of its own
that differ between tokenizers, so the real behaviour is measured and written down), the special ids,
and which added tokens it must match verbatim in text (user-defined) versus only on request (control).
"""

from __future__ import annotations

import json

from ..errors import MinitronError
from .pretokenizers import is_sentencepiece_style, pre_tokenizer_name

# llama.cpp token types (gguf.TokenType): NORMAL 1, CONTROL 3, USER_DEFINED 4, UNUSED 5.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def adds_special_tokens(tokenizer) -> tuple[bool, bool]:
    """(adds BOS, adds EOS) when the tokenizer encodes text with its defaults, measured on a sample text."""
    sample = "Hello world"
    plain = list(tokenizer.encode(sample, add_special_tokens=False))
    full = list(tokenizer.encode(sample))
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    adds_bos = bos is not None and full[:1] == [bos] and plain[:1] != [bos]
    adds_eos = eos is not None and full[-1:] == [eos] and plain[-1:] != [eos]
    return adds_bos, adds_eos


def token_table(tokenizer, state: dict) -> tuple[list[str], list[int]]:
    """Tokens by id (gaps filled with unused placeholders) and their llama.cpp types."""
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = NORMAL
    # Added tokens that are not special are matched in plain text by transformers; llama.cpp does the same
    # only for user-defined tokens. Special ones are control tokens, matched when special parsing is on.
    special = set(tokenizer.all_special_ids)
    for added in state.get("added_tokens", []):
        special_token = added.get("special") or added["id"] in special
        types[added["id"]] = CONTROL if special_token else USER_DEFINED
    for index in special:
        types[index] = CONTROL
    return tokens, types


def write_tokenizer(writer, tokenizer, pre_tokenizer: str | None = None) -> None:
    """Vocabulary, merges, pre-tokenizer, special ids, BOS/EOS behaviour and chat template (llama.cpp "gpt2")."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE" or is_sentencepiece_style(state):
        kind = "SentencePiece-style BPE" if model.get("type") == "BPE" else model.get("type")
        raise MinitronError(
            f"GGUF export writes byte-level BPE tokenizers; this one is {kind}",
            "llama.cpp reads SentencePiece-style tokenizers (Llama-2, Mistral 7B, Gemma) through a different "
            "vocabulary type with scores and byte tokens, which this exporter does not write",
            "export without the tokenizer (include_tokenizer=False / --no-tokenizer) and pair it yourself",
        )
    name = pre_tokenizer_name(tokenizer, pre_tokenizer)
    tokens, types = token_table(tokenizer, state)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attribute, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("unk_token_id", writer.add_unk_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        if getattr(tokenizer, attribute, None) is not None:
            add(getattr(tokenizer, attribute))
    adds_bos, adds_eos = adds_special_tokens(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
