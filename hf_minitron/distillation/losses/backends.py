"""Choosing and running a logit-loss backend.

- ``chunked``: the project's chunk (``chunked.py``), eager. The CPU default; for an fp32 model it is
  the fp32 path it always was, for a bf16 model (or bf16 autocast) its matmuls run on tensor cores.
- ``compiled``: the same chunk with its divergence, cross-entropy and gradient ``torch.compile``d into
  a few fused passes (``compiled.py``). The ``auto`` choice on a CUDA GPU with Triton.
- ``liger``: Liger-Kernel's ``LigerFusedLinearJSDLoss`` (``liger.py``), an optional extra.
- ``auto``: ``compiled`` on CUDA when Triton is importable, else ``chunked``.

A backend that cannot serve a call falls back to the next one (Liger: to ``auto``'s choice), and
says why once; ``stats["backend"]`` names what ran. Without grad mode (evaluation) no gradient
buffers or gradient matmuls are made, whatever the backend.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from .chunked import ChunkedLogitLoss, DenseTeacher, run_chunks
from .compiled import compile_problem
from .divergence import LogitLossSettings
from .liger import liger_available, liger_logit_loss

logger = logging.getLogger(__name__)

LOGIT_LOSS_BACKENDS = ("auto", "chunked", "compiled", "liger")
CPU_CHUNK_SIZE = 1024
CPU_CHUNK_BYTES = 1 << 29  # 1024 rows at a 128k vocabulary, as before the budget existed
_reported: set[str] = set()


def auto_chunk_size(vocab_size: int, device: torch.device) -> int:
    """Tokens per chunk when none is given: the largest power of two whose fp32 [chunk × vocab] buffer fits
    the device's budget. On an accelerator 1 GiB, 256 … 8192 rows (2048 at a 128k vocabulary), since bigger
    chunks keep the GEMMs efficient and each chunk rewrites the fp32 LM-head gradient once. On the CPU
    512 MiB, at most 1024 rows: a 262k vocabulary (Gemma 3) gets 512 rows, so each of a chunk's few fp32
    buffers stays the size a 128k vocabulary has at 1024 rows instead of doubling."""
    cpu = device.type == "cpu"
    budget = CPU_CHUNK_BYTES if cpu else 1 << 30
    rows = max(1, budget // (4 * max(vocab_size, 1)))
    largest = 1 << (rows.bit_length() - 1)
    return min(CPU_CHUNK_SIZE, max(64, largest)) if cpu else min(8192, max(256, largest))


def auto_backend(device: torch.device) -> str:
    if device.type == "cuda" and compile_problem() is None and importlib.util.find_spec("triton") is not None:
        return "compiled"
    return "chunked"


def _liger_problem(teacher, token_weights: torch.Tensor, settings: LogitLossSettings, with_grad: bool) -> str | None:
    if not liger_available():
        return "liger-kernel is not installed (pip install 'hf_minitron[liger]')"
    if not isinstance(teacher, DenseTeacher):
        return "cached top-k teachers run on the project's chunk"
    if not with_grad:
        return "a forward-only (evaluation) call is cheaper on the project's chunk"
    if not settings.kl_weight:
        return "kl_weight is 0"
    if token_weights.numel() == 0:
        return "there are no scored tokens"
    if token_weights.dim() != 1 or token_weights.stride(0) != 0:
        return "it needs one weight shared by every token (an expanded scalar)"
    return None


def resolve_backend(requested: str, teacher, token_weights, settings: LogitLossSettings, with_grad: bool, device):
    """(backend to run, why the requested one was not, or None)."""
    if requested not in LOGIT_LOSS_BACKENDS:
        raise ValueError(f"logit loss backend {requested!r} is not one of {', '.join(LOGIT_LOSS_BACKENDS)}")
    if requested == "liger":
        problem = _liger_problem(teacher, token_weights, settings, with_grad)
        return ("liger", None) if problem is None else (auto_backend(device), f"Liger: {problem}")
    if requested == "compiled":
        if not isinstance(teacher, DenseTeacher):
            return "chunked", "compiled: cached top-k teachers run on the eager chunk"
        problem = compile_problem()
        return ("compiled", None) if problem is None else ("chunked", f"compiled: {problem}")
    if requested == "auto":
        chosen = auto_backend(device)
        return ("chunked", None) if chosen == "compiled" and not isinstance(teacher, DenseTeacher) else (chosen, None)
    return requested, None


def _report(requested: str, backend: str, why: str | None) -> None:
    message = f"{requested} → {backend}" + (f" ({why})" if why else "")
    if why and message not in _reported:
        _reported.add(message)
        logger.warning("Logit loss backend %s", message)


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
    chunk_size: int | None = None,
    stats: dict | None = None,
    track_ce: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The logit loss against any teacher source: dense hidden states (``DenseTeacher``) or cached top-k
    (``SparseTeacher``). ``chunk_size`` None picks ``auto_chunk_size``; ``backend`` is one of
    ``LOGIT_LOSS_BACKENDS``."""
    stats = {} if stats is None else stats
    stats.setdefault("kl", 0.0)
    stats.setdefault("ce", 0.0)
    settings = LogitLossSettings(temperature, divergence, beta, kl_weight, ce_weight, track_ce)
    if targets is None:
        if settings.needs_ce:
            raise ValueError("cross-entropy needs target token ids")
        targets = torch.zeros(student_hidden.shape[0], dtype=torch.long, device=student_hidden.device)
    if chunk_size is None:
        chunk_size = auto_chunk_size(student_weight.shape[0], student_hidden.device)
    with_grad = torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad)
    name, why = resolve_backend(backend, teacher, token_weights, settings, with_grad, student_hidden.device)
    _report(backend, name, why)
    stats["backend"] = name
    if name == "liger":
        return liger_logit_loss(
            student_hidden, student_weight, teacher.hidden, teacher.weight, token_weights, targets, settings,
            chunk_size, stats,
        )  # fmt: skip
    if isinstance(teacher, DenseTeacher):
        teacher.compiled = name == "compiled"
    if not with_grad:  # evaluation: no gradient buffers, no gradient matmuls, no autograd node
        total = run_chunks(student_hidden, student_weight, teacher, token_weights, targets, settings, chunk_size, stats)
    else:
        total = ChunkedLogitLoss.apply(
            student_hidden, student_weight, teacher, token_weights, targets, settings, chunk_size, stats
        )
    if name == "compiled" and not teacher.compiled:
        stats["backend"] = "chunked"  # compilation failed and the eager chunk ran (reported once)
    return total


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
    ``track_ce`` is set, of the student's cross-entropy ("ce"), for logging, and the backend that
    ran ("backend"). Other settings: temperature, divergence, beta, kl_weight, ce_weight,
    chunk_size, backend (see ``logit_loss_from_teacher``).
    """
    teacher = DenseTeacher(teacher_hidden, teacher_weight)
    return logit_loss_from_teacher(student_hidden, student_weight, teacher, token_weights, targets, **settings)
