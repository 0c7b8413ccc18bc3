"""Writing a pruned model folder that loads with plain transformers, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..importance.scores import ImportanceScores
from ..model_folder import save_model_folder
from ..outputs import atomic_output_dir
from .config import PruningConfig

IMPORTANCE_SUBFOLDER = "importance"
RECONSTRUCTION_FILE = "reconstruction.json"  # per-layer errors of the least-squares re-fit, when one was made


def save_pruned_model(
    model,
    output_dir: str | os.PathLike,
    *,
    tokenizer=None,
    pruning_config: PruningConfig | None = None,
    scores: ImportanceScores | None = None,
    reconstruction: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Save weights (safetensors), config, the pruning record (``minitron_pruning.json``), tokenizer,
    pruning config, the importance scores used and the reconstruction report (``reconstruct_model``'s
    return value).

    The folder appears only when everything is written; on any failure nothing is left.
    """
    with atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        save_model_folder(model, staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if pruning_config is not None:
            pruning_config.save_pretrained(staging)
        if scores is not None:
            scores.save(staging / IMPORTANCE_SUBFOLDER)
        if reconstruction is not None:
            saved = {key: value for key, value in reconstruction.items() if key != "seconds"}  # reruns match
            (staging / RECONSTRUCTION_FILE).write_text(json.dumps(saved, indent=2) + "\n")
    return Path(output_dir)
