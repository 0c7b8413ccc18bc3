"""Reducing per-token activation magnitudes to one score per head, neuron or channel.

Each hook sees activations ``[batch, seq, N]``. They become a per-token magnitude
(|x| for neurons and channels, the L2 norm over head_dim for heads), are reduced over
the sequence (padding excluded) to ``[batch, N]``, and then over all calibration
samples to ``[N]``. Both reductions are one of:

- ``mean``: mean of the magnitudes
- ``l2``:   L2 norm, sqrt(sum of squares)
- ``var``:  variance of the magnitudes

Minitron's ablation (15B → 8B, no retraining) found (batch=l2, seq=mean) best, the default.

Two implementations of the same reductions. Eager (CPU, and wherever compiling fails): per-token
magnitudes in fp32, a batched matmul with the mask over the sequence. Fused (CUDA): one compiled
kernel per hook reads the activation once in its own dtype, sums in fp32 and returns only the
batch's per-unit sums [2, N]; nothing waits for the device. Over samples, sums run in fp64
(variance from sums of squares needs the headroom) on the device, except on MPS (no fp64).
"""

from __future__ import annotations

import logging

import torch

from ..errors import MinitronError

logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "l2", "var")


def check_aggregation(name: str, axis: str) -> str:
    if name not in AGGREGATIONS:
        raise MinitronError(
            f"Unknown {axis} aggregation '{name}'",
            f"the choices are {', '.join(AGGREGATIONS)}",
            "pick one of those (default: batch=l2, seq=mean)",
        )
    return name


def reduce_sequence(values: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[batch, seq, N] magnitudes, [batch, seq] 0/1 float mask → [batch, N] in fp32."""
    values = values.float()
    weights = mask.to(values.dtype).unsqueeze(1)  # [b, 1, s]: a batched matmul skips padded tokens
    counts = mask.sum(dim=1, dtype=values.dtype).clamp_min(1).unsqueeze(1)
    if how == "mean":
        return torch.bmm(weights, values).squeeze(1) / counts
    squares = torch.bmm(weights, values * values).squeeze(1)
    if how == "l2":
        return squares.sqrt()
    mean = torch.bmm(weights, values).squeeze(1) / counts
    return (squares / counts - mean * mean).clamp_min(0)


def masked_square_sums(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq, N] activations, [batch, seq] 0/1 mask → [N]: Σ x² over the unmasked tokens, in the
    accumulator dtype (the numerator of each unit's mean squared activation)."""
    x = x.float()
    weights = mask.to(x.dtype).unsqueeze(1)  # [b, 1, s]
    return torch.bmm(weights, x * x).sum((0, 1)).to(accumulator_dtype(x.device))


def token_magnitudes(x: torch.Tensor, head_dim: int | None = None) -> torch.Tensor:
    """|x| per unit, or with ``head_dim`` the L2 norm of each head's slice: [b, s, N] fp32."""
    x = x.float()
    if head_dim is None:
        return x.abs()
    return x.unflatten(-1, (-1, head_dim)).norm(dim=-1)


def _sample_sums(per_sample: torch.Tensor) -> torch.Tensor:
    """[batch, N] → [2, N]: the sum and the sum of squares over the batch, in fp32."""
    return torch.stack([per_sample.sum(0), (per_sample * per_sample).sum(0)])


def _masked_sample_sums(v, mask, how: str):
    """What ``reduce_sequence`` computes, summed over the batch, written for fusion."""
    m = mask.unsqueeze(-1)
    counts = mask.sum(1, keepdim=True).clamp_min(1)
    if how == "mean":
        per_sample = (v * m).sum(1) / counts
    else:
        squares = (v * v * m).sum(1)
        if how == "l2":
            per_sample = squares.sqrt()
        else:
            mean = (v * m).sum(1) / counts
            per_sample = (squares / counts - mean * mean).clamp_min(0)
    return _sample_sums(per_sample)


def _fused_unit_sums(x, mask, how: str):
    return _masked_sample_sums(token_magnitudes(x), mask, how)


def _fused_head_sums(x, mask, how: str, head_dim: int):
    return _masked_sample_sums(token_magnitudes(x, head_dim), mask, how)


def _fused_cosine_sum(before, after, mask):
    """Σ over unmasked tokens of cos(before, after), fp32."""
    a, b = before.float(), after.float()
    dot, na, nb = (a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1)
    cos = dot / (na * nb).sqrt().clamp_min(1e-8)  # cosine_similarity's eps on the product of the norms
    return (cos * mask).sum()


class FusedReductions:
    """The hooks' reductions as compiled kernels, or None from each call once compiling has failed here."""

    def __init__(self):
        # One code object per kind of hook, every dimension marked dynamic: one graph per kind serves
        # all widths, batch sizes and lengths (a batch of one sample compiles once more).
        self._units = torch.compile(_fused_unit_sums)
        self._heads = torch.compile(_fused_head_sums)
        self._cosine = torch.compile(_fused_cosine_sum)
        self.failure: str | None = None

    def _run(self, fn, *args):
        if self.failure is not None:
            return None
        try:
            for tensor in args:
                if isinstance(tensor, torch.Tensor):
                    for dim in range(tensor.dim()):
                        torch._dynamo.maybe_mark_dynamic(tensor, dim)
            return fn(*args)
        except Exception as error:  # compiler errors come in many types; the eager path is always there
            self.failure = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            logger.warning("Fused importance reductions unavailable, using the eager ones: %s", self.failure)
            return None

    def magnitude_sums(self, x, mask, how: str, head_dim: int | None = None):
        if head_dim is None:
            return self._run(self._units, x, mask, how)
        return self._run(self._heads, x, mask, how, head_dim)

    def cosine_sum(self, before, after, mask):
        return self._run(self._cosine, before, after, mask)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class SampleAccumulator:
    """Streams per-sample scores [batch, N] and reduces them over every sample seen."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # [2, N]: Σ score, Σ score², on the activations' device
        self.count = 0

    def add(self, per_sample: torch.Tensor) -> None:
        self.add_sums(_sample_sums(per_sample.to(accumulator_dtype(per_sample.device))), per_sample.shape[0])

    def add_sums(self, sums: torch.Tensor, count: int) -> None:
        """Add a batch's [2, N] sums (from ``FusedReductions.magnitude_sums``) of ``count`` samples."""
        if self.sums is None:
            self.sums = torch.zeros_like(sums, dtype=accumulator_dtype(sums.device))
        self.sums += sums
        self.count += count

    def result(self, how: str) -> torch.Tensor:
        if self.sums is None:
            raise RuntimeError("no activations were recorded")
        total, squares = self.sums
        if how == "mean":
            out = total / self.count
        elif how == "l2":
            out = squares.sqrt()
        else:
            mean = total / self.count
            out = (squares / self.count - mean * mean).clamp_min(0)
        return out.float().cpu()
