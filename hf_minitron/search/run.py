"""Architecture search: prune every candidate from the same scores, distil each lightly, rank by eval LM loss.

Candidates run one after another. Each finished candidate is appended to ``search_results.jsonl``,
so an interrupted search resumes where it stopped; the best student so far is kept in ``winner/``.
Minitron distilled each candidate for ~400 steps and found rankings stable after ~300.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..distillation import DistillationConfig, DistillationTrainer
from ..evaluation.tasks import load_task, score_task
from ..locking import output_lock
from ..outputs import prepare_work_dir
from ..pruning import prune_model
from ..tables import format_table
from .candidates import Candidate

RESULTS_FILE = "search_results.jsonl"
SEARCH_KIND = "architecture search"
WINNER_DIR = "winner"


@dataclass
class SearchSettings:
    steps: int = 400
    learning_rate: float = 1e-4
    batch_size: int = 8
    max_length: int = 512
    eval_task: str | None = None  # a local multiple-choice jsonl, reported beside the loss
    eval_task_limit: int | None = None
    seed: int = 0


def read_results(output_dir: str | os.PathLike) -> list[dict]:
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_result(output_dir: Path, result: dict) -> None:
    with (output_dir / RESULTS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(result) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def architecture_search(
    teacher,
    tokenizer,
    scores,
    candidates: list[Candidate],
    train_dataset,
    eval_dataset,
    output_dir: str | os.PathLike,
    settings: SearchSettings | None = None,
    progress: bool = True,
) -> list[dict]:
    """Distil each candidate for ``settings.steps`` steps; return all results ranked by eval LM loss.

    Candidates already finished in ``output_dir`` (an earlier, interrupted search) are not trained again."""
    output_dir = Path(output_dir)
    with output_lock(output_dir):
        prepare_work_dir(output_dir, kind=SEARCH_KIND, keep=True)
        return _search(
            teacher, tokenizer, scores, candidates, train_dataset, eval_dataset, output_dir, settings, progress
        )


def _search(teacher, tokenizer, scores, candidates, train_dataset, eval_dataset, output_dir, settings, progress):
    settings = settings or SearchSettings()
    done = {r["name"]: r for r in read_results(output_dir)}
    best = min(done.values(), key=lambda r: r["eval_lm_loss"], default=None)
    task_docs = load_task(settings.eval_task, settings.eval_task_limit) if settings.eval_task else None
    for candidate in tqdm(candidates, desc="candidates", disable=not progress):
        if candidate.name in done:
            continue  # finished in an earlier run
        student = prune_model(copy.deepcopy(teacher).requires_grad_(True), candidate.pruning_config(), scores)
        args = DistillationConfig(
            output_dir=str(output_dir / "runs" / candidate.name),
            max_steps=settings.steps,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, settings.steps // 20),
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size,
            max_length=settings.max_length,
            packing=True,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to=[],
            logging_steps=max(1, settings.steps // 10),
            seed=settings.seed,
            disable_tqdm=True,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
        )
        trainer.train()
        metrics = trainer.evaluate()
        result = {
            **candidate.to_dict(),
            "eval_lm_loss": metrics["eval_student_lm_loss"],
            "eval_kl": metrics["eval_kl"],
            "teacher_lm_loss": metrics["eval_teacher_lm_loss"],
            "steps": settings.steps,
        }
        if task_docs is not None:
            result["task_acc"] = score_task(trainer.model.eval(), tokenizer, task_docs, progress=False).acc
        if best is None or result["eval_lm_loss"] < best["eval_lm_loss"]:
            trainer.export_student(output_dir / WINNER_DIR, overwrite=True)
            best = result
        _append_result(output_dir, result)  # last: a candidate counts as done only once all is written
        done[candidate.name] = result
        del trainer, student
    ranked = sorted(done.values(), key=lambda r: r["eval_lm_loss"])
    (output_dir / "winner.json").write_text(json.dumps(ranked[0], indent=2) + "\n")
    from ..plots import plot_search

    plot_search(ranked, output_dir / "search.png")
    return ranked


def search_table(results: list[dict]) -> str:
    columns = ["rank", "candidate", "params", "non-emb", "eval LM loss", "KL"]
    has_task = any("task_acc" in r for r in results)
    if has_task:
        columns.append("task acc")
    rows = [columns]
    for rank, r in enumerate(results, 1):
        row = [
            str(rank),
            r["name"],
            f"{r['params'] / 1e6:.1f}M",
            f"{r['non_embedding_params'] / 1e6:.1f}M",
            f"{r['eval_lm_loss']:.3f}",
            f"{r['eval_kl']:.3f}",
        ]
        if has_task:
            row.append(f"{100 * r['task_acc']:.1f}" if "task_acc" in r else "-")
        rows.append(row)
    return format_table(rows)
