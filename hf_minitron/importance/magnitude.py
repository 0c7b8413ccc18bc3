"""Weight-magnitude importance: the classic baseline that activation-based importance is compared with.

Each unit is scored by the L2 norms of the weight matrices that touch it, with no data at all:
the family's pruning plan says which axis every weight dimension belongs to, so the same code
serves every family. Minitron compares against this kind of baseline.
"""

from __future__ import annotations

import torch

from ..families import HEADS, HIDDEN, MLP, family_for
from ..layers import decoder_layers
from ..pruning.plan import compile_plan, match_parameter
from ..shapes import config_head_dim
from .scores import ImportanceScores


@torch.no_grad()
def magnitude_importance(model) -> ImportanceScores:
    """Scores with the same shape as ``estimate_importance``'s, from weights alone.

    Counted: the 2-D weights of every decoder layer, and the input embeddings (towards channels).
    A layer's block importance is the L2 norm of all its 2-D weights (layers with the smallest
    weights are the ones ``block_importance`` selection drops). Having seen no activations, these scores
    have no neuron energy: prune MLP neurons with them under ``neuron_selection="activation"``, which
    ranks by ``neurons`` (here the weight norms).
    """
    family = family_for(model)
    config = model.config
    num_layers, head_dim = len(decoder_layers(model)), config_head_dim(config)
    heads = torch.zeros(num_layers, config.num_attention_heads)
    neurons = torch.zeros(num_layers, config.intermediate_size)
    channels = torch.zeros(num_layers, config.hidden_size)
    blocks = torch.zeros(num_layers)
    plan = compile_plan(family)
    for name, param in model.named_parameters():
        axes, layer = match_parameter(plan, name)
        if param.dim() != 2 or (layer is None and name != f"{family.embeddings}.weight"):
            continue
        weight = param.detach().float()
        if layer is not None:
            blocks[layer] += weight.pow(2).sum().cpu()
        for dim, axis in enumerate(axes):
            squares = weight.pow(2).sum(dim=1 - dim).cpu()  # one value per index along this dimension
            if axis == HEADS:
                heads[layer] += squares.view(-1, head_dim).sum(1).sqrt()
            elif axis == MLP:
                neurons[layer] += squares.sqrt()
            elif axis == HIDDEN:
                channels[0 if layer is None else layer] += squares.sqrt()
    return ImportanceScores(
        heads=heads,
        neurons=neurons,
        channels_per_layer=channels,
        block_importance=blocks.sqrt(),
        metadata={"model": getattr(config, "_name_or_path", ""), "data": "none (weight magnitude)"},
    )
