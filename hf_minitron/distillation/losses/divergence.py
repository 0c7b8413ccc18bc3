"""Divergences between teacher and student token distributions, with their gradients in closed form.

Closed-form gradients with respect to the student's tempered logits z (q = softmax(z),
p = teacher probabilities, m = β·p + (1−β)·q):
- forward KL(p‖q):  q − p
- reverse KL(q‖p):  q ⊙ (g − E_q[g]),  g = log q − log p
- generalised JSD_β = β·KL(p‖m) + (1−β)·KL(q‖m):  q ⊙ (g − E_q[g]),  g = (1−β)·log(q/m)
With temperature τ the logits are divided by τ, which scales the gradient by 1/τ.

Two implementations of the same formulas: ``divergence_and_grad`` works in place on fp32 buffers
(the eager chunk: about three [n, V] buffers alive at once), ``chunk_terms`` is written without
in-place operations so that ``torch.compile`` fuses it into a few passes over the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass(frozen=True)
class LogitLossSettings:
    """What the logit loss computes: Σ_tokens weight · [kl_weight · divergence + ce_weight · cross-entropy]."""

    temperature: float = 1.0
    divergence: str = "forward_kl"
    beta: float = 0.5
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    track_ce: bool = False  # compute the cross-entropy for logging even when its weight is 0

    @property
    def needs_ce(self) -> bool:
        return bool(self.ce_weight or self.track_ce)


def divergence_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str,
    beta: float = 0.5,
    with_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token divergence [n] and its gradient w.r.t. the (already tempered) student logits [n, V], in fp32.

    Works in place on fp32 copies, so about three [n, V] buffers are alive at once: at a 128k
    vocabulary each one is half a gigabyte per thousand tokens. ``with_grad=False`` skips the gradient.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    if divergence == "forward_kl":
        p = log_p.exp()
        loss = torch.linalg.vecdot(p, log_p.sub_(log_q))  # Σ p (log p − log q), no [n, V] temporary
        return loss, (log_q.exp_().sub_(p) if with_grad else None)  # q − p
    if divergence == "reverse_kl":
        g = log_q.sub(log_p)  # log q − log p
        del log_p
        q = log_q.exp_()
        loss = torch.linalg.vecdot(q, g)
        return loss, (g.sub_(loss.unsqueeze(-1)).mul_(q) if with_grad else None)  # q ⊙ (g − E_q[g])
    # Generalised Jensen-Shannon with mixture m = β·p + (1−β)·q, computed in log space.
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    p = log_p.exp()
    teacher_part = torch.linalg.vecdot(p, log_p.sub_(log_m))
    del p, log_p
    g = log_q.sub(log_m)  # log(q / m)
    del log_m
    q = log_q.exp_()
    student_part = torch.linalg.vecdot(q, g)
    loss = beta * teacher_part + (1 - beta) * student_part
    if not with_grad:
        return loss, None
    return loss, g.sub_(student_part.unsqueeze(-1)).mul_(q).mul_(1 - beta)  # q ⊙ (g − E_q[g]) with g·(1−β)


def chunk_terms(
    raw: torch.Tensor,
    teacher_raw: torch.Tensor,
    weights: torch.Tensor,
    targets: torch.Tensor,
    settings: LogitLossSettings,
    with_grad: bool,
    grad_dtype: torch.dtype,
):
    """One chunk of the logit loss from raw (untempered) student and teacher logits [c, V], functionally.

    Returns the per-token divergence [c] (None when ``kl_weight`` is 0), cross-entropy [c] (None
    unless needed) and the gradient of Σ weight · (kl_weight · divergence + ce_weight · cross-entropy)
    with respect to the raw student logits, in ``grad_dtype`` (None without ``with_grad``). All
    arithmetic is fp32 whatever the logits' dtype.
    """
    s = settings
    z = raw.float()
    inverse_t = 1.0 / s.temperature
    zt = z * inverse_t if s.temperature != 1 else z
    lse_student = torch.logsumexp(zt, dim=-1, keepdim=True)
    log_q = zt - lse_student
    div = nll = grad = None
    if s.kl_weight:
        t = teacher_raw.float()
        tt = t * inverse_t if s.temperature != 1 else t
        log_p = tt - torch.logsumexp(tt, dim=-1, keepdim=True)
        q = log_q.exp()
        if s.divergence == "forward_kl":
            p = log_p.exp()
            div = (p * (log_p - log_q)).sum(-1)
            grad_tempered = q - p if with_grad else None
        elif s.divergence == "reverse_kl":
            g = log_q - log_p
            div = (q * g).sum(-1)
            grad_tempered = q * (g - div.unsqueeze(-1)) if with_grad else None
        else:
            log_m = torch.logaddexp(log_p + math.log(s.beta), log_q + math.log(1 - s.beta))
            teacher_part = (log_p.exp() * (log_p - log_m)).sum(-1)
            g = log_q - log_m
            student_part = (q * g).sum(-1)
            div = s.beta * teacher_part + (1 - s.beta) * student_part
            grad_tempered = (1 - s.beta) * q * (g - student_part.unsqueeze(-1)) if with_grad else None
        if with_grad:
            grad = grad_tempered * (s.kl_weight * inverse_t * weights).unsqueeze(-1)
    if s.needs_ce:
        # Cross-entropy of the untempered logits (at τ = 1 it shares the student's normaliser).
        lse = lse_student.squeeze(-1) if s.temperature == 1 else torch.logsumexp(z, dim=-1)
        nll = lse - z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if s.ce_weight and with_grad:
            vocab = torch.arange(z.shape[-1], device=z.device)
            one_hot = (vocab.unsqueeze(0) == targets.unsqueeze(-1)).to(z.dtype)
            grad_ce = ((z - lse.unsqueeze(-1)).exp() - one_hot) * (s.ce_weight * weights).unsqueeze(-1)
            grad = grad_ce if grad is None else grad + grad_ce
    if grad is not None:
        grad = grad.to(grad_dtype)
    return div, nll, grad
