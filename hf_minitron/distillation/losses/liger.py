"""Liger-Kernel's fused linear JSD loss as a logit-loss backend (``pip install 'hf_minitron[liger]'``).

``LigerFusedLinearJSDLoss`` computes LM heads and divergence per chunk like the project's own
chunk, with its logits and LM-head gradient in the model's dtype. Its generalised JSD uses the same
mixture as ours (m = β·p + (1−β)·q, loss β·KL(p‖m) + (1−β)·KL(q‖m)), and β = 0 / β = 1 are forward /
reverse KL exactly. It averages over the tokens it is given, so the sum the rest of the library
uses (uniform weight w per token) is its mean times w·n. Its cross-entropy is on untempered logits,
as ours. What it cannot serve, the dispatcher routes to the project's chunk: cached top-k
teachers, per-token weights that differ, kl_weight = 0, and forward-only (evaluation) calls.
"""

from __future__ import annotations

import importlib.util

import torch

from .divergence import LogitLossSettings
from .matmul import autocast_off, compute_dtype


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_beta(settings: LogitLossSettings) -> float:
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(settings.divergence, settings.beta)


def liger_logit_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    token_weights: torch.Tensor,
    targets: torch.Tensor,
    settings: LogitLossSettings,
    chunk_size: int,
    stats: dict,
) -> torch.Tensor:
    """Σ_tokens weight · loss through Liger, for uniform token weights (``token_weights`` an expanded scalar)."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    s = settings
    loss_fn = LigerFusedLinearJSDLoss(
        weight_hard_loss=s.ce_weight,
        weight_soft_loss=s.kl_weight,
        beta=liger_beta(s),
        temperature=s.temperature,
        compiled=student_hidden.is_cuda,  # its per-chunk torch.compile needs Triton
        chunk_size=chunk_size,
        return_soft_hard_loss=s.needs_ce,
    )
    dtype = compute_dtype(student_weight)
    with autocast_off(student_hidden.device):
        args = (
            student_hidden.to(dtype),
            student_weight.to(dtype),
            teacher_hidden.detach().to(dtype),
            teacher_weight.detach().to(dtype),
            targets,
        )
        out = loss_fn(*args)
    scale = token_weights[0].float() * student_hidden.shape[0]  # Liger's mean → the weighted sum
    if s.needs_ce:
        total, soft, hard = out
        stats["ce"] += (hard.detach() * scale).float()
    else:
        total, soft = out, out.detach() / s.kl_weight
    stats["kl"] += (soft.detach() * scale).float()
    return total.float() * scale
