"""Tokenizer metadata for GGUF: what llama.cpp needs to produce the same ids as the Hugging Face tokenizer.

The vocabulary and merges alone are not enough: llama.cpp also needs the pre-tokenizer name (its own
splitting rules, see pretokenizers.py), whether to add BOS/EOS when encoding (it has defaults of its own
that differ between tokenizers, so the real behaviour is measured and written down), the special ids,
and which added tokens it must match verbatim in text (user-defined) versus only on request (control).
"""

from __future__ import annotations

import json
import re

from ..errors import MinitronError
from .pretokenizers import is_sentencepiece_style, pre_tokenizer_name

# llama.cpp token types (gguf.TokenType): NORMAL 1, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


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


def _merge_pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def sentencepiece_scores(state: dict, tokens: list[str]) -> list[float]:
    """Scores for llama.cpp's SentencePiece tokenizer, which merges the best-scored adjacent pair first.

    A Unigram model carries its scores. A SentencePiece BPE model stored as tokenizer.json has merges
    instead, ranked by the score of the piece each one makes; the negative rank of the first merge that
    makes a piece keeps that order. Pieces no merge makes (single characters, bytes, added tokens) rank
    below every merge, so llama.cpp prefers the merges transformers would apply.
    """
    model = state["model"]
    if model["type"] == "Unigram":
        return [float(score) for _, score in model["vocab"]] + [0.0] * (len(tokens) - len(model["vocab"]))
    rank = {}
    for index, merge in enumerate(model.get("merges", [])):
        rank.setdefault("".join(_merge_pair(merge)), index)
    unmade = -float(len(rank) + 1)
    return [-float(rank[token]) if token in rank else unmade for token in tokens]


def _adds_space_prefix(state: dict) -> bool:
    """Whether the tokenizer puts ▁ before the first word (Llama-2, Mistral 7B) or not (Gemma)."""
    normalizer = json.dumps(state.get("normalizer"))
    pre = state.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    metaspace = [p for p in pres if isinstance(p, dict) and p.get("type") == "Metaspace"]
    return '"Prepend"' in normalizer or any(
        p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never" for p in metaspace
    )


def _write_sentencepiece(writer, tokenizer, state: dict) -> None:
    """llama.cpp's SentencePiece vocabulary ("llama"): pieces with scores, byte tokens typed as bytes."""
    tokens, types = token_table(tokenizer, state)
    if state["model"].get("byte_fallback"):
        is_byte = [bool(_BYTE_TOKEN.fullmatch(t)) for t in tokens]
        if sum(is_byte) != 256:
            raise MinitronError(
                f"This tokenizer falls back to bytes but has {sum(is_byte)} of the 256 byte tokens <0x00>…<0xFF>",
                "llama.cpp stops the process when it needs a byte token that is not there",
                "export without the tokenizer (include_tokenizer=False / --no-tokenizer) and pair it yourself",
            )
        types = [BYTE if byte else kind for byte, kind in zip(is_byte, types, strict=True)]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(sentencepiece_scores(state, tokens))
    writer.add_token_types(types)
    writer.add_add_space_prefix(_adds_space_prefix(state))


def write_tokenizer(writer, tokenizer, pre_tokenizer: str | None = None) -> None:
    """Vocabulary, special ids, BOS/EOS behaviour and chat template; merges and the pre-tokenizer for
    byte-level BPE (llama.cpp "gpt2"), scores for SentencePiece-style tokenizers (llama.cpp "llama")."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    sentencepiece = model.get("type") == "Unigram" or (model.get("type") == "BPE" and is_sentencepiece_style(state))
    if model.get("type") != "BPE" and not sentencepiece:
        raise MinitronError(
            f"GGUF export writes BPE and SentencePiece tokenizers; this one is {model.get('type')}",
            "llama.cpp has no vocabulary type that would tokenize it the same way",
            "export without the tokenizer (include_tokenizer=False / --no-tokenizer) and pair it yourself",
        )
    if sentencepiece:
        _write_sentencepiece(writer, tokenizer, state)
    else:
        name = pre_tokenizer_name(tokenizer, pre_tokenizer)
        tokens, types = token_table(tokenizer, state)
        merges = [" ".join(_merge_pair(m)) for m in model.get("merges", [])]
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
