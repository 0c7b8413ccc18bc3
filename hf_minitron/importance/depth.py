"""Depth importance by removal: LM loss and downstream accuracy with each contiguous block skipped.

Minitron found that dropping one contiguous block chosen by a downstream task (Winogrande) beats
dropping the individually least important layers, and that LM loss and accuracy rank blocks
differently. Layers are skipped by running the model without them: no weight is copied.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..evaluation.perplexity import mean_lm_loss
from ..evaluation.tasks import score_task
from ..layers import decoder_layers, skipped_layers


def _block_runs(model, sizes) -> list[tuple[int, int]]:
    num_layers = len(decoder_layers(model))
    return [(k, start) for k in sizes for start in range(num_layers - k + 1)]


@torch.no_grad()
def measure_block_lm_loss(
    model, calibration_data, sizes, batch_size: int = 8, progress: bool = True
) -> tuple[float | None, dict[int, torch.Tensor]]:
    """(LM loss of the whole model, {k: [loss with layers i..i+k-1 skipped, for each i]})."""
    if not sizes:
        return None, {}
    base = mean_lm_loss(model, calibration_data, batch_size)
    losses: dict[int, list[float]] = {k: [] for k in sizes}
    for k, start in tqdm(_block_runs(model, sizes), desc="LM loss per skipped block", disable=not progress):
        with skipped_layers(model, range(start, start + k)):
            losses[k].append(mean_lm_loss(model, calibration_data, batch_size))
    return base, {k: torch.tensor(v) for k, v in losses.items()}


@torch.no_grad()
def measure_block_accuracy(
    model, tokenizer, docs: list[dict], sizes, batch_size: int = 16, progress: bool = True
) -> tuple[float | None, dict[int, torch.Tensor]]:
    """(task accuracy of the whole model, {k: [accuracy with layers i..i+k-1 skipped, for each i]}).

    ``docs`` are rows of a local multiple-choice task (see ``hf_minitron.evaluation.tasks``).
    """
    if not sizes:
        return None, {}
    base = score_task(model, tokenizer, docs, batch_size=batch_size, progress=False).acc
    accuracy: dict[int, list[float]] = {k: [] for k in sizes}
    for k, start in tqdm(_block_runs(model, sizes), desc="accuracy per skipped block", disable=not progress):
        with skipped_layers(model, range(start, start + k)):
            accuracy[k].append(score_task(model, tokenizer, docs, batch_size=batch_size, progress=False).acc)
    return base, {k: torch.tensor(v) for k, v in accuracy.items()}
