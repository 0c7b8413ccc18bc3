"""Reconstruction: re-fitting a pruned student to its teacher from calibration activations, without training."""

from .config import ReconstructionConfig
from .fits import fold_linear_map
from .least_squares import LeastSquares, ridge_solve
from .sequential import reconstruct_model, reconstruct_models

__all__ = [
    "LeastSquares",
    "ReconstructionConfig",
    "fold_linear_map",
    "reconstruct_model",
    "reconstruct_models",
    "ridge_solve",
]
