"""Reducing per-token activation magnitudes to one score per head, neuron or channel.

Each hook sees activations ``[batch, seq, N]``. They become a per-token magnitude
(|x| for neurons and channels, the L2 norm over head_dim for heads), are reduced over
the sequence (padding excluded) to ``[batch, N]``, and then over all calibration
samples to ``[N]``. Both reductions are one of:

- ``mean``: mean of the magnitudes
- ``l2``:   L2 norm, sqrt(sum of squares)
- ``var``:  variance of the magnitudes

Minitron's ablation (15B → 8B, no retraining) found (batch=l2, seq=mean) best, the default.
"""

from __future__ import annotations

import torch

from ..errors import MinitronError

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


class SampleAccumulator:
    """Streams per-sample scores [batch, N] and reduces them over every sample seen."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def add(self, per_sample: torch.Tensor) -> None:
        # fp64 sums where the device has it: variance from sums of squares needs the headroom.
        dtype = torch.float32 if per_sample.device.type == "mps" else torch.float64
        per_sample = per_sample.to(dtype)
        total, squares = per_sample.sum(0), (per_sample * per_sample).sum(0)
        if self.total is None:
            self.total, self.squares = total, squares
        else:
            self.total += total
            self.squares += squares
        self.count += per_sample.shape[0]

    def result(self, how: str) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no activations were recorded")
        if how == "mean":
            out = self.total / self.count
        elif how == "l2":
            out = self.squares.sqrt()
        else:
            mean = self.total / self.count
            out = (self.squares / self.count - mean * mean).clamp_min(0)
        return out.float().cpu()
