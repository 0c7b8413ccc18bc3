"""Ridge least squares for one Linear layer, from streamed activations.

A layer ``y = W x (+ b)`` is re-fitted so that, on calibration tokens, its output follows a target:

    min_W  Σ_tokens ||W x − y||²  +  λ ||W − W₀||²

whose solution is ``Wᵀ = (G + λI)⁻¹ (C + λ W₀ᵀ)`` with the Gram matrix ``G = Σ x xᵀ`` and
``C = Σ x yᵀ``. Only G (inputs²) and C (inputs × outputs) are kept, however many tokens stream
by, so memory is one layer's statistics; G is symmetric, so only its upper triangle is multiplied
out, in row blocks (``gram_row_blocks``). Pulling towards the layer's current weights ``W₀``
(rather than towards zero) means directions the calibration data never excites keep their
original weights instead of collapsing; λ is relative to the mean of G's diagonal, so one
``damping`` value suits every layer and model. A bias, where the layer has one, is fitted as
one more input that is always 1.
"""

from __future__ import annotations

import functools
import itertools

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
        x, y = product_operands(x), product_operands(y)
        for rows in gram_row_blocks(x.shape[1]):  # G's upper triangle only: G is symmetric
            self.gram[rows, rows.start :] += wide_mm(x[:, rows].t(), x[:, rows.start :]).to(self.gram.dtype)
        self.cross += wide_mm(x.t(), y).to(self.cross.dtype)
        wide = torch.promote_types(y.dtype, torch.float32)
        self.target_energy += y.to(wide).pow(2).sum().to(self.target_energy.dtype)
        self.tokens += x.shape[0]

    def symmetric_gram(self) -> torch.Tensor:
        """G in full, from the upper triangle ``add`` accumulates."""
        return symmetric_from_upper(self.gram)

    def _filled(self) -> torch.Tensor:
        """G in full, in its own storage, exactly symmetric: below the diagonal, each row block takes the
        transpose of what ``add`` accumulated above it (the square on the diagonal is mirrored from its own
        upper triangle, through a temporary of its size only). So a solve needs no symmetric copy of G
        (0.63 GiB in fp64 at 9216 inputs) and factorises the same matrix it did from one. Rewritten before
        every solve: ``add`` and ``_quadratic`` touch the upper blocks only, so nothing reads it stale."""
        for rows in gram_row_blocks(self.gram.shape[0]):
            self.gram[rows, : rows.start] = self.gram[: rows.start, rows].t()
            square = self.gram[rows, rows]
            square.copy_(symmetric_from_upper(square))
        return self.gram

    def _quadratic(self, w: torch.Tensor) -> torch.Tensor:
        """Σ over rows of w G wᵀ, from the blocks ``add`` accumulates (each row block from its diagonal on):
        every block right of the diagonal stands for its mirror image too, so it counts twice."""
        total = torch.zeros((), dtype=self.gram.dtype, device=self.gram.device)
        for rows in gram_row_blocks(self.gram.shape[0]):
            part = w[:, rows] @ self.gram[rows, rows.start :]
            width = rows.stop - rows.start
            total += (part[:, :width] * w[:, rows]).sum() + 2 * (part[:, width:] * w[:, rows.stop :]).sum()
        return total

    def _stacked(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        stacked = weight.detach().to(self.gram)
        if self.bias:
            column = bias.detach().to(self.gram) if bias is not None else stacked.new_zeros(stacked.shape[0])
            stacked = torch.cat([stacked, column[:, None]], dim=1)
        return stacked

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """Σ||W x − y||² / Σ||y||² over the tokens seen, from the statistics alone (no second pass)."""
        w = self._stacked(weight, bias)
        error = self._quadratic(w) - 2 * (w * self.cross.t()).sum() + self.target_energy
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
        solution, lam = _ridge(self._filled(), self.cross, prior, damping, self.in_features, full=True)
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
    ``scale_inputs`` entries (the real inputs, not a bias column). Only G's upper triangle is read.

    A Gram matrix that is singular even after damping (inputs that are always zero and ``damping``
    0) gets its damping raised tenfold until the Cholesky factorisation succeeds.
    """
    return _ridge(gram, cross, prior, damping, scale_inputs)[0]


def _ridge(
    gram, cross, prior, damping: float, scale_inputs: int | None, full: bool = False
) -> tuple[torch.Tensor, float]:
    """``ridge_solve``'s solution and the λ it used. With ``full`` G is symmetric as given, in the wide
    dtype, and is damped in place, its diagonal put back bit for bit afterwards; otherwise only its upper
    triangle is read, into a symmetric copy."""
    wide = _accumulator_dtype(gram.device)
    cross, prior = cross.to(wide), prior.to(wide)
    matrix = gram if full else symmetric_from_upper(gram.to(wide))
    held = matrix.diagonal().clone()
    inputs = held[: scale_inputs or held.shape[0]]
    scale = float(inputs.mean()) if inputs.numel() else 1.0
    scale = scale if scale > 0 else 1.0
    strength = damping
    try:
        for _ in range(8):
            lam = strength * scale
            matrix.diagonal().copy_(held + lam)  # the damping on the diagonal: no n × n identity
            factor, info = torch.linalg.cholesky_ex(matrix)
            if int(info) == 0:
                return torch.cholesky_solve(cross + lam * prior, factor), lam
            strength = max(strength * 10, 1e-6)
    finally:
        matrix.diagonal().copy_(held)
    raise MinitronError(
        "The calibration activations of a layer are degenerate (their Gram matrix stays singular)",
        fix="use more (and more varied) calibration text, or raise the reconstruction damping",
    )


def gram_row_blocks(size: int, columns: int = 1024) -> list[slice]:
    """Row blocks of an n × n Gram matrix, each of which is computed from its diagonal onwards. Eight
    blocks of a 9216-wide MLP input (Llama-3.1-8B pruned to 9216 neurons) take 56% of the full
    product's multiply-adds; each is still one large matrix product. Inputs narrower than two
    ``columns`` are one block (the saving would not pay for smaller products)."""
    count = max(1, min(8, size // columns))
    bounds = [round(i * size / count) for i in range(count + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def symmetric_from_upper(upper: torch.Tensor) -> torch.Tensor:
    """A new symmetric matrix from the upper triangle (diagonal included) of ``upper``; no temporary
    beyond a boolean mask (an n × n fp64 temporary would be 0.7 GB at 9216 inputs)."""
    mask = torch.ones(upper.shape, dtype=torch.bool, device=upper.device).triu_()
    return torch.where(mask, upper, upper.t())


def product_operands(t: torch.Tensor) -> torch.Tensor:
    """Activations as the Gram and cross products take them: 16-bit as they are where ``wide_mm`` runs
    them on the tensor cores, otherwise widened once to fp32 (or kept, if wider)."""
    return t if _on_tensor_cores(t, t) else t.to(torch.promote_types(t.dtype, torch.float32))


def wide_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with an fp32 (or wider) result, the heavy part of a re-fit (as many multiply-adds as the
    layer's own forward pass, and more for a wide MLP).

    On a GPU, bf16/fp16 operands go through the tensor cores with fp32 accumulation and an fp32 result:
    the same sums as widening them first (16-bit values are exact in fp32), where an fp32 matrix
    product without TF32 runs on the ordinary cores about fifteen times slower. Elsewhere the operands
    are multiplied in the wider of their dtype and fp32.
    """
    if _on_tensor_cores(a, b):
        return torch.mm(a, b, out_dtype=torch.float32)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype) @ b.to(dtype)


def _on_tensor_cores(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a @ b`` can run in 16 bits with an fp32 result (CUDA, both bf16 or both fp16)."""
    sixteen_bit = a.dtype in (torch.bfloat16, torch.float16) and b.dtype == a.dtype
    return sixteen_bit and a.device.type == "cuda" and has_wide_output_mm()


@functools.cache
def has_wide_output_mm() -> bool:
    """Whether this torch has ``torch.mm(..., out_dtype=torch.float32)`` for 16-bit inputs (2.8 and later);
    asked once, of shapes on the meta device, which cost nothing."""
    probe = torch.empty(2, 2, dtype=torch.bfloat16, device="meta")
    try:
        return torch.mm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False
