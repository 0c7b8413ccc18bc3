"""Optional: evaluate the in-memory model with lm-evaluation-harness (`pip install 'hf_minitron[lm-eval]'`).

Standard tasks download their data from the Hub, so they need the network; tasks defined in local
YAML files (``include_path``) over local data work offline.
"""

from __future__ import annotations

from ..errors import MinitronError


def evaluate_with_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-evaluation-harness, run on ``model`` as it is in memory."""
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
