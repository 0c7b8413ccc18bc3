"""Stable fingerprints of settings, token rows and tokenizers, to detect stale or mismatched outputs."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def fingerprint(value) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys), as 16 hex digits."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def row_fingerprint(input_ids, labels=None) -> str:
    """A token row as trained on: its ids and, where given, which of them are scored (labels ≠ -100)."""
    digest = hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes())
    if labels is not None:
        digest.update(b"|")
        digest.update((np.asarray(labels, dtype=np.int64) != -100).tobytes())
    return digest.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer) -> str:
    """The vocabulary and special tokens: two tokenizers with the same fingerprint split text identically
    for the purposes of a logit cache (ids mean the same tokens)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id")}
    return fingerprint({"vocab": vocab, "special": special})
