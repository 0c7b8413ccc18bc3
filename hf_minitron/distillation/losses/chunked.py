"""The chunked logit loss: LM head and divergence one token chunk at a time, gradients made in forward.

For each chunk the student's (and a dense teacher's) final hidden states are projected through
their LM heads, the divergence *and its gradient* with respect to the student's logits are
computed in closed form, and that gradient is turned at once into gradients for the student's
hidden states and LM-head weight. Only those (hidden-sized and weight-sized) gradients are kept
for backward, so peak memory is about one chunk of logits, and the work is the same four
matmuls as the plain loss.

Precision: the matmuls run in the model's compute dtype (bf16 tensor cores for a bf16 model or
under bf16 autocast, fp32 for an fp32 model); logits, softmax, divergence and the LM-head weight
gradient's sum over chunks are fp32 (see ``matmul.py``). An fp32 model on the CPU runs exactly
the fp32 operations it always did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .divergence import LogitLossSettings, divergence_and_grad
from .matmul import add_product_, autocast_off, compute_dtype, matmul_fp32


def eager_chunk_terms(source, rows, raw, weights, targets, settings: LogitLossSettings, with_grad: bool):
    """(divergence [c] | None, cross-entropy [c] | None, gradient w.r.t. raw logits [c, V] fp32 | None).

    ``source.divergence_and_grad`` (a dense or cached teacher) gives the divergence of ``rows`` and
    its gradient w.r.t. the tempered logits; everything here works in place on the fp32 chunk.
    """
    s = settings
    div = nll = grad_logits = None
    if s.kl_weight:
        tempered = raw if s.temperature == 1 else raw / s.temperature
        div, grad = source.divergence_and_grad(rows, tempered, s.temperature, s.divergence, s.beta, with_grad)
        del tempered
        if with_grad:
            grad_logits = grad.mul_((s.kl_weight * weights / s.temperature).unsqueeze(-1))
        del grad
    if s.needs_ce:
        log_probs = F.log_softmax(raw, dim=-1)
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if s.ce_weight and with_grad:  # softmax − one-hot, in the log-probabilities' buffer
            grad_ce = log_probs.exp_()
            grad_ce.scatter_add_(-1, targets.unsqueeze(-1), -torch.ones_like(nll).unsqueeze(-1))
            grad_ce.mul_((s.ce_weight * weights).unsqueeze(-1))
            grad_logits = grad_ce if grad_logits is None else grad_logits.add_(grad_ce)
        del log_probs
    return div, nll, grad_logits


class DenseTeacher:
    """Teacher targets as final hidden states [n, D] and LM-head weight [V, D]: logits are made one chunk at a time.

    ``compiled=True`` computes each chunk's terms with the ``torch.compile``d kernel of ``compiled.py``.
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, compiled: bool = False):
        self.hidden, self.weight = hidden.detach(), weight.detach()
        self.compiled = compiled

    def prepare(self, dtype: torch.dtype) -> None:
        """An fp32 teacher next to a low-precision student runs its products in the student's dtype (cast once)."""
        if dtype != torch.float32 and self.weight.dtype == torch.float32:
            self.weight = self.weight.to(dtype)

    def logits(self, rows: slice) -> torch.Tensor:
        """Raw teacher logits of ``rows`` in fp32; the product runs in the LM-head weight's dtype."""
        with torch.no_grad():
            hidden = self.hidden[rows]
            if hidden.dtype != self.weight.dtype:
                hidden = hidden.to(self.weight.dtype)
            return matmul_fp32(hidden, self.weight.t())

    def divergence_and_grad(self, rows: slice, tempered_student, temperature: float, divergence, beta, with_grad=True):
        teacher = self.logits(rows)
        if temperature != 1:
            teacher = teacher / temperature
        return divergence_and_grad(tempered_student, teacher, divergence, beta, with_grad)

    def chunk_terms(self, rows, raw, weights, targets, settings: LogitLossSettings, with_grad: bool, grad_dtype):
        if self.compiled:
            from .compiled import compiled_chunk_terms

            teacher = self.logits(rows) if settings.kl_weight else raw
            result = compiled_chunk_terms(raw, teacher, weights, targets, settings, with_grad, grad_dtype)
            if result is not None:
                return result
            self.compiled = False  # compilation failed (reported once): this and later chunks run eagerly
        return eager_chunk_terms(self, rows, raw, weights, targets, settings, with_grad)


def run_chunks(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher,
    token_weights: torch.Tensor,
    targets: torch.Tensor,
    settings: LogitLossSettings,
    chunk_size: int,
    stats: dict,
    grad_hidden: torch.Tensor | None = None,
    grad_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_tokens weight · loss; fills ``grad_hidden`` / ``grad_weight`` (fp32) when given. No autograd graph."""
    dtype = compute_dtype(student_weight)
    with_grad = grad_hidden is not None or grad_weight is not None
    device = student_hidden.device
    total = torch.zeros((), dtype=torch.float32, device=device)
    with autocast_off(device):  # products are cast explicitly to the compute dtype
        weight = student_weight.detach()
        weight = weight if weight.dtype == dtype else weight.to(dtype)
        if hasattr(teacher, "prepare"):
            teacher.prepare(dtype)
        for start in range(0, student_hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            hidden = student_hidden[rows].detach()
            hidden = hidden if hidden.dtype == dtype else hidden.to(dtype)
            raw = matmul_fp32(hidden, weight.t())
            weights = token_weights[rows].float()
            div, nll, grad_logits = teacher.chunk_terms(rows, raw, weights, targets[rows], settings, with_grad, dtype)
            del raw
            if div is not None:
                kl = (div * weights).sum()
                total += settings.kl_weight * kl
                stats["kl"] += kl.detach()  # a tensor: no device sync per chunk
            if nll is not None:
                ce = (nll * weights).sum()
                stats["ce"] += ce.detach()
                if settings.ce_weight:
                    total += settings.ce_weight * ce
            if grad_logits is None:
                continue
            if grad_logits.dtype != dtype:
                grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight).to(grad_hidden.dtype)
            if grad_weight is not None:
                add_product_(grad_weight, grad_logits.t(), hidden)  # fp32 sum over chunks, no [V, D] temporary
    return total


class ChunkedLogitLoss(torch.autograd.Function):
    """The chunked loss as an autograd function: gradients are formed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, student_hidden, student_weight, teacher, token_weights, targets, settings, chunk_size, stats):
        grad_hidden = torch.zeros_like(student_hidden) if student_hidden.requires_grad else None
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32) if student_weight.requires_grad else None
        total = run_chunks(
            student_hidden, student_weight, teacher, token_weights, targets, settings, chunk_size, stats,
            grad_hidden, grad_weight,
        )  # fmt: skip
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
            *([None] * 6),
        )
