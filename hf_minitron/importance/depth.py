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
from ..evaluation.tasks import score_task
from ..families import family_for, get_module
from ..layer_io import record_calibration_batches
from ..layers import decoder_layers, skipped_layers


def _block_runs(model, sizes) -> list[tuple[int, int]]:
    num_layers = len(decoder_layers(model))
    return [(k, start) for k in sizes for start in range(num_layers - k + 1)]


@torch.no_grad()
def measure_block_lm_loss(
    model, calibration_data, sizes, batch_size: int = 8, progress: bool = True
) -> tuple[float | None, dict[int, torch.Tensor]]:
    """(LM loss of the whole model, {k: [loss with layers i..i+k-1 skipped, for each i]}).

    The layers below a skipped block compute what the whole model computes there, so each batch
    walks the decoder once, keeping the residual stream at layer i, and only the layers after each
    block run again: about half the layer passes of running the shortened model from its embeddings.
    """
    sizes = sorted(set(sizes))
    if not sizes:
        return None, {}
    family = family_for(model)
    layers = decoder_layers(model)
    norm = get_module(model, family.final_norm)
    runs = _block_runs(model, sizes)
    sums, base_sum, count = dict.fromkeys(runs, 0.0), 0.0, 0
    bar = tqdm(total=len(runs) * math.ceil(len(calibration_data) / batch_size), disable=not progress)
    bar.set_description("LM loss per skipped block")
    walked = record_calibration_batches(model, calibration_data, batch_size)
    for batch, walk in zip(calibration_data.batches(batch_size), walked, strict=True):

        def nll(hidden, input_ids=batch["input_ids"], mask=batch["attention_mask"]):
            sums_, counts = logprobs_from_hidden(model, norm(hidden), input_ids, mask)
            return -float(sums_.sum()), int(counts.sum())

        def run_from(first: int, hidden, layer_kwargs=walk.layer_kwargs):
            for index in range(first, len(layers)):
                hidden = _layer_output(layers[index], hidden, layer_kwargs[index])
            return hidden

        stream = walk.hidden  # the whole model's residual stream entering layer `start`
        for start in range(len(layers)):
            for k in sizes:
                if start + k <= len(layers):
                    loss, _ = nll(run_from(start + k, stream))
                    sums[(k, start)] += loss
                    bar.update()
            stream = _layer_output(layers[start], stream, walk.layer_kwargs[start])
        loss, tokens = nll(stream)
        base_sum, count = base_sum + loss, count + tokens
    bar.close()
    count = max(count, 1)
    losses = {k: torch.tensor([sums[(k, start)] / count for kk, start in runs if kk == k]) for k in sizes}
    return base_sum / count, losses


def _layer_output(layer, hidden, kwargs):
    output = layer(hidden.to(next(layer.parameters()).device), **kwargs)
    return output[0] if isinstance(output, tuple) else output


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
