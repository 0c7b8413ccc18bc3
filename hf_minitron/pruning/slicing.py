"""One generic routine that slices every weight of a model along the axes its family's plan names."""

from __future__ import annotations

import torch

from ..families import HEADS, HIDDEN, KV_HEADS, family_for, set_module
from .plan import PruningPlan, compile_plan, match_parameter

# Integer attributes modules cache from the config; they must follow the new sizes.
_CACHED_SIZES = ("hidden_size", "intermediate_size", "num_heads", "num_key_value_heads", "num_key_value_groups")


def _rows_of_heads(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Head indices → the weight rows they own (head h owns rows h·head_dim … h·head_dim + head_dim − 1)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _indices(plan: PruningPlan, axis: str, original_layer: int | None, head_dim: int) -> torch.Tensor | None:
    keep = plan.keep(axis)
    if keep is None:
        return None
    if axis != HIDDEN:
        keep = keep[original_layer]
    return _rows_of_heads(keep, head_dim) if axis in (HEADS, KV_HEADS) else keep


@torch.no_grad()
def merge_pruned_heads(model, plan: PruningPlan, head_dim: int) -> None:
    """Minitron's head residual merge, before slicing: kept ← 2·kept − pruned partner, per query-head slice."""
    if not plan.head_merges:
        return
    patterns = compile_plan(family_for(model))
    for name, param in model.named_parameters():
        axes, layer = match_parameter(patterns, name)
        for dim, axis in enumerate(axes):
            if axis != HEADS or layer not in plan.head_merges:
                continue
            for kept, pruned in plan.head_merges[layer]:
                kept_rows = param.narrow(dim, kept * head_dim, head_dim)
                pruned_rows = param.narrow(dim, pruned * head_dim, head_dim)
                kept_rows.mul_(2).sub_(pruned_rows)


@torch.no_grad()
def slice_parameters(model, plan: PruningPlan, head_dim: int) -> None:
    """Replace each parameter by the slice the plan keeps; layers must already be renumbered.

    Each new tensor is made and the old one released before the next, so peak memory
    stays near the model plus one tensor. Tied parameters stay one shared tensor.
    """
    patterns = compile_plan(family_for(model))
    sharing: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        sharing.setdefault(id(param), []).append(name)
    for names in list(sharing.values()):
        name = names[0]
        param = model.get_parameter(name)
        axes, layer = match_parameter(patterns, name)
        original_layer = plan.keep_layers[layer] if layer is not None else None
        new = param.data
        for dim, axis in enumerate(axes):
            index = _indices(plan, axis, original_layer, head_dim) if axis else None
            if index is not None:
                new = new.index_select(dim, index.to(new.device))
        if new is param.data:
            continue
        replacement = torch.nn.Parameter(new.contiguous(), requires_grad=param.requires_grad)
        del param
        for alias in names:
            set_module(model, alias, replacement)


def refresh_cached_sizes(model, targets: dict[str, int]) -> None:
    """Make Linear/Embedding metadata and cached size attributes agree with the sliced weights."""
    values = {
        "hidden_size": targets["hidden_size"],
        "intermediate_size": targets["intermediate_size"],
        "num_heads": targets["num_attention_heads"],
        "num_key_value_heads": targets["num_key_value_heads"],
        "num_key_value_groups": targets["num_attention_heads"] // targets["num_key_value_heads"],
    }
    family = family_for(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, torch.nn.Embedding):
            module.embedding_dim = module.weight.shape[1]
        # Only the decoder's own modules: a cached "hidden_size" elsewhere may mean something else.
        if not name.startswith(family.decoder):
            continue
        for attribute in _CACHED_SIZES:
            current = getattr(module, attribute, None)
            if isinstance(current, int) and not isinstance(current, bool):
                setattr(module, attribute, values[attribute])
