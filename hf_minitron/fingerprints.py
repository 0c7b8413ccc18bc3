"""Stable fingerprints of settings, token rows and tokenizers, to detect stale or mismatched outputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

SAMPLE_BYTES = 1 << 20  # files above twice this are hashed by their first and last MiB


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


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, as 16 hex digits: of all of it up to 2 MiB, else of its size, first and last MiB.

    Cheap enough to run over every weight file of a large model on each resume; a truncated, emptied
    or rewritten file changes it (an edit in the middle of a large file that keeps its size does not)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= 2 * SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(str(size).encode())
            digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(size - SAMPLE_BYTES)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def folder_files(path: str | os.PathLike, skip: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """(path relative to ``path``, file) for every file under ``path`` (or ``path`` itself), sorted;
    files named in ``skip`` are left out."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path)]
    files = (p for p in path.rglob("*") if p.is_file() and p.name not in skip)
    return sorted((p.relative_to(path).as_posix(), p) for p in files)
