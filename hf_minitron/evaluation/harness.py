"""Optional: evaluate the in-memory model with lm-evaluation-harness (`pip install 'hf_minitron[lm-eval]'`).

Standard tasks download their data from the Hub, so they need the network; tasks defined in local
YAML files (``include_path``) over local data work offline. So do local multiple-choice files in this
project's formats (``local_tasks``: name → .jsonl): a task definition for each is written to a temporary
folder, never next to the data, and removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import MinitronError
from .tasks import load_task, task_format

# How each local row format maps onto an lm-eval multiple_choice task. Fields are named directly (not
# through Jinja templates), so the text reaches the model unchanged.
#  - choices: every choice is a continuation of the query (after the default " " delimiter).
#  - partial: an integer doc_to_text makes lm-eval treat the choices as contexts, each followed by the
#    shared continuation; the gold index is then read from doc_to_text.
_FIELDS = {
    "choices": {"doc_to_text": "query", "doc_to_choice": "choices", "doc_to_target": "gold"},
    "partial": {"doc_to_text": "gold", "doc_to_choice": "context_options", "doc_to_target": "continuation"},
}


def evaluate_with_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
    local_tasks: dict[str, str | os.PathLike] | None = None,
) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-evaluation-harness, run on ``model`` as it is in memory.

    ``tasks`` are lm-eval task names (found in lm-eval itself or in ``include_path``); ``local_tasks``
    adds tasks made from local .jsonl files of multiple-choice rows (see ``hf_minitron.evaluation.tasks``).
    """
    local_tasks = dict(local_tasks or {})
    if not local_tasks:
        return _run_lm_eval(model, tokenizer, list(tasks), num_fewshot, limit, batch_size, include_path)
    with tempfile.TemporaryDirectory(prefix="hf_minitron-lm-eval-") as folder:
        for name, path in local_tasks.items():
            write_task_yaml(name, path, Path(folder))
        paths = [folder] if include_path is None else [include_path, folder]
        names = list(tasks) + [name for name in local_tasks if name not in tasks]
        return _run_lm_eval(model, tokenizer, names, num_fewshot, limit, batch_size, paths)


def write_task_yaml(name: str, data: str | os.PathLike, folder: Path) -> Path:
    """Write an lm-eval task definition named ``name`` over the local .jsonl file ``data`` into ``folder``."""
    import yaml

    data = Path(data).resolve()
    docs = load_task(data)  # the same checks (and messages) as the project's own scorer
    kind = task_format(docs[0])
    if any(task_format(doc) != kind for doc in docs):
        raise MinitronError(f"Task file '{data}' mixes row formats", fix="keep one format per file")
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        **_FIELDS[kind],
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
        + ([{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}] if kind == "choices" else []),
        "metadata": {"version": 1.0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    return path


def _run_lm_eval(model, tokenizer, tasks, num_fewshot, limit, batch_size, include_path):
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise MinitronError(
            "lm-evaluation-harness is not installed",
            "standard benchmarks run through it",
            "pip install 'hf_minitron[lm-eval]' (or use the local multiple-choice tasks)",
        ) from error
    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    try:
        output = lm_eval.simple_evaluate(
            model=harness_model,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
        )
    except Exception as error:  # unknown task names, unreachable datasets: say which and why
        raise MinitronError(
            f"lm-evaluation-harness could not run {', '.join(tasks)}",
            f"{type(error).__name__}: {error}",
            "check the task names and that their data is reachable (or define a local task with include_path)",
        ) from error
    return {
        task: {
            metric.split(",")[0]: float(value)
            for metric, value in metrics.items()
            if isinstance(value, (int, float)) and not metric.startswith("alias")
        }
        for task, metrics in output["results"].items()
    }
