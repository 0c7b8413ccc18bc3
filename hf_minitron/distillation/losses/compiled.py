"""The chunk's divergence, cross-entropy and gradient as one ``torch.compile``d kernel.

Eagerly, each softmax, exp, subtraction and product of a chunk is its own pass over [chunk × vocab]
fp32 buffers. Compiled, the same formulas (``chunk_terms``) become a few fused reductions that read
the two chunks of logits and write the gradient once, already in the matmul dtype. The LM-head
products stay outside, on cuBLAS. One graph is compiled per loss setting; the chunk's row count is
marked dynamic, so a short last chunk does not compile again.

If compiling fails (no working compiler, an unsupported PyTorch), the failure is reported once and
the loss continues with the eager chunk, which computes the same values.
"""

from __future__ import annotations

import logging
from dataclasses import astuple

import torch

from .divergence import LogitLossSettings, chunk_terms

logger = logging.getLogger(__name__)

_kernels: dict[tuple, object] = {}
_broken: list[str] = []


def _kernel(settings: LogitLossSettings, with_grad: bool, grad_dtype: torch.dtype):
    key = (*astuple(settings), with_grad, grad_dtype)
    if key not in _kernels:

        def terms(raw, teacher, weights, targets):
            return chunk_terms(raw, teacher, weights, targets, settings, with_grad, grad_dtype)

        _kernels[key] = torch.compile(terms)
    return _kernels[key]


def compile_problem() -> str | None:
    """Why compiled chunks cannot run here, or None."""
    if _broken:
        return _broken[0]
    if not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    return None


def compiled_chunk_terms(raw, teacher, weights, targets, settings, with_grad, grad_dtype):
    """``chunk_terms`` through its compiled kernel, or None when compilation does not work here."""
    if _broken:
        return None
    try:
        for tensor in (raw, teacher, weights, targets):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        return _kernel(settings, with_grad, grad_dtype)(raw, teacher, weights, targets)
    except Exception as error:  # compiler errors come in many types; the eager chunk is always there
        _broken.append(f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        logger.warning("Compiled logit-loss chunk unavailable, using the eager chunk: %s", _broken[0])
        return None
