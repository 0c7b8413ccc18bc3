"""Turn a PruningConfig and importance scores into exactly what to keep — checked before any weight moves."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import MinitronError
from ..families import HEADS, HIDDEN, KV_HEADS, MLP, ModelFamily, family_for, find_module
from ..importance.depth import tied_blocks
from ..importance.scores import ImportanceScores
from ..layers import decoder_layers
from ..shapes import config_head_dim
from .config import PruningConfig
from .experts import choose_experts, expert_problems, expert_targets


def compile_plan(family: ModelFamily) -> list[tuple[re.Pattern, tuple]]:
    """Parameter-name patterns as regexes; ``*`` captures the layer index."""
    return [
        (re.compile("^" + re.escape(pattern).replace(r"\*", r"(\d+)") + "$"), axes)
        for pattern, axes in family.pruning_plan.items()
    ]


def match_parameter(plan, name: str) -> tuple[tuple, int | None] | None:
    for regex, axes in plan:
        found = regex.match(name)
        if found:
            return axes, int(found.group(1)) if found.groups() else None
    return None


@dataclass
class PruningPlan:
    """What survives, in original indices. ``None`` for an axis means it is kept whole."""

    keep_layers: list[int]
    hidden: torch.Tensor | None = None
    heads: dict[int, torch.Tensor] | None = None  # original layer → kept query heads
    kv_heads: dict[int, torch.Tensor] | None = None  # original layer → kept KV heads
    neurons: dict[int, torch.Tensor] | None = None  # original layer → kept MLP neurons
    targets: dict[str, int] = field(default_factory=dict)
    # original layer → (kept head, pruned head it absorbs) pairs for the residual merge
    head_merges: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # Mixture of experts: original layer → kept experts, and → kept neurons of each kept expert
    # [kept experts, width]. Sliced by pruning.experts, one index per expert.
    experts: dict[int, torch.Tensor] | None = None
    expert_neurons: dict[int, torch.Tensor] | None = None

    def keep(self, axis: str):
        """Indices the generic slicing routine applies; the expert axes (None here) are sliced elsewhere."""
        return {HIDDEN: self.hidden, HEADS: self.heads, KV_HEADS: self.kv_heads, MLP: self.neurons}.get(axis)


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order (so weights keep their layout)."""
    return torch.topk(scores.float(), k).indices.sort().values


def _check_parameters(model, family: ModelFamily) -> None:
    offloaded = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if offloaded:
        raise MinitronError(
            f"{len(offloaded)} weights are offloaded (on the meta device), e.g. {offloaded[0]}",
            "pruning slices real tensors; offloaded weights live on disk behind accelerate's hooks",
            "load the model without disk offload for pruning (CPU memory is enough: pruning needs about "
            "the model plus one tensor); importance estimation itself works with offloading",
        )
    plan = compile_plan(family)
    unknown = [name for name, _ in model.named_parameters() if match_parameter(plan, name) is None]
    if unknown:
        raise MinitronError(
            f"The model has parameters hf_minitron does not know how to prune: {', '.join(unknown[:5])}",
            f"the {family.name} pruning plan does not cover them, and leaving them unsliced would break the model",
            "add patterns for them to the family's pruning plan in hf_minitron/families.py",
        )


def _targets(model, config: PruningConfig) -> tuple[dict[str, int], dict[str, int]]:
    c = model.config
    source = {
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
    }
    target = {k: getattr(config, k) if getattr(config, k) is not None else v for k, v in source.items()}
    if config.layers_to_drop is not None and config.num_hidden_layers is None:
        target["num_hidden_layers"] = source["num_hidden_layers"] - len(config.layers_to_drop)
    return source, target


def _validate(source, target, config: PruningConfig, scores: ImportanceScores | None, need_scores: bool) -> list[str]:
    problems = []
    for key, value in target.items():
        if value > source[key]:
            problems.append(f"{key}={value} is larger than the model's {source[key]} (pruning only removes)")
    h, kv = target["num_attention_heads"], target["num_key_value_heads"]
    if h % kv:
        problems.append(f"num_attention_heads={h} is not a multiple of num_key_value_heads={kv}")
    elif h // kv > source["num_attention_heads"] // source["num_key_value_heads"]:
        problems.append(
            f"{h} query heads over {kv} KV heads means {h // kv} per group, more than the model's "
            f"{source['num_attention_heads'] // source['num_key_value_heads']}: heads are removed inside groups, "
            "never added"
        )
    if target["hidden_size"] % h and target["hidden_size"] <= source["hidden_size"]:
        problems.append(
            f"hidden_size={target['hidden_size']} is not a multiple of num_attention_heads={h} "
            f"(transformers requires it; try {target['hidden_size'] - target['hidden_size'] % h})"
        )
    num_layers = source["num_hidden_layers"]
    drop = config.layers_to_drop
    if drop is not None:
        outside = [i for i in drop if not 0 <= i < num_layers]
        if outside:
            problems.append(f"layers_to_drop {outside} are outside 0..{num_layers - 1}")
        if len(set(drop)) != len(drop):
            problems.append(f"layers_to_drop {drop} repeats a layer")
        if not outside and len(set(drop)) >= num_layers:
            problems.append(f"layers_to_drop removes all {num_layers} layers: at least one must stay")
        if num_layers - len(set(drop)) != target["num_hidden_layers"]:
            problems.append(
                f"dropping {len(set(drop))} of {num_layers} layers leaves {num_layers - len(set(drop))}, "
                f"not num_hidden_layers={target['num_hidden_layers']}"
            )
    needs = {
        "lm_loss": ("block_lm_loss", "block_lm_loss_sizes", "--block-sizes"),
        "downstream": ("block_accuracy", "block_accuracy_sizes", "--accuracy-block-sizes"),
    }
    if target["num_hidden_layers"] < num_layers and config.layer_selection in needs:
        k = num_layers - target["num_hidden_layers"]
        field_name, argument, flag = needs[config.layer_selection]
        if scores is not None and k not in getattr(scores, field_name):
            have = sorted(getattr(scores, field_name)) or "none"
            problems.append(
                f"layer_selection '{config.layer_selection}' needs {field_name} for blocks of {k} layers (the "
                f"scores have {have}); estimate importance with {argument}=[{k}] ({flag} {k})"
            )
        elif scores is not None and field_name == "block_lm_loss" and scores.block_lm_loss[k].isnan().any():
            problems.append(
                f"layer_selection 'lm_loss' needs the LM loss of every block of {k} layers, and these scores hold "
                "it only for the blocks tied in task accuracy (measured for the 'downstream' selection); estimate "
                f"importance with block_lm_loss_sizes=[{k}] ({flag} {k})"
            )
    if (
        target["intermediate_size"] < source["intermediate_size"]
        and config.neuron_selection == "energy"
        and scores is not None
        and scores.neuron_energy is None
    ):
        problems.append(
            "neuron_selection 'energy' needs the neurons' mean squared activations, which these scores lack "
            "(weight-magnitude scores, or scores saved by an earlier version); recompute them with "
            "estimate_importance, or choose neuron_selection 'activation'"
        )
    width_cut = any(
        target[k] < source[k]
        for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    )
    depth_by_scores = target["num_hidden_layers"] < num_layers and config.layer_selection != "explicit"
    if need_scores and scores is None and (width_cut or depth_by_scores):
        problems.append("importance scores are needed to choose what to remove; pass the result of estimate_importance")
    return problems


def _choose_heads(scores: torch.Tensor, source_kv: int, target_heads: int, target_kv: int):
    """GQA-aware: keep the best KV groups, then the same number of best query heads in each."""
    per_group = scores.shape[0] // source_kv
    grouped = scores.view(source_kv, per_group)
    groups = top_k_sorted(grouped.sum(1), target_kv) if target_kv < source_kv else torch.arange(source_kv)
    keep_per_group = target_heads // target_kv
    heads, merges = [], []
    for g in groups.tolist():
        order = torch.argsort(grouped[g], descending=True)  # best first: order[0] is head_1 of the paper
        kept = order[:keep_per_group].sort().values
        heads.append(kept + g * per_group)
        # Minitron's residual merge pairs head_i (1-based, i in [2K−L+1, K]) with pruned head_{2K−i+1}.
        big_l, k = per_group, keep_per_group
        for i in range(max(1, 2 * k - big_l + 1), k + 1):
            merges.append((int(order[i - 1]) + g * per_group, int(order[2 * k - i]) + g * per_group))
    return torch.cat(heads), groups, merges


def neuron_ranking(model, config: PruningConfig, scores: ImportanceScores) -> torch.Tensor:
    """[layers, MLP size]: the score whose top ``intermediate_size`` neurons each layer keeps."""
    if config.neuron_selection == "activation":
        return scores.neurons
    name = family_for(model).neuron_activation_input
    rows = []
    for index, layer in enumerate(decoder_layers(model)):
        down_proj = find_module(layer, name)  # None in a sparse (mixture-of-experts) layer: nothing to rank
        if down_proj is None:
            rows.append(torch.zeros_like(scores.neuron_energy[index]))
            continue
        column_squares = down_proj.weight.detach().float().pow(2).sum(0).cpu()
        rows.append(scores.neuron_energy[index].float() * column_squares)
    return torch.stack(rows)


def _choose_layers(config: PruningConfig, scores, num_layers: int, target_layers: int) -> list[int]:
    k = num_layers - target_layers
    if k == 0:
        return list(range(num_layers))
    if config.layer_selection == "explicit":
        drop = set(config.layers_to_drop)
    elif config.layer_selection == "lm_loss":
        start = int(torch.argmin(scores.block_lm_loss[k]))
        drop = set(range(start, start + k))
    elif config.layer_selection == "downstream":
        start = _block_by_accuracy(scores, k)
        drop = set(range(start, start + k))
    else:
        drop = set(torch.topk(scores.block_importance.float(), k, largest=False).indices.tolist())
    return [i for i in range(num_layers) if i not in drop]


def _block_by_accuracy(scores, k: int) -> int:
    """The first layer of the block of ``k`` to drop by task accuracy.

    Blocks whose accuracy is within one standard error of the best one count as tied (the
    one-standard-error rule, ``tied_blocks``), and LM loss, measured on every calibration token, then
    picks the block whose removal hurts it least. Without LM loss only exact ties are broken that way.
    On SmolLM2-135M and the built-in facts task (59 rows, the teacher 54 right) removing layers 14-17
    keeps all 54, 15-18 and 16-19 keep 52 (tied with it: one standard error is 2.1 rows), and 4-7, the
    block of least LM loss, 50."""
    accuracy = scores.block_accuracy[k]
    tied = torch.tensor(tied_blocks(accuracy, scores.metadata.get("downstream_rows")))
    if k in scores.block_lm_loss and len(tied) > 1:
        losses = scores.block_lm_loss[k][tied]
        if not losses.isnan().any():
            return int(tied[torch.argmin(losses)])
    return int(torch.nonzero(accuracy == accuracy.max()).flatten()[0])


def needed_block_measurement(source_layers: int, config: PruningConfig) -> tuple[str, int] | None:
    """Which block-removal measurement the layer selection reads, and for which block size.

    ("block_lm_loss_sizes", k) for ``lm_loss``, ("block_accuracy_sizes", k) for ``downstream``
    (both keywords of ``estimate_importance``), or None when depth is kept or chosen otherwise.
    """
    target = config.num_hidden_layers
    if target is None and config.layers_to_drop is not None:
        target = source_layers - len(config.layers_to_drop)
    block = source_layers - target if target is not None else 0
    argument = {"lm_loss": "block_lm_loss_sizes", "downstream": "block_accuracy_sizes"}.get(config.layer_selection)
    return (argument, block) if argument and block > 0 else None


def _block_sizes(source_layers: int, configs, arguments: tuple[str, ...]) -> list[int]:
    needed = (needed_block_measurement(source_layers, config) for config in configs)
    return sorted({k for kind, k in filter(None, needed) if kind in arguments})


def block_lm_loss_sizes(source_layers: int, configs) -> list[int]:
    """The block sizes whose LM-loss sweep the ``lm_loss`` selections among ``configs`` read
    (``estimate_importance(block_lm_loss_sizes=...)``). The ``downstream`` ones need the LM loss only of
    the blocks tied in accuracy, which the accuracy sweep measures itself."""
    return _block_sizes(source_layers, configs, ("block_lm_loss_sizes",))


def block_accuracy_sizes(source_layers: int, configs) -> list[int]:
    """The block sizes whose task-accuracy sweep the ``downstream`` selections among ``configs`` read
    (``estimate_importance(block_accuracy_sizes=...)``)."""
    return _block_sizes(source_layers, configs, ("block_accuracy_sizes",))


def check_pruning_config(
    model, config: PruningConfig, scores: ImportanceScores | None = None, need_scores: bool = False
) -> tuple[dict, dict]:
    """Every check that needs only the model (and scores, if given): call it before long work.

    Returns the source and target sizes.
    """
    family = family_for(model)
    _check_parameters(model, family)
    if scores is not None:
        scores.check_matches(model)
    source, target = _targets(model, config)
    problems = _validate(source, target, config, scores, need_scores)
    problems += expert_problems(model, config, scores, need_scores)
    expert_source, expert_target = expert_targets(model, config)
    source, target = {**source, **expert_source}, {**target, **expert_target}
    if problems:
        raise MinitronError(
            "Cannot prune to these targets: " + "; ".join(problems),
            fix="adjust the PruningConfig (the model is unchanged)",
        )
    return source, target


def build_plan(model, config: PruningConfig, scores: ImportanceScores | None) -> PruningPlan:
    """Validate everything against the model and decide what to keep. Touches no weight."""
    source, target = check_pruning_config(model, config, scores, need_scores=True)
    keep_layers = _choose_layers(config, scores, source["num_hidden_layers"], target["num_hidden_layers"])
    plan = PruningPlan(keep_layers=keep_layers, targets={**target, "head_dim": config_head_dim(model.config)})
    if target["hidden_size"] < source["hidden_size"]:
        plan.hidden = top_k_sorted(scores.channels, target["hidden_size"])
    if target["intermediate_size"] < source["intermediate_size"]:
        ranking = neuron_ranking(model, config, scores)
        plan.neurons = {i: top_k_sorted(ranking[i], target["intermediate_size"]) for i in keep_layers}
    if (target["num_attention_heads"], target["num_key_value_heads"]) != (
        source["num_attention_heads"],
        source["num_key_value_heads"],
    ):
        plan.heads, plan.kv_heads = {}, {}
        for i in keep_layers:
            heads, groups, merges = _choose_heads(
                scores.heads[i],
                source["num_key_value_heads"],
                target["num_attention_heads"],
                target["num_key_value_heads"],
            )
            plan.heads[i], plan.kv_heads[i] = heads, groups
            if config.head_residual_merge:
                plan.head_merges[i] = merges
        if target["num_key_value_heads"] == source["num_key_value_heads"]:
            plan.kv_heads = None
    plan.experts, plan.expert_neurons = choose_experts(model, config, scores, keep_layers)
    return plan
