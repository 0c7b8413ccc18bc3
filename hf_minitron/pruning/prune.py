"""prune_model: structured width and depth pruning, in place, to a plain transformers model."""

from __future__ import annotations

import torch

from ..importance.scores import ImportanceScores
from ..layers import keep_only_layers
from ..loading import describe_source
from ..model_folder import RECORD_KEY  # what was pruned, from what (saved beside config.json)
from ..shapes import model_shape
from .config import PruningConfig
from .embedding_scale import fold_embedding_scale
from .experts import dense_layer_indices, refresh_expert_sizes, slice_experts, update_expert_config
from .plan import build_plan
from .slicing import merge_pruned_heads, refresh_cached_sizes, slice_parameters


def prune_model(model, config: PruningConfig, scores: ImportanceScores | None = None):
    """Prune ``model`` in place to the shape ``config`` asks for, and return it.

    Everything is validated first (the model is untouched when anything is wrong).
    Then: optional head residual merge → drop layers → slice every tensor on a pruned
    axis → rewrite the config (explicit head_dim, layer count, per-layer lists) and
    record what was done under ``config.minitron_pruning`` (``save_pruned_model`` writes it to
    ``minitron_pruning.json``, so config.json keeps only standard fields). The result is an ordinary
    transformers model: ``save_pretrained`` + ``AutoModelForCausalLM.from_pretrained`` reproduce its
    logits exactly.
    """
    plan = build_plan(model, config, scores)
    before = model_shape(model)
    head_dim = plan.targets["head_dim"]
    dropped = [i for i in range(before.num_hidden_layers) if i not in plan.keep_layers]
    dense_layers = dense_layer_indices(model)
    with torch.no_grad():
        merge_pruned_heads(model, plan, head_dim)
        keep_only_layers(model, plan.keep_layers)
        slice_experts(model, plan.keep_layers, plan.experts, plan.expert_neurons)
        slice_parameters(model, plan, head_dim)
        fold_embedding_scale(model, before.hidden_size, plan.targets["hidden_size"])
    refresh_cached_sizes(model, plan.targets)
    refresh_expert_sizes(model)
    cfg = model.config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        setattr(cfg, key, plan.targets[key])
    update_expert_config(
        model, plan.targets, plan.keep_layers, dense_layers
    )  # after: Mixtral's width is intermediate_size
    cfg.head_dim = head_dim  # hidden may shrink while heads keep their width: say so explicitly
    if dropped:
        _forget_stale_layer_pattern(cfg)
    after = model_shape(model)
    previous = getattr(cfg, RECORD_KEY, None)
    setattr(
        cfg,
        RECORD_KEY,
        {
            "source_model": describe_source(getattr(cfg, "_name_or_path", "") or ""),
            "source_shape": before.to_dict(),
            "pruned_shape": after.to_dict(),
            "dropped_layers": dropped,
            "layer_selection": config.layer_selection if dropped else None,
            "head_residual_merge": bool(plan.head_merges),
            # Which teacher channel each student channel is: lets distillation start its projection exactly.
            "kept_hidden_channels": plan.hidden.tolist() if plan.hidden is not None else None,
            # Original layer → the experts it kept (original numbering), for mixture-of-experts models.
            "kept_experts": {str(i): kept.tolist() for i, kept in plan.experts.items()} if plan.experts else None,
            "expert_selection": config.expert_selection if plan.experts else None,
            "importance": {
                k: scores.metadata.get(k)
                for k in ("data", "batch_aggregation", "seq_aggregation", "num_samples", "seq_len")
            }
            if scores
            else None,
            # A chain (15B → 8B → 4B) keeps the earlier steps.
            "previous": previous,
        },
    )
    return model


def _forget_stale_layer_pattern(cfg) -> None:
    """Drop Gemma's ``sliding_window_pattern`` ("every n-th layer is full") once it no longer describes
    ``layer_types``: transformers reads the list, but a tool that rebuilt the list from the pattern would
    give the kept layers the wrong attention."""
    # transformers keeps the pattern under both names and saves whichever it has.
    pattern = getattr(cfg, "sliding_window_pattern", getattr(cfg, "_sliding_window_pattern", None))
    types = getattr(cfg, "layer_types", None)
    if not isinstance(pattern, int) or not isinstance(types, list):
        return
    rebuilt = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(len(types))]
    if rebuilt != types:
        for key in ("sliding_window_pattern", "_sliding_window_pattern"):
            if key in cfg.__dict__:
                delattr(cfg, key)
