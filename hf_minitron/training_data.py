"""Rows for trainers: a ``datasets.Dataset`` from any text source, token blocks cut from it, and mixtures
of blocks from several sources in given shares."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .data import (
    BUILTIN_TEXTS,
    TEXT_SUFFIXES,
    check_text_source,
    describe_text_source,
    iter_texts,
    mixture_shares,
    row_prefix,
    text_of_row,
)
from .errors import MinitronError


def load_training_dataset(
    source, dataset_config: str | None = None, split: str = "train", max_samples: int | None = None
):
    """A ``datasets.Dataset`` for a trainer: Hub id, local .jsonl/.json/.parquet (all columns kept, so chat
    ``messages`` and ``prompt``/``completion`` data work), a .txt file or folder, or built-in text."""
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        dataset = source
    elif isinstance(source, str) and source in BUILTIN_TEXTS:
        dataset = datasets.Dataset.from_dict({"text": list(iter_texts(source))})
    elif isinstance(source, (str, Path)) and Path(source).exists():
        path = Path(source)
        if path.is_dir() and (path / "state.json").is_file():  # written by Dataset.save_to_disk
            dataset = datasets.load_from_disk(str(path))
        elif path.is_dir() and any(path.glob("data/*.parquet")):  # a dataset folder, e.g. generated data
            dataset = datasets.load_dataset(str(path), split="train")
        elif path.is_dir() or path.suffix in (".txt", ".md"):
            texts = [t for t in iter_texts(str(path)) if t.strip()]
            dataset = datasets.Dataset.from_dict({"text": texts})
        elif path.suffix in (".jsonl", ".json", ".parquet"):
            builder = "parquet" if path.suffix == ".parquet" else "json"
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            raise MinitronError(f"Cannot read '{path}' as a dataset", f"supported: {', '.join(TEXT_SUFFIXES)}")
    else:
        check_text_source(source)
        try:
            dataset = datasets.load_dataset(str(source), dataset_config, split=split)
        except Exception as error:  # not found, no network, bad split: all mean the same to the user
            raise MinitronError(
                f"Could not load the dataset '{source}' (split '{split}')",
                f"{type(error).__name__}: {error}",
                "check the name, split and network, or pass a local .jsonl/.parquet/.txt file",
            ) from error
    if len(dataset) == 0:
        raise MinitronError(f"The dataset '{describe_text_source(source)}' is empty", fix="point at data with rows")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def mix_training_rows(parts: Mapping[str, object]) -> object:
    """One ``datasets.Dataset`` of ``parts`` {source: (rows, share)} in which each source holds its share of
    the rows: every row of the source that needs the most rows for its share once, the other sources' rows
    repeated in turn to fill theirs (a trainer that stops after some steps then draws each source in its
    share, and a small source of teacher-written answers is not diluted by a large corpus). The rows must
    share their columns, as token blocks of one ``block_size`` do."""
    import datasets

    total_share = sum(share for _, share in parts.values())
    shares = {source: share / total_share for source, (_, share) in parts.items()}
    total = math.ceil(max(len(rows) / shares[source] for source, (rows, _) in parts.items()))
    counts = mixture_shares(shares, total)
    return datasets.concatenate_datasets(
        [rows.select([i % len(rows) for i in range(counts[source])]) for source, (rows, _) in parts.items()]
    )


def token_block_dataset(dataset, tokenizer, block_size: int, text_column: str | None = None):
    """Texts joined with EOS and cut into rows of exactly ``block_size`` tokens (``input_ids``), the last
    partial block dropped: pre-training-style rows that any SFT or distillation trainer reads as they are,
    with no padding and no text lost to truncation, and that a teacher-logit cache can index row by row."""
    import datasets

    if block_size < 2:
        raise MinitronError(f"block_size ({block_size}) must be ≥ 2")
    stream: list[int] = []
    for row in dataset:
        text = text_of_row(row, text_column, tokenizer)
        if text.strip():
            stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    prefix = row_prefix(tokenizer)
    take = block_size - len(prefix)
    blocks = [prefix + stream[start : start + take] for start in range(0, len(stream) - take + 1, take)]
    if not blocks:
        raise MinitronError(
            f"The training text holds {len(stream)} tokens, fewer than one block of {block_size}",
            fix="give more text or a smaller block_size",
        )
    return datasets.Dataset.from_dict({"input_ids": blocks})
