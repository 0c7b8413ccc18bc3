"""Walking a decoder one layer at a time: what enters each layer, and what happens inside it.

Reconstruction (and the LM-loss sweep over dropped blocks of layers) runs a decoder layer by
layer over the calibration batches, so it needs, for every batch, the input of layer 0 and the
keyword arguments the decoder passes each layer (attention masks, which can differ per layer type;
rotary position embeddings). Those are recorded by one pass of the decoder whose layers are
swapped for pass-throughs: the embeddings, masks and rotary tables are computed by the model's
own code, the layers themselves cost nothing.
Inside a layer, forward hooks named by the family table capture the inputs of the attention
output projection and of the MLP output projection, and the residual stream between the two.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .data import CalibrationSet
from .evaluation.perplexity import input_device
from .families import family_for, find_module, get_module
from .layers import decoder_layers


@dataclass
class CalibrationBatch:
    """One batch as the decoder's layers see it."""

    hidden: torch.Tensor  # input of layer 0 (the embedding output) [b, s, hidden]
    layer_kwargs: list[dict]  # per layer: the keyword arguments the decoder passes it
    mask: torch.Tensor  # [b, s] bool: real tokens (padding never enters a fit)


@contextmanager
def _pass_through_layers(layers, calls: list):
    """Each layer returns its input unchanged and records (its input, the keyword arguments it got)."""

    def make(index):
        def forward(hidden_states, *args, **kwargs):
            calls[index] = (hidden_states, kwargs)
            return hidden_states

        return forward

    for index, layer in enumerate(layers):
        layer.forward = make(index)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def record_calibration_batches(model, calibration: CalibrationSet, batch_size: int) -> list[CalibrationBatch]:
    """Layer-0 inputs and per-layer keyword arguments of ``model`` for every calibration batch."""
    return record_batches(model, calibration.batches(batch_size))


@torch.no_grad()
def record_batches(model, inputs) -> list[CalibrationBatch]:
    """``record_calibration_batches`` for any batches of ``input_ids`` and ``attention_mask``."""
    decoder = get_module(model, family_for(model).decoder)
    layers = decoder_layers(model)
    device = input_device(model)
    batches = []
    for batch in inputs:
        calls: list = [None] * len(layers)
        with _pass_through_layers(layers, calls):
            decoder(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
        for _, kwargs in calls:
            kwargs.pop("hidden_states", None)
            kwargs["use_cache"] = False
        batches.append(
            CalibrationBatch(
                hidden=calls[0][0],
                layer_kwargs=[kwargs for _, kwargs in calls],
                mask=batch["attention_mask"].bool(),
            )
        )
    return batches


class _StopLayer(Exception):
    """Raised inside a layer once everything asked for has been seen."""


@dataclass
class LayerActivations:
    """What happened inside one decoder layer for one batch (tensors on the layer's device)."""

    attention_output_input: torch.Tensor | None = None  # input of the attention output projection
    mid: torch.Tensor | None = None  # the residual stream between attention and MLP
    mlp_output_input: torch.Tensor | None = None  # input of the MLP output projection
    output: torch.Tensor | None = None  # the layer's output


@torch.no_grad()
def run_layer(model, layer, hidden: torch.Tensor, kwargs: dict, stop_after_attention: bool = False) -> LayerActivations:
    """Run one decoder layer of ``model`` with hooks; ``stop_after_attention`` skips the MLP."""
    family = family_for(model)
    seen = LayerActivations()

    def attention_output(module, args):
        seen.attention_output_input = args[0]

    def mid(module, args):
        seen.mid = args[0]
        if stop_after_attention:
            raise _StopLayer

    def mlp_output(module, args):
        seen.mlp_output_input = args[0]

    handles = [
        get_module(layer, family.head_activation_input).register_forward_pre_hook(attention_output),
        get_module(layer, family.residual_after_attention_reader).register_forward_pre_hook(mid),
    ]
    dense_output = find_module(layer, family.neuron_activation_input)  # None in a sparse MoE layer
    if dense_output is not None:
        handles.append(dense_output.register_forward_pre_hook(mlp_output))
    device = next(layer.parameters()).device
    try:
        output = layer(hidden.to(device), **kwargs)
        seen.output = output[0] if isinstance(output, tuple) else output
    except _StopLayer:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen


# A dense decoder layer in parts. With a layer's attention output projection or MLP output projection
# re-fitted, these give its new residual streams from activations already seen, without running the
# attention (or the rest of the MLP) again:
#   mid    = hidden + attention_output_norm(o_proj(attention_output_input))
#   output = mid    + mlp_output_norm(down_proj(mlp_output_input))
# where mlp_output_input comes from the MLP's input norm and its projections before down_proj. Whether
# a family's layers compute exactly this is checked once against the layer itself (``parts_match``).


def _projected(layer, projection: str, norm: str | None, inputs: torch.Tensor) -> torch.Tensor:
    produced = get_module(layer, projection)(inputs)
    return get_module(layer, norm)(produced) if norm is not None else produced


@torch.no_grad()
def residual_after_attention(model, layer, hidden: torch.Tensor, attention_output_input: torch.Tensor):
    family = family_for(model)
    added = _projected(layer, family.head_activation_input, family.attention_output_norm, attention_output_input)
    return hidden.to(added.device) + added


@torch.no_grad()
def mlp_output_input(model, layer, mid: torch.Tensor) -> torch.Tensor:
    """The input of the MLP output projection for the stream ``mid``: the MLP's input norm and its
    projections up to (not through) the output projection."""
    family = family_for(model)
    seen = {}

    def capture(module, args):
        seen["input"] = args[0]
        raise _StopLayer

    mlp = get_module(layer, family.neuron_activation_input.rsplit(".", 1)[0])
    handle = get_module(layer, family.neuron_activation_input).register_forward_pre_hook(capture)
    try:
        mlp(get_module(layer, family.residual_after_attention_reader)(mid))
    except _StopLayer:
        pass
    finally:
        handle.remove()
    return seen["input"]


@torch.no_grad()
def layer_output(model, layer, mid: torch.Tensor, mlp_input: torch.Tensor) -> torch.Tensor:
    family = family_for(model)
    return mid + _projected(layer, family.neuron_activation_input, family.mlp_output_norm, mlp_input)


@torch.no_grad()
def parts_match(model, layer, hidden: torch.Tensor, seen: LayerActivations) -> bool:
    """Whether the parts above reproduce what ``layer`` computed (``seen``, run on ``hidden``), to the
    rounding of its dtype: the same operations in the same order give the same numbers."""
    mid = residual_after_attention(model, layer, hidden, seen.attention_output_input)
    pairs = (
        (mid, seen.mid),
        (mlp_output_input(model, layer, seen.mid), seen.mlp_output_input),
        (layer_output(model, layer, seen.mid, seen.mlp_output_input), seen.output),
    )
    tolerance = max(2 * torch.finfo(seen.output.dtype).eps, 1e-5)
    return all(torch.allclose(a, b, rtol=tolerance, atol=tolerance) for a, b in pairs)
