"""Depth importance by removal: LM loss and downstream accuracy with each contiguous block skipped.

Minitron found that dropping one contiguous block chosen by a downstream task (Winogrande) beats
dropping the individually least important layers, and that LM loss and accuracy rank blocks
differently. Layers are skipped by running the model without them: no weight is copied.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..evaluation.perplexity import logprobs_from_hidden
from ..evaluation.tasks import request_batches, task_requests, task_result
from ..families import family_for, get_module
from ..layer_io import record_batches
from ..layers import decoder_layers


def _block_runs(model, sizes) -> list[tuple[int, int]]:
    num_layers = len(decoder_layers(model))
    return [(k, start) for k in sizes for start in range(num_layers - k + 1)]


def tied_blocks(accuracy: torch.Tensor, rows: int | None) -> list[int]:
    """The first layers of the blocks whose removal keeps task accuracy within one standard error of the
    best (sqrt(p(1 - p) / rows) at the best accuracy p): on a task of a few dozen rows one answer is
    within noise. Without the row count (scores saved by an earlier version) only exact ties."""
    accuracy = accuracy.double()
    best = float(accuracy.max())
    tolerance = math.sqrt(best * (1 - best) / rows) if rows else 0.0
    return torch.nonzero(accuracy >= best - tolerance - 1e-9).flatten().tolist()


@torch.no_grad()
def measure_block_lm_loss(
    model,
    calibration_data,
    sizes,
    batch_size: int = 8,
    progress: bool = True,
    only: dict[int, list[int]] | None = None,
) -> tuple[float | None, dict[int, torch.Tensor]]:
    """(LM loss of the whole model, {k: [loss with layers i..i+k-1 skipped, for each i]}).

    ``only`` ({k: [first layers]}) measures just those blocks of size k and leaves the others NaN: the
    ``downstream`` selection needs LM loss only to choose among the blocks tied in accuracy, and each
    block costs a pass over the layers after it.
    """
    sizes = sorted(set(sizes))
    if not sizes:
        return None, {}
    only = only or {}
    runs = [(k, start) for k, start in _block_runs(model, sizes) if k not in only or start in only[k]]
    batches = list(calibration_data.batches(batch_size))
    sums, tokens = dict.fromkeys([*runs, None], 0.0), 0

    def add(index, run, hidden):
        nonlocal tokens
        batch = batches[index]
        row_sums, counts = logprobs_from_hidden(model, hidden, batch["input_ids"], batch["attention_mask"])
        sums[run] -= float(row_sums.sum())
        if run is None:  # every run scores the same tokens: count them once
            tokens += int(counts.sum())

    _walk_skipping_blocks(model, batches, runs, add, "LM loss per skipped block", progress)
    tokens = max(tokens, 1)
    losses = {k: torch.full((len(decoder_layers(model)) - k + 1,), math.nan) for k in sizes}
    for k, start in runs:
        losses[k][start] = sums[(k, start)] / tokens
    return sums[None] / tokens, losses


@torch.no_grad()
def measure_block_accuracy(
    model, tokenizer, docs: list[dict], sizes, batch_size: int = 64, progress: bool = True
) -> tuple[float | None, dict[int, torch.Tensor]]:
    """(task accuracy of the whole model, {k: [accuracy with layers i..i+k-1 skipped, for each i]}).

    ``docs`` are rows of a local multiple-choice task (see ``hf_minitron.evaluation.tasks``); each
    request is scored as ``score_task`` scores it, from the decoder walk ``measure_block_lm_loss`` uses.
    """
    sizes = sorted(set(sizes))
    if not sizes:
        return None, {}
    requests, spans = task_requests(docs)
    batches = request_batches(tokenizer, requests, batch_size)
    runs = _block_runs(model, sizes)
    scores = {run: [0.0] * len(requests) for run in [*runs, None]}

    def add(index, run, hidden):
        group, ids, mask, score = batches[index]
        row_sums, _ = logprobs_from_hidden(model, hidden, ids, mask, score_mask=score)
        for row, request in enumerate(group):
            scores[run][request] = float(row_sums[row])

    inputs = [{"input_ids": ids, "attention_mask": mask} for _, ids, mask, _ in batches]
    _walk_skipping_blocks(model, inputs, runs, add, "accuracy per skipped block", progress)
    accuracy = {run: task_result(docs, requests, spans, values).acc for run, values in scores.items()}
    return accuracy[None], {k: torch.tensor([accuracy[(k, start)] for kk, start in runs if kk == k]) for k in sizes}


def _walk_skipping_blocks(model, batches, runs, add, description: str, progress: bool) -> None:
    """Call ``add(batch index, (k, start), hidden)`` with the final normalised hidden states of the model
    without layers start..start+k-1, for every block (k, start) of ``runs`` and every batch, and
    ``add(batch index, None, hidden)`` for the whole model.

    The layers below a skipped block compute what the whole model computes there, so each batch
    walks the decoder once, keeping the residual stream at layer i, and only the layers after each
    block run again: about half the layer passes of running the shortened model from its embeddings.
    """
    layers = decoder_layers(model)
    norm = get_module(model, family_for(model).final_norm)
    starts = {start: [k for k, first in runs if first == start] for start in range(len(layers))}
    bar = tqdm(total=len(runs) * len(batches), desc=description, disable=not progress)
    for index, walk in enumerate(record_batches(model, batches)):

        def run_from(first: int, hidden, layer_kwargs=walk.layer_kwargs):
            for number in range(first, len(layers)):
                hidden = _layer_output(layers[number], hidden, layer_kwargs[number])
            return hidden

        stream = walk.hidden  # the whole model's residual stream entering layer `start`
        for start in range(len(layers)):
            for k in starts[start]:
                add(index, (k, start), norm(run_from(start + k, stream)))
                bar.update()
            stream = _layer_output(layers[start], stream, walk.layer_kwargs[start])
        add(index, None, norm(stream))
    bar.close()


def _layer_output(layer, hidden, kwargs):
    output = layer(hidden.to(next(layer.parameters()).device), **kwargs)
    return output[0] if isinstance(output, tuple) else output
