"""Matrix products of the chunked logit loss: low-precision inputs, fp32 results.

On a GPU the LM-head products run on bf16/fp16 tensor cores, which accumulate in fp32 inside
each product anyway; what must not happen is rounding the *result* to bf16. PyTorch's
``out_dtype=torch.float32`` matmuls (CUDA) return that fp32 result directly:

- logits: ``mm(hidden, weight.T, out_dtype=fp32)``, so the softmax sees unrounded logits;
- the LM-head weight gradient, summed over token chunks: ``addmm(acc, grad.T, hidden,
  out_dtype=fp32, out=acc)`` adds each chunk's product into one fp32 accumulator inside the
  GEMM itself, with no [vocab × hidden] temporary and no bf16 rounding of partial sums (a bf16
  accumulator stops absorbing chunks once it is ~256× larger than one chunk's contribution).

Which of these a PyTorch build supports differs by version and device (the CPU build has neither),
so each is probed once per device and dtype on a small product checked against fp32; where one is
missing, the next best runs: an fp32-output ``mm`` plus an add, and finally the low-precision
product cast up. On the CPU (no such kernels) the inputs are cast up instead, which computes what a
tensor core does (exact products, fp32 sums). fp32 inputs take the plain fp32 operations.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

_SUPPORT: dict[tuple[str, str, torch.dtype], bool] = {}
_FAILURES = (RuntimeError, TypeError, NotImplementedError)


def _fused_mm(a, b):
    return torch.mm(a, b, out_dtype=torch.float32)


def _fused_add(acc, a, b):
    return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def _probe(kind: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fp32-output op runs here and gives the fp32 product, on the operand layouts the loss uses
    (logits: a @ weightᵀ; weight gradient: gradᵀ @ hidden, into the accumulator itself)."""
    key = (kind, device.type, dtype)
    if key not in _SUPPORT:
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(8, 16, generator=g).to(device=device, dtype=dtype)
            y = torch.randn(24, 16, generator=g).to(device=device, dtype=dtype)
            if kind == "mm":
                result, expected = _fused_mm(x, y.t()), x.float() @ y.float().t()
            else:
                z = torch.randn(8, 24, generator=g).to(device=device, dtype=dtype)
                acc = torch.ones(16, 24, device=device)
                result, expected = _fused_add(acc, x.t(), z), 1 + x.float().t() @ z.float()
            _SUPPORT[key] = result.dtype == torch.float32 and torch.allclose(result, expected, rtol=1e-3, atol=1e-3)
        except _FAILURES:
            _SUPPORT[key] = False
    return _SUPPORT[key]


def _give_up(kind: str, a: torch.Tensor) -> None:
    _SUPPORT[(kind, a.device.type, a.dtype)] = False


def matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as fp32; low-precision inputs keep their tensor-core product, unrounded where possible."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if _probe("mm", a.device, a.dtype):
        try:
            return _fused_mm(a, b)
        except _FAILURES:  # a layout or size the probe did not cover: the fallbacks from now on
            _give_up("mm", a)
    if a.device.type == "cpu":
        return a.float() @ b.float()
    return (a @ b).float()


def add_product_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc += a @ b`` for an fp32 accumulator, in place, with ``a`` and ``b`` in any one dtype."""
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    if _probe("addmm", a.device, a.dtype):
        try:
            return _fused_add(acc, a, b)
        except _FAILURES:
            _give_up("addmm", a)
    if a.device.type == "cpu":
        return acc.addmm_(a.float(), b.float())
    return acc.add_(matmul_fp32(a, b))


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the LM-head products run in: autocast's where it is on, else the weight's own."""
    device = weight.device.type
    if device in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def autocast_off(device: torch.device):
    """A context without autocast on ``device``: the loss casts its products explicitly."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else nullcontext()
