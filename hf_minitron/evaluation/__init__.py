"""Evaluation: perplexity, zero-shot multiple-choice tasks, and reports comparing models."""

from .harness import evaluate_with_lm_eval
from .perplexity import PerplexityResult, mean_lm_loss, perplexity, row_logprobs, token_nll
from .report import evaluate_model, results_table
from .serving import check_serving_config
from .tasks import Request, TaskResult, load_task, loglikelihoods, score_task

__all__ = [
    "PerplexityResult",
    "Request",
    "TaskResult",
    "check_serving_config",
    "evaluate_model",
    "evaluate_with_lm_eval",
    "load_task",
    "loglikelihoods",
    "mean_lm_loss",
    "perplexity",
    "results_table",
    "row_logprobs",
    "score_task",
    "token_nll",
]
