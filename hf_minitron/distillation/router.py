"""The router load-balancing loss of a mixture-of-experts student during distillation.

Distillation computes its own loss from hidden states, so the auxiliary loss transformers adds in
``model(labels=...)`` would be lost. The switch is TRL's: ``router_aux_loss_coef`` of the training
config (``DistillationConfig`` is an ``SFTConfig``) — left at None it takes the architecture's own
coefficient from the model config, 0.0 turns the loss off — and SFTTrainer writes the choice into
the student's config (``output_router_logits``, ``router_aux_loss_coef``), which is what is read here.
So by default a pruned student keeps the balance term its family was trained with: pruning leaves
fewer experts, and distillation alone can let a few of them take most of the tokens.
"""

from __future__ import annotations

import torch

from ..moe import expert_count


def wants_router_loss(model) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "output_router_logits", False)) and expert_count(config) is not None


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Switch-Transformer balance loss over all sparse layers: num_experts × Σ_e f_e · P_e.

    f_e is the share of (real) tokens that have expert e among their top-k, P_e the mean router
    probability of e; both are taken over every layer's tokens together, as transformers does.
    It is smallest when tokens spread evenly over the experts.
    """
    device = router_logits[0].device
    logits = torch.cat([layer.to(device) for layer in router_logits])  # [layers * tokens, experts]
    probs = torch.softmax(logits.float(), dim=-1)
    chosen = torch.topk(probs, top_k, dim=-1).indices
    routed = torch.zeros_like(probs).scatter_(1, chosen, 1.0)
    if attention_mask is None:
        weights = torch.ones(probs.shape[0], device=device)
    else:
        weights = attention_mask.reshape(-1).to(device=device, dtype=probs.dtype).repeat(len(router_logits))
    total = weights.sum().clamp_min(1)
    share_routed = (routed * weights[:, None]).sum(0) / total
    mean_probability = (probs * weights[:, None]).sum(0) / total
    return num_experts * (share_routed * mean_probability).sum()


def router_loss(model, base_outputs, attention_mask) -> torch.Tensor:
    """``router_aux_loss_coef`` × the balance loss of one forward of the student's decoder."""
    config = model.config
    balance = load_balancing_loss(
        base_outputs.router_logits, expert_count(config), config.num_experts_per_tok, attention_mask
    )
    return config.router_aux_loss_coef * balance
