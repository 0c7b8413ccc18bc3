"""Activation-based importance from forward hooks: one pass over calibration data for all axes."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import CalibrationSet, build_calibration_set
from ..errors import MinitronError
from ..evaluation.perplexity import input_device
from ..evaluation.tasks import load_task
from ..families import family_for, find_module, get_module
from ..layers import decoder_layers
from ..loading import describe_source
from ..moe import expert_count, expert_width
from ..shapes import config_head_dim
from .aggregation import (
    FusedReductions,
    SampleAccumulator,
    accumulator_dtype,
    check_aggregation,
    masked_square_sums,
    reduce_sequence,
    token_magnitudes,
)
from .depth import measure_block_accuracy, measure_block_lm_loss, tied_blocks
from .experts import ExpertRecorder
from .scores import ImportanceScores


class _ActivationRecorder:
    """Forward hooks that turn activations into per-sample scores as they stream by.

    Nothing in a hook waits for the device: scores and cosine sums stay there until the end. On CUDA
    each hook's reduction is one compiled kernel (``aggregation.FusedReductions``).
    """

    def __init__(self, model, seq_aggregation: str, fused: bool = False):
        self.model = model
        self.family = family_for(model)
        self.seq_aggregation = seq_aggregation
        self.head_dim = config_head_dim(model.config)
        layers = decoder_layers(model)
        self.heads = [SampleAccumulator() for _ in layers]
        self.neurons = [SampleAccumulator() for _ in layers]
        self.neuron_squares: list[torch.Tensor | None] = [None] * len(layers)  # Σ a² over tokens, per neuron
        self.channels = [[SampleAccumulator() for _ in self.family.channel_norms] for _ in layers]
        self.cos_sums: list[torch.Tensor | None] = [None] * len(layers)
        self.token_count = 0.0  # every layer sees every token
        self.fused = FusedReductions() if fused else None
        self._mask: torch.Tensor | None = None
        self._masks_by_device: dict[torch.device, torch.Tensor] = {}
        self._handles = []

    def set_mask(self, mask: torch.Tensor) -> None:
        self._mask, self._masks_by_device = mask, {}
        self.token_count += float(mask.sum())  # the batch's mask is still on the host: no device sync

    def _mask_on(self, device: torch.device) -> torch.Tensor:
        # Layers of a device_map-dispatched model live on different devices: one mask copy each.
        if device not in self._masks_by_device:
            self._masks_by_device[device] = self._mask.to(device=device, dtype=torch.float32)
        return self._masks_by_device[device]

    def _add(self, accumulator: SampleAccumulator, x: torch.Tensor, head_dim: int | None = None) -> None:
        mask = self._mask_on(x.device)
        if self.fused is not None:
            sums = self.fused.magnitude_sums(x, mask, self.seq_aggregation, head_dim)
            if sums is not None:
                accumulator.add_sums(sums, x.shape[0])
                return
        accumulator.add(reduce_sequence(token_magnitudes(x, head_dim), mask, self.seq_aggregation))

    def _add_cosine(self, index: int, before: torch.Tensor, after: torch.Tensor) -> None:
        mask = self._mask_on(after.device)
        total = self.fused.cosine_sum(before, after, mask) if self.fused is not None else None
        if total is None:
            total = (F.cosine_similarity(before.float(), after.float(), dim=-1) * mask).sum()
        if self.cos_sums[index] is None:
            self.cos_sums[index] = torch.zeros((), dtype=accumulator_dtype(total.device), device=total.device)
        self.cos_sums[index] += total

    def block_importance(self) -> torch.Tensor:
        cos = torch.tensor([float(c) if c is not None else 0.0 for c in self.cos_sums], dtype=torch.float64)
        return (1 - cos / max(self.token_count, 1.0)).float()

    def attach(self) -> _ActivationRecorder:
        family = self.family
        for index, layer in enumerate(decoder_layers(self.model)):
            self._handles += [
                get_module(layer, family.head_activation_input).register_forward_pre_hook(self._head_hook(index)),
                layer.register_forward_hook(self._block_hook(index), with_kwargs=True),
            ]
            # A sparse (mixture-of-experts) layer has no dense MLP: its neurons are scored per expert.
            down_proj = find_module(layer, family.neuron_activation_input)
            if down_proj is not None:
                self._handles.append(down_proj.register_forward_pre_hook(self._neuron_hook(index)))
            for slot, norm in enumerate(family.channel_norms):
                self._handles.append(get_module(layer, norm).register_forward_hook(self._channel_hook(index, slot)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _head_hook(self, index):
        def hook(module, args):
            self._add(self.heads[index], args[0], self.head_dim)  # L2 over head_dim: [b, s, heads]

        return hook

    def _neuron_hook(self, index):
        def hook(module, args):
            self._add(self.neurons[index], args[0])
            squares = masked_square_sums(args[0], self._mask_on(args[0].device))
            previous = self.neuron_squares[index]
            self.neuron_squares[index] = squares if previous is None else previous + squares

        return hook

    def _channel_hook(self, index, slot):
        def hook(module, args, output):
            self._add(self.channels[index][slot], output)

        return hook

    def _block_hook(self, index):
        def hook(module, args, kwargs, output):
            before = args[0] if args else kwargs["hidden_states"]
            after = output[0] if isinstance(output, tuple) else output
            self._add_cosine(index, before, after)

        return hook


def _neuron_scores(recorder: _ActivationRecorder, how: str, width: int) -> torch.Tensor:
    """[layers, MLP size]; a layer without a dense MLP scores zero (nothing there to prune)."""
    rows = [acc.result(how) if acc.sums is not None else torch.zeros(width) for acc in recorder.neurons]
    return torch.stack(rows)


def _neuron_energy(recorder: _ActivationRecorder, width: int) -> torch.Tensor:
    """[layers, MLP size]: E[a²] over every calibration token; zero where a layer has no dense MLP."""
    tokens = max(recorder.token_count, 1.0)
    rows = [(s / tokens).float().cpu() if s is not None else torch.zeros(width) for s in recorder.neuron_squares]
    return torch.stack(rows)


def use_fused_reductions(device: torch.device) -> bool:
    """Compiled hook reductions where the activations live on a CUDA device (compiling on the CPU costs
    more than it saves for the models people prune there)."""
    return device.type == "cuda"


def _task_name(task) -> str:
    return "in-memory rows" if isinstance(task, list) else Path(task).stem


@torch.no_grad()
def estimate_importance(
    model,
    tokenizer=None,
    calibration_data=None,
    *,
    num_samples: int = 1024,
    seq_len: int = 1024,
    batch_size: int = 8,
    batch_aggregation: str = "l2",
    seq_aggregation: str = "mean",
    packing: bool = True,
    text_column: str | None = None,
    block_lm_loss_sizes: tuple[int, ...] | list[int] = (),
    block_search_samples: int | None = None,
    downstream_task=None,
    downstream_limit: int | None = None,
    block_accuracy_sizes: tuple[int, ...] | list[int] = (),
    progress: bool = True,
) -> ImportanceScores:
    """Score every head, MLP neuron, embedding channel and layer of ``model``.

    One forward pass over the calibration data records all width axes and the block
    importance of each layer. ``block_lm_loss_sizes`` adds, for each block size k, the
    LM loss with every contiguous block of k layers skipped (one more pass per block,
    no model copies), which the ``lm_loss`` layer selection uses; ``block_search_samples`` runs that
    sweep on the first N calibration samples only (a few rank the blocks, and each block costs a pass
    over the layers after it). ``downstream_task`` (a local
    multiple-choice jsonl file, e.g. Winogrande, or its rows) with ``block_accuracy_sizes`` adds
    the task accuracy with every contiguous block skipped, for the ``downstream`` selection, and the LM
    loss of the blocks tied in accuracy (within one standard error of the best), with which it chooses
    among them; a size in both lists gets the LM loss of every block.

    ``calibration_data`` is anything ``hf_minitron.data.iter_texts`` reads (a list of
    strings, a ``datasets`` object, a file or folder, a Hub dataset id, built-in text),
    or a ready ``CalibrationSet``.
    """
    family_for(model)
    check_aggregation(batch_aggregation, "batch")
    check_aggregation(seq_aggregation, "sequence")
    num_layers = len(decoder_layers(model))
    sizes = sorted(set(int(k) for k in block_lm_loss_sizes))
    accuracy_sizes = sorted(set(int(k) for k in block_accuracy_sizes))
    bad = [k for k in sizes + accuracy_sizes if not 0 < k < num_layers]
    if bad:
        raise MinitronError(
            f"Block sizes {bad} are impossible for a model of {num_layers} layers",
            fix=f"use sizes between 1 and {num_layers - 1}",
        )
    if block_search_samples is not None and (
        isinstance(block_search_samples, bool) or not isinstance(block_search_samples, int) or block_search_samples < 1
    ):
        raise MinitronError(f"block_search_samples must be a positive integer, got {block_search_samples!r}")
    if accuracy_sizes and downstream_task is None:
        raise MinitronError("block_accuracy_sizes needs a downstream_task", fix="pass a multiple-choice jsonl file")
    docs = None
    if downstream_task is not None:
        if tokenizer is None:
            raise MinitronError("A tokenizer is needed to score the downstream task", fix="pass tokenizer=...")
        docs = downstream_task if isinstance(downstream_task, list) else load_task(downstream_task, downstream_limit)
    if not isinstance(calibration_data, CalibrationSet):
        if tokenizer is None:
            raise MinitronError("A tokenizer is needed to tokenize the calibration text", fix="pass tokenizer=...")
        calibration_data = build_calibration_set(
            calibration_data,
            tokenizer,
            num_samples=num_samples,
            seq_len=seq_len,
            packing=packing,
            text_column=text_column,
        )
    was_training = model.training
    model.eval()
    decoder = get_module(model, family_for(model).decoder)
    device = input_device(model)
    recorder = _ActivationRecorder(model, seq_aggregation, fused=use_fused_reductions(device)).attach()
    expert_recorder = ExpertRecorder(model).attach()
    batches = calibration_data.batches(batch_size)
    total = math.ceil(len(calibration_data) / batch_size)
    try:
        for batch in tqdm(batches, total=total, desc="importance", disable=not progress):
            recorder.set_mask(batch["attention_mask"])
            expert_recorder.set_mask(batch["attention_mask"])
            # The decoder alone: importance needs no logits, so the LM head is skipped.
            decoder(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
    finally:
        recorder.detach()
        expert_recorder.detach()

    base_accuracy, block_accuracy = measure_block_accuracy(model, tokenizer, docs, accuracy_sizes, progress=progress)
    # The downstream selection breaks ties in accuracy by LM loss: of a size swept for accuracy only,
    # just the tied blocks are measured (on SmolLM2-135M's facts task, 3 of 27 blocks of 4).
    ties = {k: tied_blocks(block_accuracy[k], len(docs)) for k in accuracy_sizes if k not in sizes}
    search = calibration_data.first(block_search_samples)
    base_loss, block_losses = measure_block_lm_loss(model, search, [*sizes, *ties], batch_size, progress, only=ties)
    model.train(was_training)

    channels = torch.stack([sum(acc.result(batch_aggregation) for acc in slots) for slots in recorder.channels])
    config = model.config
    return ImportanceScores(
        heads=torch.stack([acc.result(batch_aggregation) for acc in recorder.heads]),
        neurons=_neuron_scores(recorder, batch_aggregation, config.intermediate_size),
        neuron_energy=_neuron_energy(recorder, config.intermediate_size),
        **(expert_recorder.result() if expert_recorder.active else {}),
        channels_per_layer=channels,
        block_importance=recorder.block_importance(),
        block_lm_loss=block_losses,
        base_lm_loss=base_loss,
        block_accuracy=block_accuracy,
        base_accuracy=base_accuracy,
        metadata={
            "downstream_task": _task_name(downstream_task) if accuracy_sizes else None,
            "downstream_rows": len(docs) if accuracy_sizes else None,  # for the accuracies' standard error
            "model": describe_source(getattr(model.config, "_name_or_path", "") or ""),
            "data": calibration_data.description,
            "batch_aggregation": batch_aggregation,
            "seq_aggregation": seq_aggregation,
            "num_samples": len(calibration_data),
            "num_tokens": calibration_data.num_tokens,
            "seq_len": max(len(s) for s in calibration_data.samples),
            "shape": {
                "num_hidden_layers": num_layers,
                "hidden_size": config.hidden_size,
                "intermediate_size": config.intermediate_size,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_key_value_heads,
                **(
                    {"num_experts": expert_count(model), "expert_width": expert_width(model)}
                    if expert_recorder.active
                    else {}
                ),
            },
        },
    )
