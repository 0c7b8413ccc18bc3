"""Mixture-of-experts pruning: fewer experts per sparse layer, and narrower experts.

Removing an expert removes its router row with it, so the router scores only the survivors and
top-k routing stays valid. Each expert keeps its own best intermediate neurons, which is why the
expert axes are sliced here (one index per expert) rather than by the generic routine (one index
per tensor dimension); the shared axes of the same tensors (hidden) are left to that routine.

A note on ``norm_topk_prob``: the flag is kept as it is. When it is set (and always in Mixtral)
the top-k weights are renormalised, so removing experts a token never picks changes nothing for
that token. When it is not set, the softmax still runs over all experts, so the survivors' weights
grow by the share the removed experts held; that is the model's own semantics applied to fewer experts.
"""

from __future__ import annotations

import torch

from ..families import family_for
from ..importance.scores import ImportanceScores
from ..moe import expert_count, expert_width, is_moe_family, sparse_layers
from .config import PruningConfig


def expert_targets(model, config: PruningConfig) -> tuple[dict[str, int], dict[str, int]]:
    """Source and target expert count and width; empty for a dense model."""
    if not is_moe_family(family_for(model)):
        return {}, {}
    source = {"num_experts": expert_count(model), "moe_intermediate_size": expert_width(model)}
    target = {k: getattr(config, k) if getattr(config, k) is not None else v for k, v in source.items()}
    return source, target


def expert_problems(model, config: PruningConfig, scores: ImportanceScores | None, need_scores: bool) -> list[str]:
    """Everything wrong with the expert targets, as sentences (empty when they are possible)."""
    family = family_for(model)
    asked = [k for k in ("num_experts", "moe_intermediate_size") if getattr(config, k) is not None]
    if not is_moe_family(family):
        return (
            [f"{', '.join(asked)} only apply to mixture-of-experts models; {family.name} has no experts"]
            if asked
            else []
        )
    problems = []
    source, target = expert_targets(model, config)
    if not sparse_layers(model) and asked:
        problems.append(f"{', '.join(asked)} asked for, but no layer of this model routes to experts")
    for key, value in target.items():
        if value > source[key]:
            problems.append(f"{key}={value} is larger than the model's {source[key]} (pruning only removes)")
    top_k = model.config.num_experts_per_tok
    if target["num_experts"] < top_k:
        problems.append(
            f"num_experts={target['num_experts']} is fewer than num_experts_per_tok={top_k}: every token is routed "
            f"to {top_k} experts, so at least {top_k} must stay"
        )
    if family.expert_width_key == "intermediate_size" and config.intermediate_size not in (
        None,
        source["moe_intermediate_size"],
    ):
        problems.append(
            f"{family.name} has no dense MLP: its intermediate_size is each expert's width; "
            f"ask for moe_intermediate_size={config.intermediate_size} instead"
        )
    cut = (
        target["num_experts"] < source["num_experts"]
        or target["moe_intermediate_size"] < source["moe_intermediate_size"]
    )
    if cut and scores is not None and scores.expert_saliency is None:
        problems.append(
            "the importance scores hold no expert importance; recompute them on this model with estimate_importance"
        )
    elif cut and need_scores and scores is None:
        problems.append("importance scores are needed to choose which experts and expert neurons to remove")
    return problems


def choose_experts(model, config: PruningConfig, scores: ImportanceScores | None, keep_layers: list[int]):
    """({original layer: kept experts}, {original layer: kept neurons [kept experts, width]}), either None when
    that axis is kept whole. Indices are in original numbering and sorted, so weights keep their layout."""
    source, target = expert_targets(model, config)
    if not source:
        return None, None
    all_sparse = sparse_layers(model)
    sparse = [i for i in keep_layers if i in all_sparse]
    experts = neurons = None
    if target["num_experts"] < source["num_experts"]:
        ranking = {
            "saliency": scores.expert_saliency,
            "frequency": scores.expert_frequency,
            "mass": scores.expert_saliency * scores.expert_frequency,
        }[config.expert_selection]
        experts = {i: _top_k_sorted(ranking[i], target["num_experts"]) for i in sparse}
    if target["moe_intermediate_size"] < source["moe_intermediate_size"]:
        neurons = {}
        for i in sparse:
            kept = experts[i] if experts is not None else torch.arange(source["num_experts"])
            per_expert = scores.expert_neurons[i][kept]
            neurons[i] = torch.stack([_top_k_sorted(row, target["moe_intermediate_size"]) for row in per_expert])
    return experts, neurons


def _top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    # A stable order for ties (experts nobody routes to all score zero): the lower index wins.
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:k].sort().values


@torch.no_grad()
def slice_experts(model, keep_layers: list[int], experts: dict | None, neurons: dict | None) -> None:
    """Slice the router and expert tensors of every kept sparse layer; layers must already be renumbered."""
    if experts is None and neurons is None:
        return
    for layer, (router, module) in sparse_layers(model).items():
        original = keep_layers[layer]
        if experts is not None:
            kept = experts[original]
            router.weight = _replace(router.weight, router.weight.index_select(0, kept.to(router.weight.device)))
            for name in ("gate_up_proj", "down_proj"):
                old = getattr(module, name)
                setattr(module, name, _replace(old, old.index_select(0, kept.to(old.device))))
        if neurons is not None:
            index = neurons[original].to(module.down_proj.device)  # [experts, width]
            width = module.down_proj.shape[-1]
            # gate_up_proj stacks the gate rows over the up rows: keep neuron n in both halves.
            rows = torch.cat([index, index + width], dim=1)
            gate_up = module.gate_up_proj
            gathered = gate_up.gather(1, rows.unsqueeze(-1).expand(-1, -1, gate_up.shape[-1]))
            module.gate_up_proj = _replace(gate_up, gathered)
            down = module.down_proj
            module.down_proj = _replace(down, down.gather(2, index.unsqueeze(1).expand(-1, down.shape[1], -1)))


def _replace(old: torch.nn.Parameter, new: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)


def refresh_expert_sizes(model) -> None:
    """The router and experts modules cache their sizes; make them agree with the (sliced) weights."""
    for router, experts in sparse_layers(model).values():
        router.num_experts, router.hidden_dim = router.weight.shape
        experts.num_experts, experts.hidden_dim, experts.intermediate_dim = experts.down_proj.shape
        # The *ForCausalLM root keeps its own copy for the load-balancing loss.
        if isinstance(getattr(model, "num_experts", None), int):
            model.num_experts = router.num_experts
    # A shared expert is an MLP of its own width, which refresh_cached_sizes set to the dense MLP's.
    for module in model.modules():
        down_proj = getattr(module, "down_proj", None)
        if isinstance(down_proj, torch.nn.Linear) and isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = down_proj.in_features


def update_expert_config(model, targets: dict[str, int], keep_layers: list[int], dense_layers: list[int]) -> None:
    """Write the expert count and width to the config, and keep dense layers dense after a depth cut.

    Qwen3-MoE decides which layers are dense from their index (``mlp_only_layers``, ``decoder_sparse_step``);
    once layers are renumbered those rules would pick other layers, so the dense ones are listed explicitly.
    """
    family = family_for(model)
    if not is_moe_family(family):
        return
    config = model.config
    setattr(config, family.expert_count_key, targets["num_experts"])
    setattr(config, family.expert_width_key, targets["moe_intermediate_size"])
    if hasattr(config, "mlp_only_layers") and keep_layers != list(range(len(keep_layers))):
        config.mlp_only_layers = [new for new, original in enumerate(keep_layers) if original in dense_layers]
        config.decoder_sparse_step = 1


def dense_layer_indices(model) -> list[int]:
    """Original indices of the layers of a mixture-of-experts model that have a dense MLP."""
    sparse = sparse_layers(model)
    return [i for i in range(model.config.num_hidden_layers) if i not in sparse]
