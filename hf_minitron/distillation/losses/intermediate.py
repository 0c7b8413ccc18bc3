"""Intermediate-state losses between teacher and student hidden states (for heavily depth-pruned students)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

INTERMEDIATE_LOSSES = ("cosine", "mse")


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
