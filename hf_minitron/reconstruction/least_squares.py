"""Ridge least squares for one Linear layer, from streamed activations.

A layer ``y = W x (+ b)`` is re-fitted so that, on calibration tokens, its output follows a target:

    min_W  Σ_tokens ||W x − y||²  +  λ ||W − W₀||²

whose solution is ``Wᵀ = (G + λI)⁻¹ (C + λ W₀ᵀ)`` with the Gram matrix ``G = Σ x xᵀ`` and
``C = Σ x yᵀ``. Only G (inputs²) and C (inputs × outputs) are kept, however many tokens stream
by, so memory is one layer's statistics. Pulling towards the layer's current weights ``W₀``
(rather than towards zero) means directions the calibration data never excites keep their
original weights instead of collapsing; λ is relative to the mean of G's diagonal, so one
``damping`` value suits every layer and model. A bias, where the layer has one, is fitted as
one more input that is always 1.
"""

from __future__ import annotations

import functools

import torch

from ..errors import MinitronError


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # Sums over millions of tokens: fp64 where the device has it (MPS has not).
    return torch.float32 if device.type == "mps" else torch.float64


class LeastSquares:
    """Accumulates ``G`` and ``C`` for one layer's re-fit and solves for its new weight (and bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device: torch.device):
        size = in_features + int(bias)
        dtype = _accumulator_dtype(device)
        self.in_features, self.bias = in_features, bias
        self.gram = torch.zeros(size, size, dtype=dtype, device=device)
        self.cross = torch.zeros(size, out_features, dtype=dtype, device=device)
        self.target_energy = torch.zeros((), dtype=dtype, device=device)  # Σ ||y||², for relative errors
        self.tokens = 0

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """``inputs`` [n, in] and ``targets`` [n, out] for n tokens (padding already removed)."""
        x = inputs.reshape(-1, inputs.shape[-1])
        if self.bias:
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        y = targets.reshape(-1, targets.shape[-1])
        gram, cross = gram_products(x, y)
        self.gram += gram.to(self.gram.dtype)
        self.cross += cross.to(self.cross.dtype)
        wide = torch.promote_types(y.dtype, torch.float32)
        self.target_energy += y.to(wide).pow(2).sum().to(self.target_energy.dtype)
        self.tokens += x.shape[0]

    def _stacked(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        stacked = weight.detach().to(self.gram)
        if self.bias:
            column = bias.detach().to(self.gram) if bias is not None else stacked.new_zeros(stacked.shape[0])
            stacked = torch.cat([stacked, column[:, None]], dim=1)
        return stacked

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """Σ||W x − y||² / Σ||y||² over the tokens seen, from the statistics alone (no second pass)."""
        w = self._stacked(weight, bias)
        error = (w @ self.gram * w).sum() - 2 * (w * self.cross.t()).sum() + self.target_energy
        return float(error.clamp_min(0) / self.target_energy.clamp_min(1e-30))

    def solve(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, damping: float = 0.1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ridge solution pulled towards ``weight`` [out, in] (and ``bias``), in the weight's dtype."""
        new_weight, new_bias, _ = self.fit(weight, bias, damping)
        return new_weight, new_bias

    def fit(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, damping: float = 0.1
    ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """``solve``, and the relative error of its solution. That error comes from the solution's own
        equations, (G + λI)·X = C + λ·P, which give XᵀGX = Xᵀ(C + λ(P − X)): no product of G with the
        solution, which for a wide MLP would cost as much as the factorisation."""
        if self.tokens == 0:
            raise MinitronError("No calibration tokens reached this layer", fix="give more calibration data")
        prior = self._stacked(weight, bias).t()
        solution, lam = _ridge(self.gram, self.cross, prior, damping, self.in_features)
        quadratic = (solution * (self.cross + lam * (prior - solution))).sum()
        error = quadratic - 2 * (solution * self.cross).sum() + self.target_energy
        relative = float(error.clamp_min(0) / self.target_energy.clamp_min(1e-30))
        solution = solution.t()
        new_weight = solution[:, : self.in_features].to(weight.dtype)
        if not self.bias:
            return new_weight, None, relative
        new_bias = solution[:, self.in_features].to(bias.dtype if bias is not None else weight.dtype)
        return new_weight, new_bias, relative


def ridge_solve(
    gram: torch.Tensor, cross: torch.Tensor, prior: torch.Tensor, damping: float, scale_inputs: int | None = None
) -> torch.Tensor:
    """``(G + λI)⁻¹ (C + λ·prior)`` in fp64 where possible, λ = damping × mean diagonal of G's first
    ``scale_inputs`` entries (the real inputs, not a bias column).

    A Gram matrix that is singular even after damping (inputs that are always zero and ``damping``
    0) gets its damping raised tenfold until the Cholesky factorisation succeeds.
    """
    return _ridge(gram, cross, prior, damping, scale_inputs)[0]


def _ridge(gram, cross, prior, damping: float, scale_inputs: int | None) -> tuple[torch.Tensor, float]:
    """``ridge_solve``'s solution and the λ it used."""
    wide = _accumulator_dtype(gram.device)
    gram, cross, prior = gram.to(wide), cross.to(wide), prior.to(wide)
    diagonal = gram.diagonal()[: scale_inputs or gram.shape[0]]
    scale = float(diagonal.mean()) if diagonal.numel() else 1.0
    scale = scale if scale > 0 else 1.0
    strength = damping
    damped = gram.clone()  # the damping goes on the diagonal in place: no n × n identity (1.6 GB at 8B scale)
    for _ in range(8):
        lam = strength * scale
        damped.diagonal().copy_(gram.diagonal() + lam)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            return torch.cholesky_solve(cross + lam * prior, factor), lam
        strength = max(strength * 10, 1e-6)
    raise MinitronError(
        "The calibration activations of a layer are degenerate (their Gram matrix stays singular)",
        fix="use more (and more varied) calibration text, or raise the reconstruction damping",
    )


def gram_products(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``xᵀx`` and ``xᵀy`` in fp32 at least, the heavy part of a re-fit (as many multiply-adds as the
    layer's own forward pass, and more for a wide MLP).

    On a GPU, bf16/fp16 activations go through the tensor cores with fp32 accumulation and an fp32
    result: the same sums as widening them first (16-bit values are exact in fp32), where an fp32
    matrix product without TF32 runs on the ordinary cores about fifteen times slower. Elsewhere the
    inputs are widened and multiplied in fp32 (or fp64, if that is what they are).
    """
    sixteen_bit = x.dtype in (torch.bfloat16, torch.float16) and y.dtype == x.dtype
    if x.device.type == "cuda" and sixteen_bit and has_wide_output_mm():
        xt = x.t()
        return torch.mm(xt, x, out_dtype=torch.float32), torch.mm(xt, y, out_dtype=torch.float32)
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)  # widened once (a no-op when they already are)
    return x.t() @ x, x.t() @ y


@functools.cache
def has_wide_output_mm() -> bool:
    """Whether this torch has ``torch.mm(..., out_dtype=torch.float32)`` for 16-bit inputs (2.8 and later);
    asked once, of shapes on the meta device, which cost nothing."""
    probe = torch.empty(2, 2, dtype=torch.bfloat16, device="meta")
    try:
        return torch.mm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False
