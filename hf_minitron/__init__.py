"""hf_minitron: the Minitron recipe (prune → re-fit → distil) for Hugging Face causal language models."""

from . import quiet  # noqa: F401  first: turns down other packages' noise before transformers is imported
from .data import CalibrationSet, build_calibration_set
from .errors import MinitronError
from .families import FAMILIES, family_for
from .importance import ImportanceScores, estimate_importance
from .lazy import lazy_attributes
from .loading import builtin_teacher, load_model, load_model_and_tokenizer, load_tokenizer
from .pruning import PruningConfig, prune_model, save_pruned_model
from .reconstruction import ReconstructionConfig, reconstruct_model, reconstruct_models
from .shapes import model_shape

__version__ = "0.2.0"

# Distillation, evaluation and search pull in TRL and friends: load them on first use only.
_LAZY = {
    "DistillationConfig": "hf_minitron.distillation",
    "DistillationTrainer": "hf_minitron.distillation",
    "evaluate_model": "hf_minitron.evaluation",
    "perplexity": "hf_minitron.evaluation",
    "architecture_search": "hf_minitron.search",
    "enumerate_candidates": "hf_minitron.search",
    "magnitude_importance": "hf_minitron.importance",
    "generate_distillation_data": "hf_minitron.distillation_data",
    "GenerationSettings": "hf_minitron.distillation_data",
    "cache_teacher_logits": "hf_minitron.distillation_data",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "FAMILIES",
    "CalibrationSet",
    "ImportanceScores",
    "MinitronError",
    "PruningConfig",
    "ReconstructionConfig",
    "build_calibration_set",
    "builtin_teacher",
    "estimate_importance",
    "family_for",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "model_shape",
    "prune_model",
    "reconstruct_model",
    "reconstruct_models",
    "save_pruned_model",
    *_LAZY,
]
