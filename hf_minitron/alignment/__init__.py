"""Alignment: supervised fine-tuning that turns a distilled Base model into an Instruct variant."""

from .sft import AlignmentConfig, align_model, to_prompt_completion

__all__ = ["AlignmentConfig", "align_model", "to_prompt_completion"]
