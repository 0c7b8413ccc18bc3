"""Evaluate one or more models on perplexity and local tasks; results as JSON and a readable table."""

from __future__ import annotations

import time

from ..tables import format_table
from .perplexity import perplexity
from .tasks import load_task, score_task


def evaluate_model(
    model,
    tokenizer,
    *,
    tasks: dict[str, str] | None = None,
    perplexity_data=None,
    limit: int | None = None,
    seq_len: int = 512,
    max_tokens: int | None = 16384,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Perplexity on ``perplexity_data`` (any text source) and accuracy on each local task file.

    ``tasks`` maps a task name to a jsonl file (see ``hf_minitron.evaluation.tasks`` for the formats).
    """
    results: dict = {"tasks": {}}
    start = time.perf_counter()
    if perplexity_data is not None:
        results["perplexity"] = perplexity(
            model, tokenizer, perplexity_data, seq_len=seq_len, max_tokens=max_tokens, progress=progress
        ).to_dict()
    for name, path in (tasks or {}).items():
        docs = load_task(path, limit)
        results["tasks"][name] = score_task(
            model, tokenizer, docs, name, batch_size=batch_size, progress=progress
        ).to_dict()
    if results["tasks"]:
        results["task_mean_acc"] = sum(t["acc"] for t in results["tasks"].values()) / len(results["tasks"])
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def results_table(results: dict[str, dict], markdown: bool = False) -> str:
    """One column per model, one row per metric; later columns show their difference to the first."""
    names = list(results)
    rows: list[tuple[str, list[float | None]]] = []
    if any("perplexity" in r for r in results.values()):
        rows.append(("perplexity", [r.get("perplexity", {}).get("perplexity") for r in results.values()]))
    tasks = sorted({t for r in results.values() for t in r.get("tasks", {})})
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            values = [r.get("tasks", {}).get(task, {}).get(metric) for r in results.values()]
            if any(v is not None for v in values):
                rows.append((f"{task} {metric}", values))
    harness_tasks = sorted({t for r in results.values() for t in r.get("lm_eval", {})})
    for task in harness_tasks:
        for metric in ("acc", "acc_norm"):
            values = [r.get("lm_eval", {}).get(task, {}).get(metric) for r in results.values()]
            if any(v is not None for v in values):
                rows.append((f"{task} {metric} (lm-eval)", values))
    if any("task_mean_acc" in r for r in results.values()):
        rows.append(("mean task acc", [r.get("task_mean_acc") for r in results.values()]))
    table = [["metric", *names]]
    for label, values in rows:
        cells = [label]
        for i, value in enumerate(values):
            if value is None:
                cells.append("-")
                continue
            text = f"{value:.2f}" if label == "perplexity" else f"{100 * value:.1f}"
            if i and values[0] is not None:
                delta = value - values[0]
                text += f" ({delta:+.2f})" if label == "perplexity" else f" ({100 * delta:+.1f})"
            cells.append(text)
        table.append(cells)
    return format_table(table, markdown=markdown)
