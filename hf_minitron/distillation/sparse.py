"""Distillation from cached top-k teacher log-probabilities.

A cache keeps, per scored token, the teacher's k most likely token ids, their log-probabilities
and the probability mass left outside them (the tail). The loss compares the two models on
k + 1 buckets: the k cached tokens one by one, and everything else as one bucket whose teacher
mass is the stored tail and whose student mass is the student's probability outside those k
tokens. When k covers the vocabulary the tail is empty and this is exactly the full divergence;
for smaller k the tail bucket keeps the student's leftover mass honest instead of renormalising
the teacher's top k to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Log-probabilities of empty buckets are clamped here (exp underflows in fp32 below about -103),
# so an empty tail contributes 0 instead of 0 · ∞.
LOG_FLOOR = -100.0


def topk_with_tail(logits: torch.Tensor, k: int, temperature: float = 1.0, stored_dtype=torch.float32):
    """The top-k (ids int32 [n, k], log-probabilities fp32 [n, k]) and tail mass fp32 [n] of tempered logits.

    The log-probabilities are rounded to ``stored_dtype`` (what a cache keeps) before the tail is taken
    from them, as ``1 - Σ exp`` computed as ``-expm1(logsumexp)``: the k + 1 buckets a student is compared
    with then sum to one exactly as stored, and a teacher's divergence to its own cache is zero, never below.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    k = min(k, log_p.shape[-1])
    values, indices = log_p.topk(k, dim=-1)
    values = values.to(stored_dtype).float()
    if k == log_p.shape[-1]:
        tail = torch.zeros(values.shape[0], dtype=torch.float32, device=values.device)
    else:
        tail = (-torch.expm1(torch.logsumexp(values.double(), dim=-1))).clamp(min=0).float()
    return indices.to(torch.int32), values, tail


def _bucket_divergence(log_q: torch.Tensor, teacher_ids, teacher_logp, tail, divergence: str, beta: float):
    """Per-token divergence between the teacher's and the student's (k + 1)-bucket distributions."""
    ids = teacher_ids.long()
    student_top = log_q.gather(-1, ids)
    student_tail = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1).clamp(min=LOG_FLOOR)
    teacher_tail = torch.log(tail.float()).clamp(min=LOG_FLOOR)
    log_p = torch.cat([teacher_logp.float(), teacher_tail.unsqueeze(-1)], dim=-1)
    log_s = torch.cat([student_top, student_tail.unsqueeze(-1)], dim=-1)
    if divergence == "forward_kl":
        return (log_p.exp() * (log_p - log_s)).sum(-1)
    if divergence == "reverse_kl":
        return (log_s.exp() * (log_s - log_p)).sum(-1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_s + math.log(1 - beta))
    return beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (log_s.exp() * (log_s - log_m)).sum(-1)


@dataclass
class SparseTeacher:
    """Cached teacher targets for n scored tokens: ids [n, k], log-probabilities [n, k], tail mass [n].

    The log-probabilities were computed at the cache's temperature, so they are used as they are.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor
    vocab_size: int | None = None  # the teacher's vocabulary: a student's padded rows beyond it never count

    def divergence_and_grad(self, rows: slice, tempered_student, temperature, divergence, beta, with_grad=True):
        ids, logprobs, tail = self.ids[rows], self.logprobs[rows], self.tail[rows]
        if not with_grad:
            log_q = F.log_softmax(tempered_student, dim=-1)
            return _bucket_divergence(log_q, ids, logprobs, tail, divergence, beta), None
        logits = tempered_student.detach().requires_grad_()
        with torch.enable_grad():
            log_q = F.log_softmax(logits, dim=-1)
            per_token = _bucket_divergence(log_q, ids, logprobs, tail, divergence, beta)
            (grad,) = torch.autograd.grad(per_token.sum(), logits)
        return per_token.detach(), grad

    def chunk_terms(self, rows, raw, weights, targets, settings, with_grad: bool, grad_dtype):
        from .losses.chunked import eager_chunk_terms

        return eager_chunk_terms(self, rows, raw, weights, targets, settings, with_grad)


def sparse_logit_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher: SparseTeacher,
    token_weights: torch.Tensor,
    targets: torch.Tensor | None = None,
    **settings,
) -> torch.Tensor:
    """The chunked logit loss against cached top-k targets (settings as in ``logit_loss_from_teacher``)."""
    from .losses import logit_loss_from_teacher

    return logit_loss_from_teacher(student_hidden, student_weight, teacher, token_weights, targets, **settings)


def plain_sparse_logit_loss(
    student_hidden,
    student_weight,
    teacher: SparseTeacher,
    token_weights,
    *,
    temperature=1.0,
    divergence="forward_kl",
    beta=0.5,
) -> torch.Tensor:
    """Reference: full logits, an explicit membership mask for the tail, and ordinary autograd."""
    log_q = F.log_softmax((student_hidden @ student_weight.t()).float() / temperature, dim=-1)
    ids = teacher.ids.long()
    in_top = torch.zeros_like(log_q, dtype=torch.bool).scatter(-1, ids, True)
    q = log_q.exp()
    student_tail = (q * ~in_top).sum(-1)
    p_top, q_top = teacher.logprobs.float().exp(), q.gather(-1, ids)
    p = torch.cat([p_top, teacher.tail.float().unsqueeze(-1)], dim=-1)
    s = torch.cat([q_top, student_tail.unsqueeze(-1)], dim=-1)
    floor = math.exp(LOG_FLOOR)
    log_p, log_s = p.clamp(min=floor).log(), s.clamp(min=floor).log()
    if divergence == "forward_kl":
        div = (p * (log_p - log_s)).sum(-1)
    elif divergence == "reverse_kl":
        div = (s * (log_s - log_p)).sum(-1)
    else:
        m = beta * p + (1 - beta) * s
        log_m = m.clamp(min=floor).log()
        div = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (s * (log_s - log_m)).sum(-1)
    return (div * token_weights).sum()
