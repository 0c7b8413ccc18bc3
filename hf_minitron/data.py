"""Text sources (lists, local files, HF datasets, built-in text) and calibration batches.

Built-in text: every Python installation carries its reference documentation as
``pydoc_data.topics`` (about 113k SmolLM2 tokens of English prose and code), so the
offline demo needs no download. It is split deterministically into a calibration /
training part and a held-out part that nothing trains or calibrates on. The library's own
everyday-knowledge prompts (``builtin:seed-prompts``, 578 short questions and instructions about
science, history, how-to, stories and code) are text too: mixed into the calibration set, they keep
pruning from choosing only what documentation needs.

Calibration may mix sources: a mapping ``{source: share}`` draws that share of the samples from each.
Rows for trainers (datasets, token blocks, mixtures of them) are in ``training_data``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MinitronError

logger = logging.getLogger(__name__)

BUILTIN_TEXTS = ("builtin:python-docs", "builtin:python-docs-heldout", "builtin:seed-prompts")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")


def _python_docs(heldout: bool) -> list[str]:
    from pydoc_data.topics import topics

    names = sorted(topics)
    # Every fifth topic is held out; the split never changes between runs or machines.
    return [topics[n] for i, n in enumerate(names) if (i % 5 == 4) == heldout]


def text_of_row(row: dict, text_column: str | None, tokenizer=None) -> str:
    if text_column is not None:
        if text_column not in row:
            raise MinitronError(
                f"Text column '{text_column}' is not in the data",
                f"the rows have columns {sorted(row)}",
                "pass one of those as the text column",
            )
        value = row[text_column]
    elif "text" in row:
        value = row["text"]
    elif "content" in row:
        value = row["content"]
    elif "messages" in row and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    elif "prompt" in row and ("completion" in row or "response" in row):
        prompt, answer = row["prompt"], row["completion"] if "completion" in row else row["response"]
        if isinstance(prompt, list) and isinstance(answer, list):  # conversational: lists of role/content messages
            if tokenizer is not None and getattr(tokenizer, "chat_template", None):
                return tokenizer.apply_chat_template(prompt + answer, tokenize=False)
            return "\n".join(message["content"] for message in prompt + answer)
        return f"{prompt}\n{answer}"
    else:
        strings = [k for k, v in row.items() if isinstance(v, str)]
        if len(strings) != 1:  # several: guessing one could train on the wrong column without a word
            held = f"{', '.join(strings)} hold strings" if strings else "none holds strings"
            raise MinitronError(
                "Could not tell which column holds the text",
                f"the rows have columns {sorted(row)}, and {held}",
                "name the column that holds the text (text_column=... / --text-column)",
            )
        value = row[strings[0]]
    if not isinstance(value, str):
        raise MinitronError(f"Column '{text_column}' does not hold strings", fix="name a column of text")
    return value


def _read_file(path: Path, text_column: str | None, tokenizer) -> Iterator[str]:
    try:
        yield from _read_file_rows(path, text_column, tokenizer)
    except UnicodeDecodeError as error:
        raise MinitronError(
            f"'{path}' is not UTF-8 text",
            f"byte {error.start} cannot be decoded ({error.reason}); binary files and other encodings are not read",
            "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or give a text file",
        ) from error


def _read_file_rows(path: Path, text_column: str | None, tokenizer) -> Iterator[str]:
    if path.suffix in (".txt", ".md"):
        # Paragraphs become documents, so unpacked calibration has natural sample boundaries.
        yield from path.read_text(encoding="utf-8").split("\n\n")
    elif path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as handle:
            first = handle.read(1)
            handle.seek(0)
            rows = _json(handle.read(), path, None) if first == "[" else _json_lines(handle, path)
            for row in rows:
                yield row if isinstance(row, str) else text_of_row(row, text_column, tokenizer)
    elif path.suffix == ".parquet":
        import datasets

        for row in datasets.Dataset.from_parquet(str(path)):
            yield text_of_row(row, text_column, tokenizer)
    else:
        raise MinitronError(
            f"Cannot read '{path}' as text",
            f"supported file types are {', '.join(TEXT_SUFFIXES)}",
        )


def _json_lines(handle, path: Path) -> Iterator:
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield _json(line, path, number)


def _json(text: str, path: Path, line: int | None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {line}" if line else f"line {error.lineno}"
        raise MinitronError(
            f"'{path}' is not valid JSON{' Lines' if line else ''}: {where}: {error.msg}",
            fix="fix that line, or give one JSON object per line (.jsonl)",
        ) from error


def iter_texts(
    source,
    *,
    text_column: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    tokenizer=None,
) -> Iterator[str]:
    """Yield texts from a list of strings, a ``datasets`` object, a local file or folder,
    a Hub dataset id, or one of the built-in texts."""
    if isinstance(source, str) and source == "builtin:seed-prompts":
        from .distillation_data.prompts import builtin_seed_prompts

        yield from builtin_seed_prompts()
    elif isinstance(source, str) and source in BUILTIN_TEXTS:
        yield from _python_docs(heldout=source.endswith("heldout"))
    elif is_mixture(source):
        raise MinitronError("A mapping of sources to shares is a calibration mixture", fix="name one text source here")
    elif isinstance(source, (list, tuple)):
        for item in source:
            if not isinstance(item, str):
                raise MinitronError("A list of calibration texts must hold only strings", fix="pass a list of str")
            yield item
    elif isinstance(source, (str, Path)) and Path(source).exists():
        path = Path(source)
        if path.is_dir() and any(path.glob("data/*.parquet")):  # a dataset folder (generated data): rows, not its card
            files = sorted(path.glob("data/*.parquet"))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
        else:
            files = [path]
        if not files:
            raise MinitronError(f"Folder '{path}' holds no text files", f"looked for {', '.join(TEXT_SUFFIXES)}")
        for file in files:
            yield from _read_file(file, text_column, tokenizer)
    elif isinstance(source, (str, Path)):
        check_text_source(source)
        import datasets

        try:
            dataset = datasets.load_dataset(str(source), dataset_config, split=split, streaming=True)
        except Exception as error:  # the datasets library raises many types for "not reachable"
            raise MinitronError(
                f"Could not load the dataset '{source}'",
                f"{type(error).__name__}: {error}",
                "check the name and your network, or pass a local .txt/.jsonl/.parquet file",
            ) from error
        for row in dataset:
            yield text_of_row(row, text_column, tokenizer)
    else:
        import datasets

        if isinstance(source, datasets.DatasetDict):
            source = source[split]
        if not isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
            raise MinitronError(
                f"Cannot use an object of type {type(source).__name__} as text data",
                fix="pass a list of strings, a datasets.Dataset, a file path or a dataset id",
            )
        for row in source:
            yield text_of_row(row, text_column, tokenizer)


def check_text_source(source) -> None:
    """Cheap early check for sources that name local files: they must exist (each source of a mixture)."""
    if is_mixture(source):
        mixture_shares(source, 1)
        for part in source:
            check_text_source(part)
        return
    looks_local = isinstance(source, (str, Path)) and (
        Path(source).suffix in TEXT_SUFFIXES or str(source).startswith((".", "/", "~"))
    )
    if looks_local and str(source) not in BUILTIN_TEXTS and not Path(source).exists():
        raise MinitronError(f"Data file '{source}' does not exist", fix="check the path")


def describe_text_source(source) -> str:
    """A short, publishable description of where text came from (no local paths)."""
    if is_mixture(source):
        return " + ".join(f"{100 * share:.0f}% {describe_text_source(part)}" for part, share in _shares(source))
    if source == "builtin:seed-prompts":
        return f"{source} (hf_minitron's everyday-knowledge prompts)"
    if isinstance(source, str) and source in BUILTIN_TEXTS:
        return f"{source} (Python's bundled reference documentation)"
    if isinstance(source, (list, tuple)):
        return f"{len(source)} in-memory texts"
    if isinstance(source, (str, Path)):
        return Path(source).name if Path(source).exists() else str(source)
    return type(source).__name__


def row_prefix(tokenizer) -> list[int]:
    """``[BOS]`` when the tokenizer starts every text with it (Gemma, Llama 3), else ``[]``.

    Rows cut from the middle of a packed token stream (calibration samples, training blocks, perplexity
    windows) start with it too: models trained that way rely on it as their first token. Measured on
    the built-in Gemma 3 270M, held-out documentation windows of 256 tokens: perplexity 64.5 without
    BOS, 14.2 with it. SmolLM2 adds none, so its rows are unchanged."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # a minimal tokenizer object without the plain call
        return []
    return [bos] if len(ids) > 0 and ids[0] == bos else []


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's token ids for generation, starting with BOS when the model expects one.

    A chat template writes the BOS itself, so the text is tokenized without special tokens (a second
    BOS would be out of distribution); plain text gets the row prefix here. Without it the built-in
    Gemma 3 270M continues "The capital of France is" with "France. The The The ..."; with it, "the
    capital of the country of France."."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = row_prefix(tokenizer)
    return ids if ids[: len(prefix)] == prefix else prefix + ids


def is_mixture(source) -> bool:
    """A calibration mixture {source: share}; a ``datasets.DatasetDict`` is a mapping too, but not one."""
    return isinstance(source, Mapping) and not type(source).__module__.startswith("datasets")


def _shares(mixture: Mapping) -> list[tuple[str, float]]:
    total = sum(mixture.values())
    return [(part, share / total) for part, share in mixture.items()]


def mixture_shares(mixture: Mapping, num_samples: int) -> dict[str, int]:
    """Samples each source of a calibration mixture gives: its share of ``num_samples`` (largest
    remainders round up, so the counts add up exactly)."""
    bad = [
        f"{part!r}: {share!r}"
        for part, share in mixture.items()
        if not isinstance(part, str) or isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0
    ]
    if not mixture or bad:
        raise MinitronError(
            "A calibration mixture maps each text source to a positive share",
            f"got {', '.join(bad) or 'no sources'}",
            "write e.g. {builtin:python-docs: 0.5, builtin:seed-prompts: 0.5}",
        )
    exact = {part: share * num_samples for part, share in _shares(mixture)}
    counts = {part: int(value) for part, value in exact.items()}
    by_remainder = sorted(exact, key=lambda part: counts[part] - exact[part])
    for part in by_remainder[: num_samples - sum(counts.values())]:
        counts[part] += 1
    return counts


def interleave_by_share(parts: list[list]) -> list:
    """The items of every part in one list, each part spread through it in proportion to its length,
    keeping each part's order. Every prefix then holds each part in about its share, which is what the
    users of the first samples (``block_search_samples``, ``ReconstructionConfig.num_samples``) see."""
    taken = [0] * len(parts)
    merged = []
    for _ in range(sum(len(part) for part in parts)):
        # The part furthest behind its share so far; the midpoint rule spreads equal parts evenly.
        k = min(
            (k for k, part in enumerate(parts) if taken[k] < len(part)),
            key=lambda k: (taken[k] + 0.5) / len(parts[k]),
        )
        merged.append(parts[k][taken[k]])
        taken[k] += 1
    return merged


@dataclass
class CalibrationSet:
    """Tokenized calibration samples: packed fixed-length blocks, or one padded sample per text."""

    samples: list[torch.Tensor]
    pad_token_id: int
    description: str = ""

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def first(self, count: int | None) -> CalibrationSet:
        """The first ``count`` samples (all of them when ``count`` is None or larger)."""
        if count is None or count >= len(self.samples):
            return self
        return CalibrationSet(self.samples[:count], self.pad_token_id, self.description)

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Right-padded batches with an attention mask that marks the real tokens."""
        for start in range(0, len(self.samples), batch_size):
            chunk = self.samples[start : start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, sample in enumerate(chunk):
                ids[row, : len(sample)] = sample
                mask[row, : len(sample)] = 1
            yield {"input_ids": ids, "attention_mask": mask}


def build_calibration_set(
    source,
    tokenizer,
    *,
    num_samples: int = 1024,
    seq_len: int = 1024,
    packing: bool = True,
    text_column: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
) -> CalibrationSet:
    """Tokenize text into calibration samples.

    With ``packing`` (default, as in pre-training) texts are joined with EOS and cut into
    blocks of exactly ``seq_len`` tokens. Without it, each text is one sample truncated to
    ``seq_len`` and batches are padded; padding never counts towards importance.
    Reads only as much of the source as the samples need.
    """
    if num_samples < 1 or seq_len < 2:
        raise MinitronError(
            f"num_samples ({num_samples}) must be ≥ 1 and seq_len ({seq_len}) ≥ 2",
            fix="pass positive sizes",
        )
    if is_mixture(source):  # a mixture: each source's share of the samples, interleaved by share
        parts = []
        for part, count in mixture_shares(source, num_samples).items():
            if count:
                part_set = build_calibration_set(
                    part,
                    tokenizer,
                    num_samples=count,
                    seq_len=seq_len,
                    packing=packing,
                    text_column=text_column,
                    dataset_config=dataset_config,
                    split=split,
                )
                parts.append(part_set.samples)
        return CalibrationSet(interleave_by_share(parts), part_set.pad_token_id, describe_text_source(source))
    texts = iter_texts(source, text_column=text_column, dataset_config=dataset_config, split=split, tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    samples: list[torch.Tensor] = []
    stream: list[int] = []
    seen_text = False
    prefix = row_prefix(tokenizer) if packing else []
    take = max(seq_len - len(prefix), 1)
    for text in texts:
        if not text or not text.strip():
            continue
        seen_text = True
        ids = tokenizer(text, add_special_tokens=not packing)["input_ids"]
        if packing:
            stream.extend(ids + ([eos] if eos is not None else []))
            while len(stream) >= take and len(samples) < num_samples:
                samples.append(torch.tensor(prefix + stream[:take]))
                del stream[:take]
        elif len(ids) >= 2:
            samples.append(torch.tensor(ids[:seq_len]))
        if len(samples) >= num_samples:
            break
    description = describe_text_source(source)
    if not seen_text:
        raise MinitronError(
            f"The calibration data ({description}) holds no text",
            "importance is measured from activations on real text",
            "point at a non-empty dataset or file",
        )
    if not samples:
        have = len(stream)
        raise MinitronError(
            f"The calibration data ({description}) is too short: {have} tokens, fewer than one sample of {seq_len}",
            fix="give more text or lower seq_len (--seq-len)",
        )
    if len(samples) < num_samples:
        logger.warning("Calibration data gave %d samples of the %d asked for.", len(samples), num_samples)
    return CalibrationSet(samples=samples, pad_token_id=pad, description=description)
