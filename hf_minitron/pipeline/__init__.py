"""The whole Minitron chain as resumable stages: correct → importance → prune → (generate data) → distil →
(align) → evaluate → (quantize) → model cards → (publish)."""

from .recipe import DEMO_RECIPE, Recipe, load_recipe, parse_recipe
from .runner import STAGE_NAMES, run_recipe

__all__ = ["DEMO_RECIPE", "STAGE_NAMES", "Recipe", "load_recipe", "parse_recipe", "run_recipe"]
