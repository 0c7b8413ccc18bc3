"""How many calibration samples the least-squares re-fit needs: quality kept against the re-fit's cost.

The importance pass runs on the first ``--importance-samples`` samples of ``--seq-len`` tokens of the
recovery benchmark's documentation + dolly mixture (64 × 256, as ``recovery.py``); each student is then
re-fitted on the first N samples of the same mixture for each N of ``--fit-samples``
(``ReconstructionConfig.num_samples``; fewer than the importance pass saw, or more), and held-out
perplexity (Python documentation and Tiny Shakespeare, neither calibrated on) is measured before any
training, beside the student pruned without a re-fit. Every re-fit is timed against the importance
pass in the same process, so the table reads as quality per unit of calibration compute: per token the
re-fit costs about twice the importance pass (``reconstruction_cost.py``).

    .venv/bin/python bench/reconstruction_samples.py [--shapes width25,depth23] [--fit-samples 16,64,256]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron import (
    ReconstructionConfig,
    build_calibration_set,
    estimate_importance,
    load_model_and_tokenizer,
    prune_model,
    reconstruct_models,
)
from hf_minitron.pruning.plan import block_lm_loss_sizes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_text import mixed_texts
from recovery import SHAPES, held_out_perplexity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="width50,width25,depth23", help=f"comma-separated of {tuple(SHAPES)}")
    parser.add_argument("--importance-samples", type=int, default=64, help="calibration samples it ranks on")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--fit-samples", default="8,16,32,64,128,256", help="comma-separated sample counts")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--out", default="bench/out/reconstruction_samples.json")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"no shape {', '.join(sorted(unknown))}; the shapes are {', '.join(SHAPES)}")
    torch.set_grad_enabled(False)

    teacher, tokenizer = load_model_and_tokenizer("builtin:smollm2-135m", dtype=torch.float32)
    teacher.eval()
    fit_samples = [int(n) for n in args.fit_samples.split(",")]
    calibration = build_calibration_set(
        mixed_texts(), tokenizer, num_samples=max([*fit_samples, args.importance_samples]), seq_len=args.seq_len
    )
    ranking = calibration.first(args.importance_samples)
    sizes = block_lm_loss_sizes(teacher.config.num_hidden_layers, [SHAPES[name] for name in shapes])
    # The layer-block LM-loss sweep only ranks depth cuts: the importance pass is timed again without it.
    scores = estimate_importance(
        teacher, calibration_data=ranking, block_lm_loss_sizes=sizes, block_search_samples=8, progress=False
    )
    start = time.perf_counter()
    estimate_importance(teacher, calibration_data=ranking, progress=False)
    importance_seconds = time.perf_counter() - start
    teacher_ppl = held_out_perplexity(teacher, tokenizer, args.eval_tokens)
    print(
        f"teacher: {teacher_ppl}; importance pass on {ranking.num_tokens} tokens: {importance_seconds:.1f} s"
        f" (torch threads {torch.get_num_threads()})",
        flush=True,
    )
    results = {"settings": vars(args), "teacher": teacher_ppl, "importance_seconds": importance_seconds}
    rows = []
    for shape in shapes:
        pruned = prune_model(copy.deepcopy(teacher), SHAPES[shape], scores)
        rows.append(
            {"shape": shape, "samples": 0, "seconds": 0.0, **held_out_perplexity(pruned, tokenizer, args.eval_tokens)}
        )
        print(rows[-1], flush=True)
        for samples in fit_samples:
            student = copy.deepcopy(pruned)
            start = time.perf_counter()
            settings = ReconstructionConfig(num_samples=samples)
            reconstruct_models(teacher, [student], calibration, config=settings, progress=False)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "shape": shape,
                    "samples": samples,
                    "seconds": seconds,
                    **held_out_perplexity(student, tokenizer, args.eval_tokens),
                }
            )
            print(rows[-1], flush=True)
    results["rows"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    print("\n| shape | fitted on | re-fit / importance | ppl docs | ppl Shakespeare |\n|---|---|---|---|---|")
    for row in rows:
        fitted = "no re-fit" if not row["samples"] else f"{row['samples']} × {args.seq_len}"
        cost = "—" if not row["samples"] else f"{row['seconds'] / importance_seconds:.2f}×"
        print(f"| {row['shape']} | {fitted} | {cost} | {row['docs']:.2f} | {row['shakespeare']:.2f} |")


if __name__ == "__main__":
    main()
