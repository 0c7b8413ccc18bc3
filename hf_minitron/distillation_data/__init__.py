"""Distillation data: teacher-generated datasets (SDG) and cached top-k teacher logits."""

from .generate import GenerationResult, GenerationSettings, generate_distillation_data
from .logit_cache import TeacherLogitCache, cache_teacher_logits
from .prompts import BUILTIN_PROMPTS, builtin_seed_prompts, load_prompts

__all__ = [
    "BUILTIN_PROMPTS",
    "GenerationResult",
    "GenerationSettings",
    "TeacherLogitCache",
    "builtin_seed_prompts",
    "cache_teacher_logits",
    "generate_distillation_data",
    "load_prompts",
]
