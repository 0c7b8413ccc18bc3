"""ReconstructionConfig: how a pruned student is re-fitted to its teacher without training."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import MinitronError
from ..settings import settings_from_dict

LAYER_CHOICES = ("all", "changed")
SPAN_METHODS = ("refit", "linear_map")


@dataclass
class ReconstructionConfig:
    """Settings of ``reconstruct_model``. Every fit is ridge least squares on calibration activations.

    damping: ridge strength λ relative to the mean diagonal of each Gram matrix; the fit is pulled
        towards the pruned weights, so a larger value changes less (0 is plain least squares).
    attention_output: re-fit each layer's attention output projection (o_proj) on the heads it keeps,
        so that the residual stream after attention follows the teacher's.
    mlp_output: re-fit each layer's MLP output projection (down_proj) on the neurons it keeps, so that
        the layer's output follows the teacher's; in the layer before a dropped span of layers, the
        target is the teacher's residual stream *after* that span.
    span_method: how a dropped span of layers is stood in for. ``refit``: the layer before the span
        re-fits its down_proj to land where the span would have (the general least-squares fit);
        ``linear_map``: ReplaceMe's map, one hidden × hidden matrix from that layer's MLP output to the
        span's contribution, folded into the down_proj (fewer free parameters: ``hidden²`` instead of
        ``hidden × MLP``).
    layers: ``all`` re-fits every student layer on inputs that come through the already reconstructed
        layers below (sequential: each layer also corrects the drift of those below); ``changed`` only
        the layers whose width was pruned and the layers before a dropped span.
    final_norm: when hidden channels were removed, re-fit the final norm's per-channel scale so the
        student's normalised final state follows the teacher's (the LM head is untouched, so tied
        embeddings stay tied).
    num_samples: calibration samples to fit on (the first ones of the calibration set); None: all of them.
        Each fit needs many more tokens than its layer has inputs (MLP width, heads × head_dim).
    batch_size: calibration samples per forward.
    """

    damping: float = 0.1
    attention_output: bool = True
    mlp_output: bool = True
    span_method: str = "refit"
    layers: str = "all"
    final_norm: bool = True
    num_samples: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or self.damping < 0:
            problems.append(f"damping must be a number ≥ 0, got {self.damping!r}")
        if self.span_method not in SPAN_METHODS:
            problems.append(f"span_method '{self.span_method}' is not one of {', '.join(SPAN_METHODS)}")
        if self.layers not in LAYER_CHOICES:
            problems.append(f"layers '{self.layers}' is not one of {', '.join(LAYER_CHOICES)}")
        for name in ("batch_size", "num_samples"):
            value = getattr(self, name)
            if value is None and name == "num_samples":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("attention_output", "mlp_output", "final_norm"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if problems:
            raise MinitronError("Invalid reconstruction settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ReconstructionConfig:
        return settings_from_dict(cls, values, "reconstruction")
