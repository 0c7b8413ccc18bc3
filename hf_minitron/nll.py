"""Negative log-likelihood of target tokens from hidden states, one chunk of logits at a time.

Evaluation (perplexity, task scoring), the block-removal sweep and the distillation trainer's
teacher-gap callback all score next tokens through the LM head. A 128k-vocabulary head over a few
thousand tokens would need gigabytes of logits; here only the scored positions go through the head,
``chunk_size`` rows at a time, so at most one chunk's logits exist at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .families import cap_logits

IGNORE_INDEX = -100  # a target that is not scored (padding, prompt tokens), as in transformers' labels


def _head_device(head) -> torch.device:
    return head.device if torch.is_tensor(head) else next(head.parameters()).device


@torch.no_grad()
def chunked_nll(
    hidden, targets, head, chunk_size: int = 2048, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed negative log-likelihood of its scored targets (float64) and how many were scored.

    ``hidden`` [rows, positions, width] holds the states that predict ``targets`` [rows, positions]
    (already shifted: position t's state predicts ``targets[:, t]``); ``IGNORE_INDEX`` targets are left
    out. ``head`` is the LM head module or its weight matrix [vocab, width]. Logits are computed in fp32
    whatever the model dtype. ``softcap``: the model caps its logits as softcap · tanh(logits / softcap)
    (Gemma's ``final_logit_softcapping``), so the scores must too. Both results are on the head's device.
    """
    device = _head_device(head)
    targets = targets.to(device)
    scored = targets != IGNORE_INDEX
    rows = torch.arange(scored.shape[0], device=device).unsqueeze(1).expand_as(scored)[scored]
    states = hidden[scored.to(hidden.device)].to(device)
    wanted = targets[scored]
    sums = torch.zeros(scored.shape[0], dtype=torch.float64, device=device)
    for start in range(0, len(wanted), chunk_size):
        chunk = states[start : start + chunk_size]
        logits = (chunk @ head.t() if torch.is_tensor(head) else head(chunk)).float()
        logits = cap_logits(logits, softcap)
        losses = F.cross_entropy(logits, wanted[start : start + chunk_size], reduction="none")
        sums.index_add_(0, rows[start : start + chunk_size], losses.double())
    return sums, scored.sum(1)
