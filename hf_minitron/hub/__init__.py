"""The Hub: model cards from a run's facts, and publishing the packaged variants."""

from .card import card_data, render_model_card
from .publish import packaged_models, publish, variant_repo_id

__all__ = ["card_data", "packaged_models", "publish", "render_model_card", "variant_repo_id"]
