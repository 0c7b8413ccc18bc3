"""Zero-shot multiple-choice tasks scored by log-likelihood, from local jsonl files.

Two formats (as lm-evaluation-harness and llm-foundry use them):

- choices: ``{"query": str, "choices": [str, ...], "gold": int}`` (ARC, PIQA, HellaSwag-style).
  Each choice is scored as a continuation of the query (after a space). ``acc`` picks the
  highest summed log-likelihood; ``acc_norm`` the highest log-likelihood per character.
- partial: ``{"context_options": [str, ...], "continuation": str, "gold": int}`` (Winogrande).
  The shared continuation is scored after each context option; ``acc`` picks the best option.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import MinitronError
from .facts import BUILTIN_FACTS, everyday_facts
from .perplexity import row_logprobs


@dataclass(frozen=True)
class Request:
    """Score ``continuation`` given ``context``."""

    context: str
    continuation: str


@dataclass
class TaskResult:
    name: str
    acc: float
    acc_norm: float | None
    count: int
    stderr: float = field(default=0.0)

    def to_dict(self) -> dict:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "count": self.count, "acc_stderr": self.stderr}


def load_task(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """The rows of a multiple-choice jsonl file, or of ``builtin:everyday-facts`` (evaluation/facts.py);
    the first ``limit`` of them when it is given."""
    check_row_limit(limit)
    if str(path) == BUILTIN_FACTS:
        return everyday_facts()[:limit] if limit else everyday_facts()
    path = Path(path)
    if not path.is_file():
        raise MinitronError(f"Task file '{path}' does not exist", fix="point at a .jsonl file of multiple-choice rows")
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as error:
            raise MinitronError(f"Line {number} of '{path}' is not JSON ({error})") from error
        if task_format(doc) is None:
            raise MinitronError(
                f"Line {number} of '{path}' is not a multiple-choice row",
                "expected query/choices/gold or context_options/continuation/gold",
            )
        docs.append(doc)
        if limit and len(docs) >= limit:
            break
    if not docs:
        raise MinitronError(f"Task file '{path}' holds no rows")
    return docs


def check_row_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MinitronError(f"A task's row limit must be a positive integer, got {limit!r}")


def task_format(doc: dict) -> str | None:
    if {"query", "choices", "gold"} <= doc.keys():
        return "choices"
    if {"context_options", "continuation", "gold"} <= doc.keys():
        return "partial"
    return None


def requests_for(doc: dict) -> list[Request]:
    if task_format(doc) == "choices":
        return [Request(doc["query"], " " + choice) for choice in doc["choices"]]
    return [Request(option, " " + doc["continuation"]) for option in doc["context_options"]]


@torch.no_grad()
def loglikelihoods(
    model,
    tokenizer,
    requests: list[Request],
    batch_size: int = 16,
    progress: bool = False,
    max_length: int | None = None,
) -> list[float]:
    """Summed log-probability of each request's continuation tokens given its context.

    Context and continuation are tokenized separately and joined, so the continuation's tokens
    are exactly its own. Requests are batched longest-first with right padding.
    """
    results = [0.0] * len(requests)
    batches = request_batches(tokenizer, requests, batch_size, max_length)
    for group, ids, mask, score in tqdm(batches, desc="scoring", disable=not progress, leave=False):
        sums, _ = row_logprobs(model, ids, mask, score_mask=score)
        for row, index in enumerate(group):
            results[index] = float(sums[row])
    return results


def request_batches(tokenizer, requests: list[Request], batch_size: int, max_length: int | None = None) -> list:
    """The requests tokenized and batched for scoring, longest first with right padding: a list of
    (request indices, input ids, attention mask, score mask marking each row's continuation tokens)."""
    encoded = []
    for request in requests:
        context = tokenizer(request.context)["input_ids"]
        continuation = tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
        if not continuation:
            raise MinitronError(f"The continuation {request.continuation!r} has no tokens")
        ids = (context + continuation)[-(max_length or 10**9) :]
        encoded.append((ids, min(len(continuation), len(ids) - 1)))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        score = torch.zeros_like(ids)
        for row, index in enumerate(group):
            tokens, scored = encoded[index]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
            score[row, len(tokens) - scored : len(tokens)] = 1
        batches.append((group, ids, mask, score))
    return batches


def task_requests(docs: list[dict]) -> tuple[list[Request], list[tuple[int, int]]]:
    """Every request of ``docs`` in order, and each doc's (first request, number of requests)."""
    requests, spans = [], []
    for doc in docs:
        doc_requests = requests_for(doc)
        spans.append((len(requests), len(doc_requests)))
        requests.extend(doc_requests)
    return requests, spans


def score_task(
    model, tokenizer, docs: list[dict], name: str = "task", batch_size: int = 16, progress: bool = True
) -> TaskResult:
    """Accuracy (and length-normalised accuracy for choice tasks) of ``model`` on ``docs``."""
    requests, spans = task_requests(docs)
    scores = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, progress=progress)
    return task_result(docs, requests, spans, scores, name)


def task_result(docs, requests, spans, scores: list[float], name: str = "task") -> TaskResult:
    """Accuracy of the log-likelihoods ``scores`` of ``task_requests(docs)``."""
    correct = correct_norm = 0
    has_norm = task_format(docs[0]) == "choices"
    for doc, (start, count) in zip(docs, spans, strict=True):
        values = scores[start : start + count]
        correct += int(max(range(count), key=values.__getitem__) == doc["gold"])
        if has_norm:
            per_char = [v / max(len(requests[start + i].continuation), 1) for i, v in enumerate(values)]
            correct_norm += int(max(range(count), key=per_char.__getitem__) == doc["gold"])
    n = len(docs)
    acc = correct / n
    return TaskResult(
        name=name,
        acc=acc,
        acc_norm=correct_norm / n if has_norm else None,
        count=n,
        stderr=math.sqrt(acc * (1 - acc) / max(n - 1, 1)),
    )
