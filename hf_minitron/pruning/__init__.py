"""Structured pruning: width (hidden, heads, MLP) and depth (layers)."""

from .config import LAYER_SELECTIONS, PruningConfig
from .export import save_pruned_model
from .plan import check_pruning_config
from .prune import prune_model

__all__ = ["LAYER_SELECTIONS", "PruningConfig", "check_pruning_config", "prune_model", "save_pruned_model"]
