"""Weight-magnitude importance: the classic baseline that activation-based importance is compared with.

Each unit is scored by the L2 norms of the weights that touch it, with no data at all. Minitron
compares against this kind of baseline; use it to check that activations choose better.
"""

from __future__ import annotations

import torch

from ..families import get_module
from ..layers import decoder_layers
from ..shapes import config_head_dim
from .scores import ImportanceScores


@torch.no_grad()
def magnitude_importance(model) -> ImportanceScores:
    """Scores with the same shape as ``estimate_importance``'s, from weights alone (block importance: zeros)."""
    head_dim = config_head_dim(model.config)
    heads, neurons, channels = [], [], []
    for layer in decoder_layers(model):
        attention, mlp = get_module(layer, "self_attn"), get_module(layer, "mlp")
        q = attention.q_proj.weight.float().unflatten(0, (-1, head_dim)).norm(dim=(1, 2))
        o = attention.o_proj.weight.float().unflatten(1, (-1, head_dim)).norm(dim=(0, 2))
        heads.append(q + o)
        neurons.append(
            mlp.gate_proj.weight.float().norm(dim=1)
            + mlp.up_proj.weight.float().norm(dim=1)
            + mlp.down_proj.weight.float().norm(dim=0)
        )
        reads = [attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj]
        writes = [attention.o_proj, mlp.down_proj]
        channels.append(
            sum(m.weight.float().norm(dim=0) for m in reads) + sum(m.weight.float().norm(dim=1) for m in writes)
        )
    channels_per_layer = torch.stack(channels)
    channels_per_layer[0] += model.get_input_embeddings().weight.float().norm(dim=0)
    return ImportanceScores(
        heads=torch.stack(heads).cpu(),
        neurons=torch.stack(neurons).cpu(),
        channels_per_layer=channels_per_layer.cpu(),
        block_importance=torch.zeros(len(heads)),
        metadata={"model": getattr(model.config, "_name_or_path", ""), "data": "none (weight magnitude)"},
    )
