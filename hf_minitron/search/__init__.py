"""Architecture search over pruned shapes near a parameter budget."""

from .candidates import Candidate, count_params, enumerate_candidates
from .run import SearchSettings, architecture_search, read_results, search_table

__all__ = [
    "Candidate",
    "SearchSettings",
    "architecture_search",
    "count_params",
    "enumerate_candidates",
    "read_results",
    "search_table",
]
