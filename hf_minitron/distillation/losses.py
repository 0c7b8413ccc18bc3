"""Distillation losses: logit divergences computed in token chunks, and intermediate-state losses.

The logit loss never holds [tokens × vocab] logits of both models. ``chunked_logit_loss``
walks the scored tokens in chunks; for each chunk it projects both models' final hidden
states through their LM heads, computes the divergence *and its gradient* with respect to
the student's logits in closed form, and immediately turns that gradient into gradients
for the student's hidden states and LM-head weight. Only those (hidden-sized and
weight-sized) gradients are kept for backward, so peak memory is one chunk of logits,
and the work is the same four matmuls as the plain loss.

Closed-form gradients with respect to the student's tempered logits z (q = softmax(z),
p = teacher probabilities, m = β·p + (1−β)·q):
- forward KL(p‖q):  q − p
- reverse KL(q‖p):  q ⊙ (g − E_q[g]),  g = log q − log p
- generalised JSD_β = β·KL(p‖m) + (1−β)·KL(q‖m):  q ⊙ (g − E_q[g]),  g = (1−β)·log(q/m)
With temperature τ the logits are divided by τ, which scales the gradient by 1/τ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
INTERMEDIATE_LOSSES = ("cosine", "mse")


def divergence_and_grad(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str, beta: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token divergence [n] and its gradient w.r.t. the (already tempered) student logits [n, V], in fp32.

    Works in place on fp32 copies, so about three [n, V] buffers are alive at once: at a 128k
    vocabulary each one is half a gigabyte per thousand tokens.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    if divergence == "forward_kl":
        p = log_p.exp()
        loss = torch.linalg.vecdot(p, log_p.sub_(log_q))  # Σ p (log p − log q), no [n, V] temporary
        return loss, log_q.exp_().sub_(p)  # q − p
    if divergence == "reverse_kl":
        g = log_q.sub(log_p)  # log q − log p
        del log_p
        q = log_q.exp_()
        loss = torch.linalg.vecdot(q, g)
        return loss, g.sub_(loss.unsqueeze(-1)).mul_(q)  # q ⊙ (g − E_q[g])
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
    return loss, g.sub_(student_part.unsqueeze(-1)).mul_(q).mul_(1 - beta)  # q ⊙ (g − E_q[g]) with g·(1−β)


class DenseTeacher:
    """Teacher targets as final hidden states [n, D] and LM-head weight [V, D]: logits are made one chunk at a time."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor):
        self.hidden, self.weight = hidden.detach(), weight.detach()

    def divergence_and_grad(self, rows: slice, tempered_student: torch.Tensor, temperature: float, divergence, beta):
        with torch.no_grad():
            teacher = (self.hidden[rows] @ self.weight.t()).float()
        if temperature != 1:
            teacher = teacher / temperature
        return divergence_and_grad(tempered_student, teacher, divergence, beta)


class _ChunkedLogitLoss(torch.autograd.Function):
    """Σ_tokens weight · [kl_weight · divergence + ce_weight · cross-entropy], gradients made in forward.

    ``teacher`` supplies, for a chunk of rows, the divergence and its gradient w.r.t. the tempered
    student logits: from its hidden states (``DenseTeacher``) or from cached top-k log-probabilities
    (``hf_minitron.distillation.sparse.SparseTeacher``).
    """

    @staticmethod
    def forward(
        ctx,
        student_hidden,
        student_weight,
        teacher,
        token_weights,
        targets,
        temperature,
        divergence,
        beta,
        kl_weight,
        ce_weight,
        chunk_size,
        stats,
        track_ce,
    ):
        needs_grad = student_hidden.requires_grad or student_weight.requires_grad
        grad_hidden = torch.zeros_like(student_hidden) if student_hidden.requires_grad else None
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32) if student_weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=student_hidden.device)
        for start in range(0, student_hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            hidden = student_hidden[rows]
            raw = (hidden @ student_weight.t()).float()
            weights = token_weights[rows].float()
            grad_logits = None
            if kl_weight:
                tempered = raw if temperature == 1 else raw / temperature
                div, grad = teacher.divergence_and_grad(rows, tempered, temperature, divergence, beta)
                del tempered
                total += kl_weight * (div * weights).sum()
                stats["kl"] += (div * weights).sum().detach()  # a tensor: no device sync per chunk
                grad_logits = grad.mul_((kl_weight * weights / temperature).unsqueeze(-1)) if needs_grad else None
                del grad
            if ce_weight or track_ce:
                log_probs = F.log_softmax(raw, dim=-1)
                nll = -log_probs.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
                stats["ce"] += (nll * weights).sum().detach()
                if ce_weight:
                    total += ce_weight * (nll * weights).sum()
                    if needs_grad:  # softmax − one-hot, in the log-probabilities' buffer
                        grad_ce = log_probs.exp_()
                        grad_ce.scatter_add_(-1, targets[rows].unsqueeze(-1), -torch.ones_like(nll).unsqueeze(-1))
                        grad_ce.mul_((ce_weight * weights).unsqueeze(-1))
                        grad_logits = grad_ce if grad_logits is None else grad_logits.add_(grad_ce)
                del log_probs
            del raw
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits.to(student_weight.dtype) @ student_weight).to(grad_hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), hidden.float())  # in place: no [V, D] temporary
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight if grad_weight is not None else torch.empty(0),
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, student_weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        has_hidden, has_weight, weight_dtype = ctx.has
        if not bool(grad_output == 1):  # the usual upstream gradient is exactly 1: then no weight-sized copy
            grad_hidden, grad_weight = grad_hidden * grad_output, grad_weight * grad_output
        return (
            grad_hidden if has_hidden else None,
            grad_weight.to(weight_dtype) if has_weight else None,
            *([None] * 11),
        )


def logit_loss_from_teacher(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher,
    token_weights: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    chunk_size: int = 1024,
    stats: dict | None = None,
    track_ce: bool = False,
) -> torch.Tensor:
    """The chunked logit loss against any teacher source (dense hidden states or cached top-k)."""
    stats = {} if stats is None else stats
    stats.setdefault("kl", 0.0)
    stats.setdefault("ce", 0.0)
    if targets is None:
        if ce_weight or track_ce:
            raise ValueError("cross-entropy needs target token ids")
        targets = torch.zeros(student_hidden.shape[0], dtype=torch.long, device=student_hidden.device)
    return _ChunkedLogitLoss.apply(
        student_hidden,
        student_weight,
        teacher,
        token_weights,
        targets,
        temperature,
        divergence,
        beta,
        kl_weight,
        ce_weight,
        chunk_size,
        stats,
        track_ce,
    )


def chunked_logit_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    token_weights: torch.Tensor,
    targets: torch.Tensor | None = None,
    **settings,
) -> torch.Tensor:
    """Weighted sum over scored tokens of the logit loss, from final hidden states [n, D] and LM-head weights [V, D].

    ``token_weights`` carries the normalisation (1 / number of scored tokens in the whole
    optimizer step), so gradient accumulation matches one large batch. ``stats`` (a dict)
    receives the weighted sums of the divergence ("kl") and, when ``ce_weight`` or
    ``track_ce`` is set, of the student's cross-entropy ("ce"), for logging. Other settings:
    temperature, divergence, beta, kl_weight, ce_weight, chunk_size (see ``logit_loss_from_teacher``).
    """
    teacher = DenseTeacher(teacher_hidden, teacher_weight)
    return logit_loss_from_teacher(student_hidden, student_weight, teacher, token_weights, targets, **settings)


def plain_logit_loss(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    token_weights,
    targets=None,
    *,
    temperature=1.0,
    divergence="forward_kl",
    beta=0.5,
    kl_weight=1.0,
    ce_weight=0.0,
) -> torch.Tensor:
    """The same loss with full logits and autograd: the reference the chunked version must equal."""
    student_logits = (student_hidden @ student_weight.t()).float()
    with torch.no_grad():
        teacher_logits = (teacher_hidden @ teacher_weight.t()).float()
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    if divergence == "forward_kl":
        div = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    elif divergence == "reverse_kl":
        div = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    else:
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
        div = beta * F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1) + (1 - beta) * F.kl_div(
            log_m, log_q, reduction="none", log_target=True
        ).sum(-1)
    loss = kl_weight * (div * token_weights).sum()
    if ce_weight:
        ce = F.cross_entropy(student_logits, targets, reduction="none")
        loss = loss + ce_weight * (ce * token_weights).sum()
    return loss


def intermediate_state_loss(
    student_state: torch.Tensor, teacher_state: torch.Tensor, token_weights: torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """Weighted sum over tokens of 1 − cos(student, teacher) or the mean squared error per token."""
    student_state, teacher_state = student_state.float(), teacher_state.float().detach()
    if kind == "cosine":
        per_token = 1 - F.cosine_similarity(student_state, teacher_state, dim=-1)
    else:
        per_token = (student_state - teacher_state).pow(2).mean(-1)
    return (per_token * token_weights.float()).sum()
