"""Distillation losses: logit divergences computed in token chunks, and intermediate-state losses.

The logit loss never holds [tokens × vocab] logits of both models: it walks the scored tokens in
chunks and forms the gradients per chunk (``chunked.py``). Backends (``backends.py``): the eager
chunk, the same chunk ``torch.compile``d, and Liger-Kernel's fused linear JSD; ``plain_logit_loss``
(``reference.py``) is the full-logit fp32 reference they are all tested against.
"""

from .backends import LOGIT_LOSS_BACKENDS, auto_chunk_size, chunked_logit_loss, logit_loss_from_teacher
from .chunked import DenseTeacher
from .divergence import DIVERGENCES, LogitLossSettings, divergence_and_grad
from .intermediate import INTERMEDIATE_LOSSES, intermediate_state_loss
from .reference import plain_logit_loss

__all__ = [
    "DIVERGENCES",
    "INTERMEDIATE_LOSSES",
    "LOGIT_LOSS_BACKENDS",
    "DenseTeacher",
    "LogitLossSettings",
    "auto_chunk_size",
    "chunked_logit_loss",
    "divergence_and_grad",
    "intermediate_state_loss",
    "logit_loss_from_teacher",
    "plain_logit_loss",
]
