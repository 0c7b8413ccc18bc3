"""Keep a width-scaled embedding (Gemma: output × sqrt(hidden_size)) meaning the same after pruning.

transformers recomputes Gemma's embedding multiplier from ``config.hidden_size`` whenever the model
is built, so once the width shrinks from D to d a reloaded model would multiply by sqrt(d), not the
sqrt(D) the kept channels were trained with. The difference, sqrt(D / d), is folded into the weights:

- the embedding matrix is multiplied by sqrt(D / d), so (weight · sqrt(D/d)) · sqrt(d) equals the
  original weight · sqrt(D) on every kept channel;
- when the LM head is the same (tied) matrix, its logits would grow by the same factor; the final
  norm's gain is divided by it, which cancels exactly because that norm feeds the head alone.

Nothing new enters the config, so the pruned folder stays a plain transformers checkpoint.
"""

from __future__ import annotations

import math

import torch

from ..families import family_for, get_module, scale_norm_gain_


@torch.no_grad()
def fold_embedding_scale(model, old_width: int, new_width: int) -> None:
    """After slicing ``model`` from ``old_width`` to ``new_width`` channels, fold the change of scale."""
    family = family_for(model)
    if not family.embeddings_scaled_by_width or old_width == new_width:
        return
    embeddings = get_module(model, family.embeddings)
    factor = math.sqrt(old_width / new_width)
    embeddings.weight.mul_(factor)
    if get_module(model, family.lm_head).weight is embeddings.weight:
        scale_norm_gain_(get_module(model, family.final_norm), 1.0 / factor, family)
    # The in-memory module must compute what a reload will: the multiplier of the new width.
    new_scale = new_width**0.5
    if hasattr(embeddings, "scalar_embed_scale"):
        embeddings.scalar_embed_scale = new_scale
    if isinstance(getattr(embeddings, "embed_scale", None), torch.Tensor):
        embeddings.embed_scale.fill_(new_scale)
