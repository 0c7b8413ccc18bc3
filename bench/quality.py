"""Quality after a fixed distillation budget: activation-pruned students vs the paper's two baselines.

Students (about half of SmolLM2-135M's non-embedding parameters), each distilled from the teacher
with the same steps, batch and data:
- width, pruned by activation importance (hidden 432, MLP 768)
- depth, pruned by activation importance (15 layers: the contiguous block with the lowest LM loss)
- width shape pruned by weight magnitude (baseline)
- width shape from random initialisation (baseline)
Evaluated on held-out text nobody trained on (perplexity) and the first rows of local ARC-Easy,
PIQA and Winogrande. Acceptance: the activation-pruned width student beats both baselines on
perplexity and on the mean task accuracy.

    .venv/bin/python bench/quality.py [--steps 60] [--rows 150]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from hf_minitron import PruningConfig, build_calibration_set, builtin_teacher, estimate_importance, prune_model
from hf_minitron.data import iter_texts
from hf_minitron.distillation import DistillationTrainer
from hf_minitron.evaluation import evaluate_model, results_table
from hf_minitron.importance import magnitude_importance
from hf_minitron.importance.depth import measure_block_lm_loss

from common import short_distillation_config

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
WIDTH = PruningConfig(hidden_size=432, intermediate_size=768)
# The magnitude baseline ranks neurons by weight norms alone: no activations to weigh them by.
BY_WEIGHTS = PruningConfig(hidden_size=432, intermediate_size=768, neuron_selection="activation")
DEPTH = PruningConfig(num_hidden_layers=15, layer_selection="lm_loss")


def random_init_like(student):
    config = copy.deepcopy(student.config)
    del config.minitron_pruning
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=150, help="rows of each task")
    parser.add_argument("--output", default="bench/out/quality.json")
    args = parser.parse_args()
    start = time.time()
    teacher, tokenizer = builtin_teacher()
    scores = estimate_importance(teacher, tokenizer, "builtin:python-docs", num_samples=32, seq_len=256, progress=False)
    # Rank the 16 possible 15-layer blocks by LM loss on a few samples (one pass per block).
    subset = build_calibration_set("builtin:python-docs", tokenizer, num_samples=8, seq_len=256)
    scores.base_lm_loss, scores.block_lm_loss = measure_block_lm_loss(teacher, subset, [15], progress=False)
    width = prune_model(copy.deepcopy(teacher), WIDTH, scores)
    students = {
        "width (activation)": width,
        "depth (activation)": prune_model(copy.deepcopy(teacher), DEPTH, scores),
        "width (magnitude)": prune_model(copy.deepcopy(teacher), BY_WEIGHTS, magnitude_importance(teacher)),
        "width (random init)": random_init_like(width),
    }
    train = datasets.Dataset.from_dict({"text": list(iter_texts("builtin:python-docs"))})
    tasks = {name: str(EVAL / f"{name}.jsonl") for name in ("arc_easy", "piqa", "winogrande")}
    evaluate = dict(
        tasks=tasks,
        perplexity_data="builtin:python-docs-heldout",
        limit=args.rows,
        seq_len=256,
        max_tokens=4096,
        progress=False,
    )
    results = {"teacher": evaluate_model(teacher, tokenizer, **evaluate)}
    tokens = args.steps * args.batch * args.max_length
    for name, student in students.items():
        before = evaluate_model(
            student,
            tokenizer,
            perplexity_data="builtin:python-docs-heldout",
            seq_len=256,
            max_tokens=4096,
            progress=False,
        )["perplexity"]["perplexity"]
        config = short_distillation_config(f"/tmp/quality-{name.split()[0]}", args.steps, args.batch, args.max_length)
        DistillationTrainer(
            model=student.requires_grad_(True),
            teacher_model=teacher,
            args=config,
            train_dataset=train,
            processing_class=tokenizer,
        ).train()
        results[name] = evaluate_model(student.eval(), tokenizer, **evaluate)
        results[name]["perplexity_before_distillation"] = before
        print(f"{name}: perplexity {before:.1f} → {results[name]['perplexity']['perplexity']:.2f}", flush=True)
    print(
        f"\nSmolLM2-135M teacher and students after {args.steps} steps × {args.batch} × {args.max_length} "
        f"= {tokens} tokens of distillation each; first {args.rows} rows per task; "
        f"{time.time() - start:.0f} s in all"
    )
    print(results_table(results))
    ours = results["width (activation)"]
    for baseline in ("width (magnitude)", "width (random init)"):
        other = results[baseline]
        better_ppl = ours["perplexity"]["perplexity"] < other["perplexity"]["perplexity"]
        better_tasks = ours["task_mean_acc"] > other["task_mean_acc"]
        print(
            f"activation width vs {baseline}: lower perplexity {better_ppl}, higher mean task accuracy {better_tasks}"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
