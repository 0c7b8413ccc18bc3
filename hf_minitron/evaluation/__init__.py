"""Evaluation: loss and perplexity (more tasks build on these)."""

from .perplexity import PerplexityResult, mean_lm_loss, perplexity, token_nll

__all__ = ["PerplexityResult", "mean_lm_loss", "perplexity", "token_nll"]
