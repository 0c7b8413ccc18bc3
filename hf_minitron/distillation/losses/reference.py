"""The logit loss with full logits and ordinary autograd: the fp32 reference every backend must equal."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
