"""Importance estimation: which heads, neurons, channels and layers matter."""

from .aggregation import AGGREGATIONS
from .estimate import estimate_importance
from .magnitude import magnitude_importance
from .scores import ImportanceScores

__all__ = ["AGGREGATIONS", "ImportanceScores", "estimate_importance", "magnitude_importance"]
