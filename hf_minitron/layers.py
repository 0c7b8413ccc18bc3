"""The decoder-layer list: dropping layers for good, or skipping them for a measurement."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .families import family_for, get_module, set_module


def decoder_layers(model) -> torch.nn.ModuleList:
    return get_module(model, family_for(model).layers)


def _number_layers(model, numbers: list[int]) -> None:
    # layer_idx addresses the KV cache: the running layers must be numbered 0..n-1.
    for number, layer in zip(numbers, decoder_layers(model), strict=True):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = number


def _install_layers(model, keep: list[int]) -> dict:
    """Make the model run only layers ``keep`` (original indices, in order); return what to restore."""
    family = family_for(model)
    config = model.config
    layers = decoder_layers(model)
    saved = {"layers": layers, "num_hidden_layers": config.num_hidden_layers}
    set_module(model, family.layers, torch.nn.ModuleList([layers[i] for i in keep]))
    config.num_hidden_layers = len(keep)
    # Per-layer config lists (e.g. Qwen2's layer_types, read by index in forward) follow the layers.
    for name in family.per_layer_config_lists:
        values = getattr(config, name, None)
        if isinstance(values, list) and len(values) == len(layers):
            saved[name] = values
            setattr(config, name, [values[i] for i in keep])
    _number_layers(model, list(range(len(keep))))
    return saved


def keep_only_layers(model, keep: list[int]) -> None:
    """Drop every layer not in ``keep`` and renumber the rest; the config follows."""
    _install_layers(model, sorted(keep))


@contextmanager
def skipped_layers(model, skip: list[int] | range):
    """Run the model as if layers ``skip`` were removed, without copying any weight.

    Used for loss and accuracy measurements of every candidate block.
    """
    skip = set(skip)
    num_layers = len(decoder_layers(model))
    keep = [i for i in range(num_layers) if i not in skip]
    saved = _install_layers(model, keep)
    try:
        yield model
    finally:
        set_module(model, family_for(model).layers, saved.pop("layers"))
        _number_layers(model, list(range(num_layers)))
        for name, value in saved.items():
            setattr(model.config, name, value)
